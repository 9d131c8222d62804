//! One running QEMU process. It owns the child: [`Vm::kill`] or dropping the `Vm` kills and
//! reaps it, so no exit path leaves a QEMU behind.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::VmConfig;
use crate::qmp::Qmp;
use crate::VmmError;

/// A live VM.
pub struct Vm {
    child: Child,
    pid: u32,
    config: VmConfig,
}

impl Vm {
    /// Starts QEMU for `config` (validated first), inside `config.netns` if set.
    pub fn spawn(config: VmConfig) -> Result<Self, VmmError> {
        config.validate()?;
        find_qemu(&config.qemu)?;
        let netns = match &config.netns {
            Some(p) => Some(File::open(p).map_err(|source| VmmError::Io {
                context: format!("open {}", p.display()),
                source,
            })?),
            None => None,
        };
        let stderr_log =
            File::create(config.serial_log.with_extension("qemu.log")).map_err(|source| {
                VmmError::Io {
                    context: "create QEMU log".into(),
                    source,
                }
            })?;
        let mut cmd = Command::new(&config.qemu);
        cmd.args(config.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_log))
            // Out of the terminal's process group: Ctrl-C reaches ember, which tears down in order.
            .process_group(0)
            .kill_on_drop(true);
        let ns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let die_with_parent = config.die_with_parent;
        // SAFETY: runs in the child between fork and exec, making only the async-signal-safe
        // system calls setns and prctl on a descriptor opened before the fork (kept alive by
        // `netns` until spawn returns); it does not allocate or lock.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if die_with_parent
                    && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::QemuMissing(config.qemu.clone()),
            _ => VmmError::Io {
                context: "start QEMU".into(),
                source: e,
            },
        })?;
        drop(netns);
        let pid = child.id().unwrap_or_default();
        tracing::debug!(pid, "QEMU started");
        Ok(Self { child, pid, config })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Connects to the VM's QMP socket.
    pub async fn qmp(&self, timeout: Duration) -> Result<Qmp, VmmError> {
        Ok(Qmp::connect(&self.config.qmp_socket, timeout).await?)
    }

    /// The exit status, if QEMU has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for QEMU to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// What QEMU itself printed (errors about its arguments or devices).
    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.config.serial_log.with_extension("qemu.log"))
            .unwrap_or_default()
    }

    /// Kills QEMU and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    fn kill_sync(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = self.child.start_kill();
        for _ in 0..400 {
            if self.child.try_wait().ok().flatten().is_some() {
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
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    found.ok_or_else(|| VmmError::QemuMissing(program.to_path_buf()))
}
