//! One Jupyter kernel: its process (unprivileged, own process group, output to a capped log),
//! its connection file, and its ZeroMQ channels (shell and control as DEALER, iopub as SUB),
//! each read by a task that verifies every message and drops bad ones.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Mutex, MutexGuard};
use tokio::task::AbortHandle;
use zeromq::{DealerSendHalf, Socket, SocketRecv, SocketSend};

use crate::kernelspec::{InterruptMode, KernelSpec};
use crate::users::Account;
use crate::wire::{self, Key, Message};

/// Messages buffered between a channel's reader task and the execution. iopub's is short: a
/// `stream` message holds all the output of 0.2 s (ipykernel's flush interval, no size cap),
/// megabytes for a cell that prints fast, and the server holds a few at most.
const CHANNEL_DEPTH: usize = 8;
const IOPUB_DEPTH: usize = 1;
/// A kernel's log is rotated (to `.1`) at this size.
const LOG_ROTATE_BYTES: u64 = 256 << 10;
/// Largest message accepted from a kernel; bigger ones are dropped (and logged).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Why a kernel could not be started or talked to.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// the connection file or log could not be written
    #[error("prepare the kernel's files: {0}")]
    Files(std::io::Error),
    /// no free local port
    #[error("pick a local port: {0}")]
    Port(std::io::Error),
    /// the process did not start
    #[error("start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// the process exited during start-up
    #[error("the kernel exited during start-up ({0}); see its log {1}")]
    ExitedEarly(String, PathBuf),
    /// no kernel_info_reply in time
    #[error("the kernel did not answer within {0:?}; see its log {1}")]
    StartTimeout(Duration, PathBuf),
    /// a ZeroMQ socket failed
    #[error("ZeroMQ: {0}")]
    Zmq(#[from] zeromq::ZmqError),
    /// the kernel is gone
    #[error("the kernel has exited")]
    Gone,
}

/// Everything needed to start kernels, the same for all of them.
#[derive(Debug, Clone)]
pub struct KernelSettings {
    /// The kernels' user; `None` runs them as the server's own (non-root) user.
    pub account: Option<Account>,
    /// Private directory for connection files and logs.
    pub runtime_dir: PathBuf,
    /// Deadline for kernel_info_reply after the spawn.
    pub start_timeout: Duration,
    /// `PATH` for kernels.
    pub path: String,
}

/// A running kernel. Dropping it kills its process group.
pub struct Kernel {
    pub key: Key,
    pub session: String,
    pgid: Pid,
    interrupt_mode: InterruptMode,
    /// Deno's kernel (2.x) publishes a cell's output from a queue, often after its `idle`: its
    /// cells are followed by a fence (`execute::fence`).
    pub late_results: bool,
    shell_tx: Mutex<DealerSendHalf>,
    control_tx: Mutex<DealerSendHalf>,
    shell_rx: Mutex<mpsc::Receiver<Message>>,
    iopub_rx: Mutex<mpsc::Receiver<Message>>,
    exit: watch::Receiver<Option<String>>,
    readers: Vec<AbortHandle>,
    conn_file: PathBuf,
    pub log: PathBuf,
}

