//! Guest duties of `/init`: the clock from the host's time, the RNG reseeded from host
//! entropy, and the sandbox's hostname.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sets the system clock if it is more than 50 ms off `t`.
pub fn set_clock(t: SystemTime) {
    let now = SystemTime::now();
    let off = now.duration_since(t).or_else(|_| t.duration_since(now)).unwrap_or_default();
    if off < Duration::from_millis(50) {
        return;
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = nix::sys::time::TimeSpec::new(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), i64::from(d.subsec_nanos()));
    match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        Ok(()) => tracing::info!(
            off_ms = u64::try_from(off.as_millis()).unwrap_or(u64::MAX),
            "guest clock set from host time"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot set the clock"),
    }
}

/// Mixes host-supplied bytes into the kernel's entropy pool, credited, and forces the CRNG to
/// reseed: a guest restored from a snapshot would otherwise share the template's random state.
pub fn reseed(bytes: &[u8]) {
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 512],
    }
    // RNDADDENTROPY = _IOW('R', 0x03, int[2]); RNDRESEEDCRNG = _IO('R', 0x07).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let n = bytes.len().min(512);
    // n is at most 512, so both fit a c_int.
    let n_int = libc::c_int::try_from(n).unwrap_or(512);
    let mut info = RandPoolInfo { entropy_count: n_int * 8, buf_size: n_int, buf: [0; 512] };
    info.buf[..n].copy_from_slice(&bytes[..n]);
    let Ok(random) = std::fs::OpenOptions::new().write(true).open("/dev/random") else {
        tracing::warn!("cannot open /dev/random to reseed");
        return;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: both ioctls take the descriptor of /dev/random we just opened; RNDADDENTROPY reads
    // a `rand_pool_info` header followed by `buf_size` bytes, which `info` holds in full.
    let ok = unsafe {
        libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, &info) == 0
            && libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) == 0
    };
    if !ok {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reseeding the RNG");
    }
}

/// Sets the hostname, then points `127.0.1.1` at it in `/etc/hosts` (so `sudo` resolves it)
/// off the request's path: `/init` is on every create's critical path, a disk write need not be.
pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        tracing::warn!(error = %e, "setting the hostname");
        return;
    }
    let name = name.to_string();
    tokio::task::spawn_blocking(move || update_hosts(&name));
}

fn update_hosts(name: &str) {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut lines: Vec<String> = hosts.lines().filter(|l| !l.starts_with("127.0.1.1")).map(str::to_string).collect();
    lines.push(format!("127.0.1.1\t{name}"));
    if let Err(e) = std::fs::write("/etc/hosts", lines.join("\n") + "\n") {
        tracing::warn!(error = %e, "updating /etc/hosts");
    }
}
