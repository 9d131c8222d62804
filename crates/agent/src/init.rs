//! PID 1 in the guest: mounts the kernel filesystems, names the host, configures the network
//! and the resolver from the kernel command line, starts the agent server as a child (restarting it if it dies)
//! and reaps every orphan.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{sethostname, Pid};

/// Where the guest's resolver configuration is written.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Guest settings read from the kernel command line (`ember.ip=`, `ember.gw=`, `ember.dns=`,
/// `ember.hostname=`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// Guest address with prefix, e.g. `169.254.0.21/30`.
    pub ip: Option<String>,
    /// Default gateway, e.g. `169.254.0.22`; also the nameserver unless `dns` names another.
    pub gw: Option<String>,
    /// Nameserver, when it is not the gateway.
    pub dns: Option<String>,
    pub hostname: Option<String>,
}

impl BootParams {
    pub fn parse(cmdline: &str) -> Self {
        let mut p = Self::default();
        for word in cmdline.split_whitespace() {
            if let Some((key, value)) = word.split_once('=') {
                let value = Some(value.to_string());
                match key {
                    "ember.ip" => p.ip = value,
                    "ember.gw" => p.gw = value,
                    "ember.dns" => p.dns = value,
                    "ember.hostname" => p.hostname = value,
                    _ => {}
                }
            }
        }
        p
    }

    /// The guest's own address, without its prefix (`169.254.0.21/30` -> `169.254.0.21`).
    pub fn guest_addr(&self) -> Option<IpAddr> {
        let ip = self.ip.as_deref()?;
        ip.split_once('/').map_or(ip, |(addr, _)| addr).parse().ok()
    }

    /// The nameserver: `ember.dns=` if given, else the gateway (the host answers DNS there).
    /// A value that is not an IP address is ignored.
    pub fn nameserver(&self) -> Option<IpAddr> {
        self.dns.as_deref().or(self.gw.as_deref())?.parse().ok()
    }

    /// `/etc/resolv.conf` for [`Self::nameserver`], if there is one.
    pub fn resolv_conf(&self) -> Option<String> {
        self.nameserver().map(|ns| format!("nameserver {ns}\noptions timeout:2 attempts:2\n"))
    }
}

/// Runs as PID 1; never returns.
pub fn run() -> ! {
    log("ember-init: starting");
    mount_all();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = BootParams::parse(&cmdline);
    let hostname = params.hostname.as_deref().unwrap_or("ember");
    if let Err(e) = sethostname(hostname) {
        log(&format!("ember-init: sethostname: {e}"));
    }
    configure_network(&params);
    if let Some(conf) = params.resolv_conf() {
        if let Err(e) = crate::atomic::write(Path::new(RESOLV_CONF), conf.as_bytes(), 0o644) {
            log(&format!("ember-init: writing {RESOLV_CONF}: {e}"));
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "/usr/local/bin/ember-agent".into());
    let mut agent = spawn_agent(&exe);
    let services = crate::services::load(Path::new(crate::services::SERVICES_FILE)).unwrap_or_else(|e| {
        log(&format!("ember-init: no services started: {e}"));
        Vec::new()
    });
    let mut services = crate::services::Supervisor::start(services);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => {
                let pid = u32::try_from(pid.as_raw()).ok();
                if pid.is_some() && pid == agent {
                    log("ember-init: agent exited; restarting it");
                    std::thread::sleep(Duration::from_millis(200));
                    agent = spawn_agent(&exe);
                } else if let Some(pid) = pid {
                    services.reaped(pid);
                }
            }
            Ok(_) => {}
            // ECHILD: nothing to reap right now (the agent or a service failed to start).
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                if agent.is_none() {
                    agent = spawn_agent(&exe);
                }
                services.retry_failed();
            }
        }
    }
}

fn spawn_agent(exe: &Path) -> Option<u32> {
    match Command::new(exe).args(["serve", "--guest"]).stdin(Stdio::null()).spawn() {
        Ok(child) => Some(child.id()),
        Err(e) => {
            log(&format!("ember-init: cannot start agent: {e}"));
            None
        }
    }
}

fn mount_all() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("gid=5,mode=620,ptmxmode=666")),
        ("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None),
        ("tmpfs", "/run/lock", "tmpfs", nodev, Some("mode=1777,size=5m")),
    ];
    for (src, target, fstype, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(src), target, Some(fstype), flags, data) {
            Ok(()) => {}
            // The kernel mounts devtmpfs itself (CONFIG_DEVTMPFS_MOUNT).
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => log(&format!("ember-init: mount {target}: {e}")),
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

fn configure_network(params: &BootParams) {
    let addr = params.ip.as_deref().and_then(crate::netconf::parse_cidr);
    if params.ip.is_some() && addr.is_none() {
        log("ember-init: ember.ip is not an IPv4 ADDR/PREFIX; eth0 is left down");
    }
    let gateway = params.gw.as_deref().and_then(|g| g.parse().ok());
    if let Err(e) = crate::netconf::configure(addr, gateway) {
        log(&format!("ember-init: network configuration failed: {e}"));
    }
}

pub(crate) fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boot_params() {
        let p =
            BootParams::parse("console=ttyS0 ember.ip=169.254.0.21/30 ember.gw=169.254.0.22 ember.hostname=sb1 quiet");
        assert_eq!(p.ip.as_deref(), Some("169.254.0.21/30"));
        assert_eq!(p.hostname.as_deref(), Some("sb1"));
        assert_eq!(p.gw.as_deref(), Some("169.254.0.22"));
        assert_eq!(BootParams::parse("quiet").ip, None);
        assert_eq!(p.guest_addr(), Some(IpAddr::from([169, 254, 0, 21])));
    }

    #[test]
    fn nameserver_is_the_gateway_unless_named() {
        let p = BootParams::parse("ember.ip=169.254.0.21/30 ember.gw=169.254.0.22");
        assert_eq!(p.resolv_conf().as_deref(), Some("nameserver 169.254.0.22\noptions timeout:2 attempts:2\n"));
        let p = BootParams::parse("ember.gw=169.254.0.22 ember.dns=10.0.0.53");
        assert_eq!(p.resolv_conf().as_deref(), Some("nameserver 10.0.0.53\noptions timeout:2 attempts:2\n"));
        let p = BootParams::parse("ember.dns=fd00::53");
        assert_eq!(p.resolv_conf().as_deref(), Some("nameserver fd00::53\noptions timeout:2 attempts:2\n"));
        // Nothing to name, or nothing that is an address: the file is left alone.
        assert_eq!(BootParams::parse("ember.ip=169.254.0.21/30").resolv_conf(), None);
        assert_eq!(BootParams::parse("ember.gw=evil\nnameserver").resolv_conf(), None);
        assert_eq!(BootParams::parse("ember.gw=169.254.0.22 ember.dns=x").resolv_conf(), None);
        assert_eq!(BootParams::parse("ember.ip=169.254.0.21").guest_addr(), Some(IpAddr::from([169, 254, 0, 21])));
        assert_eq!(BootParams::parse("ember.ip=bogus/30").guest_addr(), None);
    }
}