impl Kernel {
    /// Starts `spec` in `cwd` and waits for its kernel_info_reply (and for iopub to be
    /// subscribed). `name` names its files (a context id).
    pub async fn start(
        settings: &KernelSettings,
        spec: &KernelSpec,
        cwd: &Path,
        name: &str,
    ) -> Result<Kernel, KernelError> {
        let started = Instant::now();
        let ports = free_ports()?;
        let key_text = wire::random_hex(32);
        let conn_file = settings.runtime_dir.join(format!("kernel-{name}-{}.json", wire::random_hex(4)));
        let log = log_path(&settings.runtime_dir, name);
        write_connection_file(&conn_file, &ports, &key_text, &spec.name, settings.account.as_ref())
            .map_err(KernelError::Files)?;
        let guard = FileGuard(conn_file.clone());
        let mut child = spawn(settings, spec, cwd, &conn_file, &log)?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).ok_or(KernelError::Gone)?;
        let pgid = Pid::from_raw(pid);
        // From here on a failure must kill the group: `PgKill` does so unless disarmed.
        let mut pg_guard = PgKill(Some(pgid));
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let _ = exit_tx.send(Some(status));
        });
        let connect = connect_all(ports, Key::new(key_text.as_bytes()));
        let mut exit_wait = exit.clone();
        let channels = tokio::select! {
            r = tokio::time::timeout(settings.start_timeout, connect) => match r {
                Ok(r) => r?,
                Err(_) => return Err(KernelError::StartTimeout(settings.start_timeout, log)),
            },
            status = wait_exit(&mut exit_wait) => return Err(KernelError::ExitedEarly(status, log)),
        };
        let kernel = Kernel {
            key: Key::new(key_text.as_bytes()),
            session: wire::random_hex(16),
            pgid,
            interrupt_mode: spec.interrupt_mode,
            late_results: spec.name == "deno",
            shell_tx: Mutex::new(channels.shell_tx),
            control_tx: Mutex::new(channels.control_tx),
            shell_rx: Mutex::new(channels.shell_rx),
            iopub_rx: Mutex::new(channels.iopub_rx),
            exit,
            readers: channels.readers,
            conn_file: guard.disarm(),
            log: log.clone(),
        };
        pg_guard.0 = None;
        let remaining = settings.start_timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, kernel.handshake()).await {
            Ok(Ok(())) => {
                tracing::info!(kernel = spec.name, %name, pid, ms = started.elapsed().as_millis(), "kernel started");
                Ok(kernel)
            }
            Ok(Err(KernelError::Gone)) => Err(KernelError::ExitedEarly(kernel.exited().await, log)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(KernelError::StartTimeout(settings.start_timeout, log)),
        }
    }

    /// kernel_info_request, sent again every half second until its reply is in and a message
    /// with it as parent has come on iopub (so the subscription is in place).
    async fn handshake(&self) -> Result<(), KernelError> {
        let mut shell = self.shell_rx.lock().await;
        let mut iopub = self.iopub_rx.lock().await;
        let mut exit = self.exit.clone();
        let mut sent = Vec::new();
        let (mut replied, mut published) = (false, false);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !(replied && published) {
            tokio::select! {
                _ = tick.tick() => sent.push(self.send_shell("kernel_info_request", json!({})).await?),
                Some(m) = shell.recv() => {
                    replied |= m.header.msg_type == "kernel_info_reply" && is_reply_to(&m, &sent);
                }
                Some(m) = iopub.recv() => published |= is_reply_to(&m, &sent),
                _ = wait_exit(&mut exit) => return Err(KernelError::Gone),
            }
        }
        Ok(())
    }

    /// Sends a request on shell; returns its msg_id.
    pub async fn send_shell(&self, msg_type: &str, content: Value) -> Result<String, KernelError> {
        let (header, content) = wire::request(&self.session, msg_type, content);
        let frames = wire::encode(&self.key, &header, &content);
        let msg = zeromq::ZmqMessage::try_from(frames).map_err(|_| KernelError::Gone)?;
        self.shell_tx.lock().await.send(msg).await?;
        Ok(header.msg_id)
    }

    /// The shell replies, for the one execution that runs at a time.
    pub async fn shell_rx(&self) -> MutexGuard<'_, mpsc::Receiver<Message>> {
        self.shell_rx.lock().await
    }

    /// The iopub messages, for the one execution that runs at a time.
    pub async fn iopub_rx(&self) -> MutexGuard<'_, mpsc::Receiver<Message>> {
        self.iopub_rx.lock().await
    }

    /// Resolves when the process has exited, with its status.
    pub async fn exited(&self) -> String {
        wait_exit(&mut self.exit.clone()).await
    }

    pub fn is_alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Interrupts the running cell (SIGINT to the group, or interrupt_request on control).
    pub async fn interrupt(&self) {
        if !self.is_alive() {
            return;
        }
        match self.interrupt_mode {
            InterruptMode::Signal => {
                if let Err(e) = killpg(self.pgid, Signal::SIGINT) {
                    tracing::warn!(pgid = %self.pgid, "interrupt: {e}");
                }
            }
            InterruptMode::Message => {
                let (header, content) = wire::request(&self.session, "interrupt_request", json!({}));
                let frames = wire::encode(&self.key, &header, &content);
                if let Ok(msg) = zeromq::ZmqMessage::try_from(frames) {
                    let send = async { self.control_tx.lock().await.send(msg).await };
                    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), send).await {
                        tracing::warn!("interrupt_request: {e}");
                    }
                }
            }
        }
    }

    /// Kills the process group now.
    pub fn kill(&self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.kill();
        for r in &self.readers {
            r.abort();
        }
        let _ = std::fs::remove_file(&self.conn_file);
    }
}

