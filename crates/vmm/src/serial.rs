//! The guest's serial console, kept in a size-capped, rotated log. QEMU serves the console on a
//! Unix socket (`serial.sock`) instead of writing a file itself, so a guest that floods its
//! console cannot grow the host's disk: a pump thread copies what QEMU sends into `serial.log`
//! and, when that reaches the cap, moves it to `serial.log.1` (replacing the older one) and
//! starts a new one. The log and its one rotated predecessor never hold more than twice the cap.
//! While no pump is connected (a daemon restart) QEMU drops console output; a new pump
//! connects to the same socket when the VM is adopted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default cap of `serial.log` (and of `serial.log.1`): 1 MiB each.
pub const DEFAULT_LOG_CAP: u64 = 1 << 20;
/// How long a pump keeps trying to reach the console socket before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket QEMU serves the console on, beside the log.
pub fn socket_path(log: &Path) -> PathBuf {
    log.with_extension("sock")
}

/// The rotated predecessor of `log`.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// A running pump; dropping it stops the copying (QEMU keeps running).
pub struct Pump {
    stop: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<UnixStream>>>,
}

impl Pump {
    /// Starts copying the console served at `socket` into `log`, capped at `cap` bytes a file.
    pub fn start(socket: PathBuf, log: PathBuf, cap: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stream: Arc<Mutex<Option<UnixStream>>> = Arc::default();
        let (thread_stop, thread_stream) = (Arc::clone(&stop), Arc::clone(&stream));
        let spawned = std::thread::Builder::new().name("serial-pump".into()).stack_size(64 << 10).spawn(move || {
            if let Err(e) = run(&socket, &log, cap, &thread_stop, &thread_stream) {
                tracing::debug!(log = %log.display(), error = %e, "serial console pump ended");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the serial console pump");
        }
        Self { stop, stream }
    }

    /// Stops the pump: its connection closes, so the thread ends.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.stream.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    socket: &Path,
    log: &Path,
    cap: u64,
    stop: &AtomicBool,
    shared: &Mutex<Option<UnixStream>>,
) -> std::io::Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut stream = loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream.try_clone()?);
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut writer = CappedLog::open(log, cap)?;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        writer.write(&buf[..n])?;
    }
}

/// A log file that rotates to `NAME.1` when it would pass its cap.
pub struct CappedLog {
    path: PathBuf,
    file: File,
    len: u64,
    cap: u64,
}

impl CappedLog {
    /// Opens `path` for appending (what an earlier pump wrote stays).
    pub fn open(path: &Path, cap: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), file, len, cap: cap.max(1) })
    }

    /// Appends `data`, rotating first when the file would pass the cap; a single write larger
    /// than the cap keeps only its last `cap` bytes.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let cap = usize::try_from(self.cap).unwrap_or(usize::MAX);
        if data.len() > cap {
            data = &data[data.len() - cap..];
        }
        if self.len + data.len() as u64 > self.cap {
            std::fs::rename(&self.path, rotated_path(&self.path))?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.len = 0;
        }
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }
}

/// The last `max` bytes of the console (from the rotated log too, when the current one is
/// shorter), as text.
pub fn tail(log: &Path, max: u64) -> String {
    let mut out = Vec::new();
    let current = read_tail(log, max);
    let missing = max.saturating_sub(current.len() as u64);
    if missing > 0 {
        out.extend(read_tail(&rotated_path(log), missing));
    }
    out.extend(current);
    String::from_utf8_lossy(&out).into_owned()
}

fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_cap_and_keeps_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut w = CappedLog::open(&log, 100).unwrap();
        for i in 0..50u8 {
            w.write(&[b'a' + (i % 26); 7]).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&log) <= 100 && size(&rotated_path(&log)) <= 100, "both files stay under the cap");
        let t = tail(&log, 150);
        assert_eq!(t.len() as u64, 150.min(size(&log) + size(&rotated_path(&log))));
        assert!(t.ends_with(&String::from_utf8(vec![b'a' + (49 % 26); 7]).unwrap()), "{t}");
        // One write larger than the cap keeps its end.
        w.write(&[b'z'; 500]).unwrap();
        assert_eq!(size(&log), 100);
        // Reopening appends.
        drop(w);
        let mut w = CappedLog::open(&log, 1000).unwrap();
        w.write(b"end").unwrap();
        assert!(tail(&log, 3) == "end");
    }

    #[test]
    fn a_pump_copies_from_the_socket_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, log) = (dir.path().join("serial.sock"), dir.path().join("serial.log"));
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let pump = Pump::start(sock, log.clone(), 64);
        let (mut conn, _) = listener.accept().unwrap();
        for _ in 0..20 {
            conn.write_all(b"0123456789").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tail(&log, 1000).ends_with("0123456789") || tail(&log, 1000).len() < 64 {
            assert!(Instant::now() < deadline, "the pump copied nothing");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::fs::metadata(&log).unwrap().len() <= 64);
        drop(pump);
        // The pump closed its end: the next read sees end-of-file.
        let mut buf = [0u8; 1];
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(conn.read(&mut buf).unwrap(), 0);
    }
}
