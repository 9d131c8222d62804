//! Starting a process: credentials, environment, working directory, pipes or a PTY, a new
//! session, and the tasks that pump its output into its table entry and record its end.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ember_envd_proto::process::{DataEvent, EndEvent, ProcessEvent, PtySize, StartRequest};
use ember_envd_proto::{Code, ConnectError};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;

use super::table::{frame, Entry, ProcessTable, KEEP_FINISHED};
use crate::users::User;

/// `PATH` given to every process, as envd does.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Size of one output read, and so the most output one data event carries.
const READ_CHUNK: usize = 32 * 1024;

/// Where a process's input goes.
pub enum Input {
    None,
    Stdin(Option<ChildStdin>),
    Pty(Arc<PtyMaster>),
}

impl Input {
    /// Writes client input; `pty` says which kind the client sent.
    pub async fn write(&mut self, data: &[u8], pty: bool) -> Result<(), ConnectError> {
        let failed = |e: std::io::Error| ConnectError::new(Code::Internal, format!("write input: {e}"));
        match (self, pty) {
            (Input::Stdin(Some(stdin)), false) => stdin.write_all(data).await.map_err(failed),
            (Input::Pty(master), true) => master.write_all(data).await.map_err(failed),
            (Input::Stdin(None), false) => Err(ConnectError::new(Code::FailedPrecondition, "stdin is closed")),
            (Input::Pty(_), false) => {
                Err(ConnectError::new(Code::FailedPrecondition, "process has a PTY: send pty input"))
            }
            (_, true) => Err(ConnectError::new(Code::FailedPrecondition, "process has no PTY")),
            (Input::None, false) => {
                Err(ConnectError::new(Code::FailedPrecondition, "process was started without stdin"))
            }
        }
    }
}

/// The agent's end of a PTY.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => return Ok(n),
                // EIO: every copy of the other end is closed (the process exited).
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sets the terminal size.
    pub fn resize(&self, size: PtySize) -> Result<(), ConnectError> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(ConnectError::new(Code::Internal, format!("resize PTY: {}", std::io::Error::last_os_error())));
        }
        Ok(())
    }
}

fn winsize(size: PtySize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows.clamp(1, 1000) as u16,
        ws_col: size.cols.clamp(1, 1000) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Everything needed to start one process.
pub struct Launch {
    pub request: StartRequest,
    pub user: User,
    pub sandbox_envs: BTreeMap<String, String>,
    pub default_workdir: Option<PathBuf>,
    /// Kill the process after this long (`connect-timeout-ms` of `Start`).
    pub lifetime: Option<Duration>,
}

/// Starts the process, registers it in `table` and starts its pumps.
pub fn start(table: &Arc<ProcessTable>, launch: Launch) -> Result<Arc<Entry>, ConnectError> {
    let Launch { request, user, sandbox_envs, default_workdir, lifetime } = launch;
    let cfg = &request.process;
    if cfg.cmd.is_empty() {
        return Err(ConnectError::new(Code::InvalidArgument, "process.cmd is empty"));
    }
    if cfg.cmd.contains('\0') || cfg.args.iter().any(|a| a.contains('\0')) {
        return Err(ConnectError::new(Code::InvalidArgument, "command contains a NUL byte"));
    }
    let cwd = resolve_cwd(cfg.cwd.as_deref(), default_workdir.as_deref(), &user.home)?;
    let mut cmd = tokio::process::Command::new(&cfg.cmd);
    cmd.args(&cfg.args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .envs(&sandbox_envs)
        .envs(&cfg.envs)
        .current_dir(&cwd)
        .kill_on_drop(false);

    let pty = match &request.pty {
        Some(p) => Some(open_pty(p.size)?),
        None => None,
    };
    match &pty {
        Some((_, slave)) => {
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| internal("dup PTY", e));
            cmd.stdin(dup(slave)?).stdout(dup(slave)?).stderr(dup(slave)?);
        }
        None => {
            let stdin = if request.stdin == Some(true) { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    prepare_child(&mut cmd, &user, pty.is_some());
    let mut child = cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            _ => Code::Internal,
        };
        ConnectError::new(code, format!("failed to start '{}': {e}", cfg.cmd))
    })?;
    let pid = child.id().unwrap_or_default();
    let (input, master) = match pty {
        Some((master, slave)) => {
            drop(slave);
            // SAFETY: `master` is an open descriptor that the `AsyncFd` takes ownership of, so it
            // stays open and the same for the AsyncFd's whole life.
            let fd = unsafe { AsyncFd::register(master) }.map_err(|e| internal("watch PTY", e))?;
            let master = Arc::new(PtyMaster { fd });
            (Input::Pty(Arc::clone(&master)), Some(master))
        }
        None => match child.stdin.take() {
            Some(stdin) => (Input::Stdin(Some(stdin)), None),
            None => (Input::None, None),
        },
    };
    let entry = Arc::new(Entry::new(pid, request.tag.clone(), request.process.clone(), input));
    table.insert(Arc::clone(&entry));
    crate::forward::note_process_start();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (table, pump_entry) = (Arc::clone(table), Arc::clone(&entry));
    tokio::spawn(async move {
        let entry = pump_entry;
        let wait = async {
            tokio::join!(
                pump(stdout, &entry, DataEvent::Stdout),
                pump(stderr, &entry, DataEvent::Stderr),
                pump_pty(master, &entry),
            );
            child.wait().await
        };
        let status = match lifetime {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(status) => status,
                Err(_) => {
                    signal_group(pid, libc::SIGKILL);
                    child.wait().await
                }
            },
            None => wait.await,
        };
        let end = match status {
            Ok(status) => end_event(status),
            Err(e) => EndEvent { exit_code: -1, exited: false, status: "unknown".into(), error: Some(e.to_string()) },
        };
        tracing::info!(pid, exit_code = end.exit_code, "process ended");
        entry.finish(end).await;
        tokio::time::sleep(KEEP_FINISHED).await;
        table.remove(pid);
    });
    Ok(entry)
}