/// The exit status, once the process has exited.
async fn wait_exit(exit: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        let current = exit.borrow_and_update().clone();
        if let Some(status) = current {
            return status;
        }
        if exit.changed().await.is_err() {
            return String::new();
        }
    }
}

fn is_reply_to(m: &Message, sent: &[String]) -> bool {
    m.parent_msg_id.as_ref().is_some_and(|p| sent.contains(p))
}

/// Kills a process group on drop unless disarmed (start-up failures).
struct PgKill(Option<Pid>);

impl Drop for PgKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Removes a file on drop unless disarmed.
struct FileGuard(PathBuf);

impl FileGuard {
    fn disarm(self) -> PathBuf {
        let path = self.0.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    shell: u16,
    iopub: u16,
    stdin: u16,
    control: u16,
    hb: u16,
}

/// Five distinct free ports on 127.0.0.1 (held together while picked, so they differ).
fn free_ports() -> Result<Ports, KernelError> {
    let listeners: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<_, _>>()
        .map_err(KernelError::Port)?;
    let p: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(KernelError::Port)?;
    Ok(Ports { shell: p[0], iopub: p[1], stdin: p[2], control: p[3], hb: p[4] })
}

fn write_connection_file(
    path: &Path,
    ports: &Ports,
    key: &str,
    kernel_name: &str,
    account: Option<&Account>,
) -> std::io::Result<()> {
    let body = json!({
        "transport": "tcp",
        "ip": "127.0.0.1",
        "shell_port": ports.shell,
        "iopub_port": ports.iopub,
        "stdin_port": ports.stdin,
        "control_port": ports.control,
        "hb_port": ports.hb,
        "key": key,
        "signature_scheme": "hmac-sha256",
        "kernel_name": kernel_name,
    });
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, body.to_string().as_bytes())?;
    if let Some(a) = account {
        // The kernel (not root) reads it; nobody else may.
        std::os::unix::fs::fchown(&f, Some(a.uid), Some(a.gid))?;
    }
    Ok(())
}

/// Spawns the kernel process: own process group, the account's credentials, `cwd`, a clean
/// environment, stdout and stderr into the capped log.
fn spawn(
    settings: &KernelSettings,
    spec: &KernelSpec,
    cwd: &Path,
    conn_file: &Path,
    log: &Path,
) -> Result<tokio::process::Child, KernelError> {
    let argv = spec.command_line(conn_file);
    let program = argv[0].clone();
    let spawn_err = |source| KernelError::Spawn { program: program.clone(), source };
    let (reader, writer) = std::io::pipe().map_err(KernelError::Files)?;
    let writer2 = writer.try_clone().map_err(KernelError::Files)?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", &settings.path)
        .env("LANG", "C.UTF-8")
        .env("PYTHONUNBUFFERED", "1")
        .env("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(a) = &settings.account {
        cmd.env("HOME", &a.home).env("USER", &a.name).env("LOGNAME", &a.name);
    } else if let Some(home) = std::env::var_os("HOME") {
        cmd.env("HOME", home);
    }
    cmd.envs(&spec.env);
    let cwd_c = CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| spawn_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in cwd")))?;
    let creds = settings
        .account
        .as_ref()
        .map(|a| (a.uid, a.gid, a.groups.iter().map(|g| Gid::from_raw(*g)).collect::<Vec<_>>()));
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setgroups, setgid, setuid, prctl, chdir) on data prepared before the fork;
    // it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid, groups)) = &creds {
                if Uid::effective().as_raw() != *uid {
                    nix::unistd::setgroups(groups)?;
                    nix::unistd::setgid(Gid::from_raw(*gid))?;
                    nix::unistd::setuid(Uid::from_raw(*uid))?;
                }
            }
            // After the credential change, which resets it: die with the server.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if libc::chdir(cwd_c.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    drop(cmd);
    pump_log(reader, log.to_path_buf());
    Ok(child)
}

