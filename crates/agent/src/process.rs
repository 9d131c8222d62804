//! Starting processes for `process.Process/Start`: credentials, environment, and a stream of
//! start, output and end events read from the child as it produces them.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use bytes::Bytes;
use ember_envd_proto::envelope::{encode_end, encode_message};
use ember_envd_proto::process::{
    DataEvent, EndEvent, ProcessEvent, StartEvent, StartRequest, StartResponse,
};
use ember_envd_proto::{Code, ConnectError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::users::User;

/// `PATH` given to every process, as envd does.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Size of one output read, and so the most output one data event carries.
const READ_CHUNK: usize = 32 * 1024;

/// Everything needed to start one process.
pub struct Launch {
    pub request: StartRequest,
    pub user: User,
    /// Sandbox-wide environment, applied before the request's own.
    pub sandbox_envs: BTreeMap<String, String>,
}

/// Validates the request and starts the process; on success returns its pid and a receiver of
/// enveloped frames (start event first, end-of-stream frame last).
pub fn start(launch: Launch) -> Result<(u32, mpsc::Receiver<Bytes>), ConnectError> {
    let Launch {
        request,
        user,
        sandbox_envs,
    } = launch;
    let cfg = &request.process;
    if cfg.cmd.is_empty() {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "process.cmd is empty",
        ));
    }
    if request.pty.is_some() {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "PTY processes are not supported yet",
        ));
    }
    let cwd = resolve_cwd(cfg.cwd.as_deref(), &user.home)?;

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
        .stdin(if request.stdin == Some(true) {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    drop_privileges(&mut cmd, &user);

    let mut child = cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            _ => Code::Internal,
        };
        ConnectError::new(code, format!("failed to start '{}': {e}", cfg.cmd))
    })?;
    let pid = child.id().unwrap_or_default();
    let (tx, rx) = mpsc::channel(64);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // The start event must be the first frame; the channel is empty, so this cannot fail.
    let _ = tx.try_send(event(ProcessEvent::Start(StartEvent { pid })));
    tokio::spawn(async move {
        let out = pump(stdout, tx.clone(), DataEvent::Stdout);
        let err = pump(stderr, tx.clone(), DataEvent::Stderr);
        tokio::join!(out, err);
        let end = match child.wait().await {
            Ok(status) => end_event(status),
            Err(e) => EndEvent {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some(e.to_string()),
            },
        };
        tracing::debug!(pid, status = %end.status, "process ended");
        let _ = tx.send(event(ProcessEvent::End(end))).await;
        let _ = tx.send(encode_end(None)).await;
    });
    Ok((pid, rx))
}

fn resolve_cwd(cwd: Option<&str>, home: &Path) -> Result<PathBuf, ConnectError> {
    let dir = match cwd {
        None | Some("") => return Ok(home.to_path_buf()),
        Some(c) => home.join(c),
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(ConnectError::new(
            Code::InvalidArgument,
            format!("cwd '{}' does not exist", dir.display()),
        ))
    }
}

/// Switches the child to `user` between fork and exec, when that is a change of user.
fn drop_privileges(cmd: &mut tokio::process::Command, user: &User) {
    if nix::unistd::geteuid().as_raw() == user.uid {
        return;
    }
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe system calls setgroups, setgid and setuid on memory allocated before the
    // fork; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    tx: mpsc::Sender<Bytes>,
    wrap: fn(Vec<u8>) -> DataEvent,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut client_gone = false;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if !client_gone => {
                // A client that went away must not stop the process: keep draining its output.
                client_gone = tx
                    .send(event(ProcessEvent::Data(wrap(buf[..n].to_vec()))))
                    .await
                    .is_err();
            }
            Ok(_) => {}
        }
    }
}

fn event(event: ProcessEvent) -> Bytes {
    encode_message(&StartResponse { event })
}

/// The end event for an exit status, with envd's (Go's) status strings.
pub fn end_event(status: ExitStatus) -> EndEvent {
    match (status.code(), status.signal()) {
        (Some(code), _) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        },
        (None, Some(sig)) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(sig)),
            error: None,
        },
        (None, None) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: None,
        },
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
        assert_eq!(
            (exited.exit_code, exited.exited, exited.status.as_str()),
            (7, true, "exit status 7")
        );
        let killed = end_event(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!(
            (killed.exit_code, killed.exited, killed.status.as_str()),
            (-1, false, "signal: killed")
        );
    }

    #[test]
    fn cwd_must_exist() {
        let home = Path::new("/");
        assert_eq!(resolve_cwd(None, home).unwrap(), Path::new("/"));
        assert_eq!(resolve_cwd(Some("tmp"), home).unwrap(), Path::new("/tmp"));
        let err = resolve_cwd(Some("/definitely/not/here"), home).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert!(err.message.contains("does not exist"));
    }
}