fn internal(what: &str, e: impl std::fmt::Display) -> ConnectError {
    ConnectError::new(Code::Internal, format!("{what}: {e}"))
}

fn open_pty(size: PtySize) -> Result<(OwnedFd, OwnedFd), ConnectError> {
    let ws = winsize(size);
    let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| internal("open PTY", e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(
        nix::fcntl::fcntl(pty.master.as_raw_fd(), nix::fcntl::F_GETFL).map_err(|e| internal("PTY flags", e))?,
    );
    nix::fcntl::fcntl(pty.master.as_raw_fd(), nix::fcntl::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK))
        .map_err(|e| internal("PTY flags", e))?;
    nix::fcntl::fcntl(pty.master.as_raw_fd(), nix::fcntl::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| internal("PTY flags", e))?;
    Ok((pty.master, pty.slave))
}

/// Between fork and exec: a new session (so signals reach the whole process group), the PTY as
/// controlling terminal, then the user's groups, gid and uid.
fn prepare_child(cmd: &mut tokio::process::Command, user: &User, pty: bool) {
    let switch = nix::unistd::geteuid().as_raw() != user.uid;
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setsid, ioctl, setgroups, setgid, setuid) on memory allocated before the
    // fork; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if switch
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process's group (its session), or to the process alone.
pub fn signal_group(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: kill(2) with a pid we started; no memory is involved.
    unsafe { libc::kill(-pid, signal) == 0 || libc::kill(pid, signal) == 0 }
}

fn resolve_cwd(cwd: Option<&str>, default: Option<&Path>, home: &Path) -> Result<PathBuf, ConnectError> {
    let dir = match cwd {
        None | Some("") => match default {
            Some(d) if d.is_dir() => return Ok(d.to_path_buf()),
            _ => return Ok(home.to_path_buf()),
        },
        Some(c) => crate::fs::resolve(c, home)?,
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(ConnectError::new(Code::InvalidArgument, format!("cwd '{}' does not exist", dir.display())))
    }
}

async fn pump<R: AsyncRead + Unpin>(reader: Option<R>, entry: &Entry, wrap: fn(Vec<u8>) -> DataEvent) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    while let Ok(n @ 1..) = reader.read(&mut buf).await {
        entry.broadcast(frame(ProcessEvent::Data(wrap(buf[..n].to_vec())))).await;
    }
}

async fn pump_pty(master: Option<Arc<PtyMaster>>, entry: &Entry) {
    let Some(master) = master else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    while let Ok(n @ 1..) = master.read(&mut buf).await {
        entry.broadcast(frame(ProcessEvent::Data(DataEvent::Pty(buf[..n].to_vec())))).await;
    }
}

/// The end event for an exit status, with envd's (Go's) status strings.
pub fn end_event(status: ExitStatus) -> EndEvent {
    match (status.code(), status.signal()) {
        (Some(code), _) => {
            EndEvent { exit_code: code, exited: true, status: format!("exit status {code}"), error: None }
        }
        (None, Some(sig)) => {
            EndEvent { exit_code: -1, exited: false, status: format!("signal: {}", signal_name(sig)), error: None }
        }
        (None, None) => EndEvent { exit_code: -1, exited: false, status: "unknown".into(), error: None },
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        other => return format!("signal {other}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_match_envd() {
        let exited = end_event(ExitStatus::from_raw(7 << 8));
        assert_eq!((exited.exit_code, exited.exited, exited.status.as_str()), (7, true, "exit status 7"));
        let killed = end_event(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!((killed.exit_code, killed.exited, killed.status.as_str()), (-1, false, "signal: killed"));
    }

    #[test]
    fn cwd_must_exist() {
        let home = Path::new("/");
        assert_eq!(resolve_cwd(None, None, home).unwrap(), Path::new("/"));
        assert_eq!(resolve_cwd(None, Some(Path::new("/tmp")), home).unwrap(), Path::new("/tmp"));
        assert_eq!(resolve_cwd(Some("tmp"), None, home).unwrap(), Path::new("/tmp"));
        let err = resolve_cwd(Some("/definitely/not/here"), None, home).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert!(err.message.contains("does not exist"));
    }
}