/// Copies the kernel's output into its log, rotated at LOG_ROTATE_BYTES (memory stays bounded:
/// one buffer).
fn pump_log(reader: std::io::PipeReader, log: PathBuf) {
    tokio::spawn(async move {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) else { return };
        let open = |path: &Path| std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).ok();
        let mut file = open(&log);
        let mut written = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if written >= LOG_ROTATE_BYTES {
                let mut old = log.clone().into_os_string();
                old.push(".1");
                let _ = std::fs::rename(&log, old);
                file = open(&log);
                written = 0;
            }
            if let Some(f) = file.as_mut() {
                if std::io::Write::write_all(f, &buf[..n]).is_ok() {
                    written += n as u64;
                }
            }
        }
    });
}

struct Channels {
    shell_tx: DealerSendHalf,
    control_tx: DealerSendHalf,
    shell_rx: mpsc::Receiver<Message>,
    iopub_rx: mpsc::Receiver<Message>,
    readers: Vec<AbortHandle>,
}

async fn connect_all(ports: Ports, key: Key) -> Result<Channels, KernelError> {
    let endpoint = |port: u16| format!("tcp://127.0.0.1:{port}");
    // No connect time-out of the sockets' own (zeromq's default gives up after 30 s): the
    // caller bounds the whole start with the kernel start time-out, and a kernel that takes
    // longer to bind its ports (bash_kernel under TCG) is still connected to.
    let options = || {
        let mut o = zeromq::SocketOptions::default();
        o.no_connect_timeout();
        o
    };
    let mut shell = zeromq::DealerSocket::with_options(options());
    shell.connect(&endpoint(ports.shell)).await?;
    let mut control = zeromq::DealerSocket::with_options(options());
    control.connect(&endpoint(ports.control)).await?;
    let mut iopub = zeromq::SubSocket::with_options(options());
    iopub.connect(&endpoint(ports.iopub)).await?;
    iopub.subscribe("").await?;
    let (shell_tx, shell_recv) = shell.split();
    let (control_tx, control_recv) = control.split();
    let (shell_in, shell_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (iopub_in, iopub_rx) = mpsc::channel(IOPUB_DEPTH);
    // Control replies are not needed: read and drop them (so the kernel is never blocked).
    let (control_in, mut control_rx) = mpsc::channel::<Message>(CHANNEL_DEPTH);
    let key = Arc::new(key);
    let readers = vec![
        tokio::spawn(read_loop(shell_recv, key.clone(), shell_in, "shell")).abort_handle(),
        tokio::spawn(read_loop(iopub, key.clone(), iopub_in, "iopub")).abort_handle(),
        tokio::spawn(read_loop(control_recv, key, control_in, "control")).abort_handle(),
        tokio::spawn(async move { while control_rx.recv().await.is_some() {} }).abort_handle(),
    ];
    Ok(Channels { shell_tx, control_tx, shell_rx, iopub_rx, readers })
}

/// Receives, verifies and forwards messages, at the pace the receiver takes them.
async fn read_loop<S: SocketRecv>(mut socket: S, key: Arc<Key>, out: mpsc::Sender<Message>, channel: &'static str) {
    loop {
        let frames: Vec<Bytes> = match socket.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::debug!(channel, "recv: {e}");
                return;
            }
        };
        let size: usize = frames.iter().map(Bytes::len).sum();
        if size > MAX_MESSAGE_BYTES {
            tracing::warn!(channel, size, "dropped an oversized message from the kernel");
            continue;
        }
        let decoded = wire::decode(&key, &frames);
        drop(frames);
        if let (true, Ok(m)) = (size > 1 << 20, &decoded) {
            tracing::debug!(channel, size, msg_type = m.header.msg_type, "big message");
        }
        match decoded {
            Ok(msg) => {
                if out.send(msg).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(channel, "dropped a message from the kernel: {e}"),
        }
    }
}

/// The log of the kernels of context `name` (rotated to `<log>.1`).
pub fn log_path(runtime_dir: &Path, name: &str) -> PathBuf {
    runtime_dir.join(format!("kernel-{name}.log"))
}

/// Removes the logs of context `name` (deleted).
pub fn remove_logs(runtime_dir: &Path, name: &str) {
    let log = log_path(runtime_dir, name);
    let mut old = log.clone().into_os_string();
    old.push(".1");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(old);
}

/// Makes the private runtime directory (root only can list it; kernels reach their files by
/// name).
pub fn prepare_runtime_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}
