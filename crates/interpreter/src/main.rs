//! `ember-interpreter`: the code-interpreter server of a sandbox (guest side, port 49999).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ember_interpreter::context::Registry;
use ember_interpreter::envd::Envd;
use ember_interpreter::kernel::{prepare_runtime_dir, KernelSettings};
use ember_interpreter::lang::Language;
use ember_interpreter::server::{router, start_contexts, App};
use ember_interpreter::users::Account;

#[derive(Parser)]
#[command(name = "ember-interpreter", version, about = "Ember code-interpreter server (E2B protocol, Jupyter kernels)")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:49999")]
    listen: SocketAddr,
    /// Directory of Jupyter kernelspecs (`<name>/kernel.json`).
    #[arg(long, default_value = "/usr/local/share/jupyter/kernels")]
    kernels: PathBuf,
    /// Languages whose default contexts start before `/health` answers 200.
    #[arg(long, value_delimiter = ',', default_value = "python,javascript")]
    start: Vec<String>,
    /// User the kernels run as (never root).
    #[arg(long, default_value = "user")]
    user: String,
    /// Working directory of contexts that name none.
    #[arg(long, default_value = "/home/user")]
    cwd: PathBuf,
    /// envd (the guest agent), as http://IP:PORT: the access check and the sandbox's env vars.
    #[arg(long, default_value = "http://127.0.0.1:49983")]
    envd: String,
    /// Private directory for connection files and kernel logs.
    #[arg(long, default_value = "/run/ember-interpreter")]
    runtime_dir: PathBuf,
    /// Most contexts at once.
    #[arg(long, default_value_t = 64)]
    max_contexts: usize,
    /// Seconds a kernel has to answer kernel_info after its start (bash_kernel takes 15-40 s
    /// under TCG).
    #[arg(long, default_value_t = 120)]
    kernel_start_timeout: u64,
}

fn main() -> anyhow::Result<()> {
    // SAFETY: mallopt only changes allocator settings; it is called before any other thread
    // exists. A fixed mmap threshold (glibc raises it up to 32 MiB after big frees otherwise)
    // makes the big buffers of a cell's burst of output go back to the system when freed, and
    // two arenas keep freed memory from being spread over many.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBER_INTERPRETER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let start = cli
        .start
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Language::parse(s).with_context(|| format!("--start: unknown language {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let account = Account::lookup("/".as_ref(), &cli.user).context("--user")?;
    let euid = nix::unistd::Uid::effective();
    let account = if euid.is_root() {
        Some(account)
    } else if euid.as_raw() == account.uid {
        None
    } else {
        anyhow::bail!("running as uid {euid}: kernels can run as user {} only when started as root", cli.user);
    };
    prepare_runtime_dir(&cli.runtime_dir).with_context(|| format!("--runtime-dir {}", cli.runtime_dir.display()))?;
    let settings = KernelSettings {
        account,
        runtime_dir: cli.runtime_dir,
        start_timeout: Duration::from_secs(cli.kernel_start_timeout),
        path: std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
    };
    let envd = Envd::parse(&cli.envd, Duration::from_secs(5)).map_err(anyhow::Error::msg).context("--envd")?;
    let registry = Registry::new(settings, &cli.kernels, cli.cwd, cli.max_contexts);
    let app = Arc::new(App { registry, envd, ready: AtomicBool::new(false) });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("listen on {}", cli.listen))?;
        tracing::info!(addr = %cli.listen, "listening");
        tokio::spawn(start_contexts(app.clone(), start));
        let app2 = app.clone();
        let shutdown = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            // Executions in progress end (KernelDied) so that their streams close and the
            // graceful shutdown does not wait for cells that never end.
            tracing::info!("shutting down: killing the kernels");
            app2.registry.kill_all();
        };
        // Small NDJSON lines must not wait for the client's delayed ACK (Nagle).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, router(app.clone())).with_graceful_shutdown(shutdown).await;
        app.registry.kill_all();
        served.context("serve")
    })
}
