//! One running QEMU process. Either a child we started ([`Vm::spawn`]), or one started by an
//! earlier daemon and adopted by pid ([`Vm::adopt`]). Killing it, or dropping the `Vm`, kills
//! it and waits until it is gone, so no exit path leaves a QEMU behind; [`Vm::detach`] is the
//! one deliberate exception (a daemon that stops and leaves its sandboxes running).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::VmConfig;
use crate::qmp::Qmp;
use crate::serial::{self, Pump};
use crate::VmmError;

enum Proc {
    Child(Child),
    /// Not our child: known by pid and start time (which guards against pid reuse).
    Adopted {
        identity: String,
    },
    Detached,
}

/// A live VM.
pub struct Vm {
    proc: Proc,
    pid: u32,
    serial_log: PathBuf,
    qmp_socket: PathBuf,
    /// Copies the console into the capped log while this process holds the VM.
    _console: Option<Pump>,
}

/// A process identity that survives pid reuse: "pid starttime" from `/proc/PID/stat`.
pub fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let state = rest.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Whether the process recorded as `recorded` ("pid starttime") is still running.
pub fn alive(recorded: &str) -> bool {
    let Some(pid) = recorded.split_whitespace().next().and_then(|p| p.parse().ok()) else { return false };
    identity(pid).as_deref() == Some(recorded.trim())
}

impl Vm {
    /// Starts QEMU for `config` (validated first), inside `config.netns` if set.
    pub fn spawn(config: VmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        find_qemu(&config.qemu)?;
        let netns = match &config.netns {
            Some(p) => Some(
                File::open(p).map_err(|source| VmmError::Io { context: format!("open {}", p.display()), source })?,
            ),
            None => None,
        };
        // Opened before the fork: the child only writes to them.
        let cgroups = config
            .cgroup_procs
            .iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|source| VmmError::Io { context: format!("open {}", p.display()), source })
            })
            .collect::<Result<Vec<File>, _>>()?;
        let cgroup_fds: Vec<i32> = cgroups.iter().map(|f| f.as_raw_fd()).collect();
        let stderr_log = File::create(config.serial_log.with_extension("qemu.log"))
            .map_err(|source| VmmError::Io { context: "create QEMU log".into(), source })?;
        let mut cmd = Command::new(&config.qemu);
        cmd.args(config.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_log))
            // Out of the terminal's process group: Ctrl-C reaches ember, which tears down in order.
            .process_group(0)
            .kill_on_drop(false);
        let ns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let die_with_parent = config.die_with_parent;
        // SAFETY: runs in the child between fork and exec, making only the async-signal-safe
        // system calls write, setns and prctl on descriptors opened before the fork (kept alive
        // by `cgroups` and `netns` until spawn returns); it does not allocate or lock (the
        // vector of descriptors was made before the fork and is only read).
        unsafe {
            cmd.pre_exec(move || {
                // Join the VM's cgroups first ("0" is the writing process), so QEMU never runs
                // outside its limits.
                for fd in &cgroup_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::QemuMissing(config.qemu.clone()),
            _ => VmmError::Io { context: "start QEMU".into(), source: e },
        })?;
        drop(netns);
        drop(cgroups);
        let pid = child.id().unwrap_or_default();
        tracing::debug!(pid, "QEMU started");
        let console =
            Pump::start(serial::socket_path(&config.serial_log), config.serial_log.clone(), serial::DEFAULT_LOG_CAP);
        Ok(Self {
            proc: Proc::Child(child),
            pid,
            serial_log: config.serial_log,
            qmp_socket: config.qmp_socket,
            _console: Some(console),
        })
    }

    /// Takes over a QEMU started by an earlier process, if `identity` is still running.
    pub fn adopt(identity: &str, serial_log: PathBuf, qmp_socket: PathBuf) -> Option<Self> {
        let pid = identity.split_whitespace().next()?.parse().ok()?;
        if !alive(identity) {
            return None;
        }
        let console = Pump::start(serial::socket_path(&serial_log), serial_log.clone(), serial::DEFAULT_LOG_CAP);
        Some(Self {
            proc: Proc::Adopted { identity: identity.trim().to_string() },
            pid,
            serial_log,
            qmp_socket,
            _console: Some(console),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Connects to the VM's QMP socket.
    pub async fn qmp(&self, timeout: Duration) -> Result<Qmp, VmmError> {
        Ok(Qmp::connect(&self.qmp_socket, timeout).await?)
    }

    /// How QEMU exited, if it has.
    pub fn try_exit(&mut self) -> Option<String> {
        match &mut self.proc {
            Proc::Child(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
            Proc::Adopted { identity } => (!alive(identity)).then(|| "exited (adopted process)".to_string()),
            Proc::Detached => Some("detached".into()),
        }
    }

    /// Waits for QEMU to exit and describes how.
    pub async fn wait(&mut self) -> String {
        loop {
            if let Proc::Child(child) = &mut self.proc {
                return match child.wait().await {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("unknown status ({e})"),
                };
            }
            if let Some(how) = self.try_exit() {
                return how;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What QEMU itself printed (errors about its arguments or devices).
    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.serial_log.with_extension("qemu.log")).unwrap_or_default()
    }

    /// Kills QEMU and waits until it is gone.
    pub async fn kill(mut self) {
        if let Proc::Child(child) = &mut self.proc {
            let _ = child.kill().await;
        }
        self.kill_sync();
    }

    /// Forgets the process without killing it: it keeps running, to be adopted later (its
    /// console pump stops; the next owner starts its own).
    pub fn detach(mut self) {
        self.proc = Proc::Detached;
        self._console = None;
    }

    fn kill_sync(&mut self) {
        let gone = |proc: &mut Proc| match proc {
            Proc::Child(child) => child.try_wait().ok().flatten().is_some(),
            Proc::Adopted { identity } => !alive(identity),
            Proc::Detached => true,
        };
        if gone(&mut self.proc) {
            return;
        }
        match &mut self.proc {
            Proc::Child(child) => {
                let _ = child.start_kill();
            }
            _ => {
                // SAFETY: kill(2) on the pid whose identity (pid and start time) was just
                // checked to be our QEMU; no memory is involved.
                unsafe { libc::kill(self.pid.cast_signed(), libc::SIGKILL) };
            }
        }
        for _ in 0..400 {
            if gone(&mut self.proc) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(pid = self.pid, "QEMU did not exit after SIGKILL");
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill_sync();
    }
}

/// Resolves the QEMU binary: a path as given, or a bare name on `PATH`.
pub fn find_qemu(program: &Path) -> Result<PathBuf, VmmError> {
    let found = if program.components().count() > 1 {
        program.is_file().then(|| program.to_path_buf())
    } else {
        std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()))
    };
    found.ok_or_else(|| VmmError::QemuMissing(program.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tells_live_from_dead_and_reused_pids() {
        let me = identity(std::process::id()).unwrap();
        assert!(alive(&me));
        assert!(!alive(&format!("{} 1", std::process::id())));
        assert!(!alive("999999999 5"));
        assert!(!alive("garbage"));
        assert!(Vm::adopt("999999999 5", "/x".into(), "/y".into()).is_none());
    }
}
