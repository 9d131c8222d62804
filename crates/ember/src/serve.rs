//! `ember serve`: the daemon with the E2B-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ember_daemon::ServeConfig;
use ember_runtime::RuntimeConfig;

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the one port serving the REST API and all sandbox traffic.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// State: the database and per-sandbox files (default: EMBER_DATA_DIR or /var/lib/ember).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Longest time-out a client may ask for, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_timeout: u64,
    /// Most sandboxes running at once.
    #[arg(long, default_value_t = 32)]
    max_sandboxes: usize,
    /// vCPUs of each sandbox (1-8).
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Memory of each sandbox in MiB (128-8192).
    #[arg(long = "memory-mb", default_value_t = 512)]
    memory_mb: u32,
    /// Destroy all sandboxes when the daemon stops, instead of leaving them for the next one.
    #[arg(long)]
    destroy_on_exit: bool,
    /// Boot every sandbox cold instead of restoring the template's snapshot.
    #[arg(long)]
    cold_boot: bool,
    /// Sandboxes kept restored and ready ahead of creates (0 turns the pool off).
    #[arg(long, default_value_t = 2)]
    pool: usize,
}

/// Network slots the daemon keeps made ahead of creates.
const SLOT_POOL: usize = 4;

/// The data directory: the flag, else `EMBER_DATA_DIR`, else `/var/lib/ember`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("EMBER_DATA_DIR").map(PathBuf::from)).unwrap_or_else(|| "/var/lib/ember".into())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    ember_vmm::config::check_sizes(args.cpus, args.memory_mb)?;
    if args.max_timeout == 0 {
        anyhow::bail!("--max-timeout must be at least 1 second");
    }
    let data_dir = data_dir(args.data_dir);
    let mut runtime = RuntimeConfig::from_env(crate::agent_binary()?);
    runtime.data_dir = data_dir.clone();
    runtime.slot_pool = SLOT_POOL;
    let config = ServeConfig {
        listen: args.listen,
        data_dir,
        default_timeout_secs: 300.min(args.max_timeout),
        max_timeout_secs: args.max_timeout,
        max_sandboxes: args.max_sandboxes,
        vcpus: args.cpus,
        memory_mib: args.memory_mb,
        env_api_key: std::env::var("EMBER_API_KEY").ok().filter(|k| !k.is_empty()),
        destroy_on_exit: args.destroy_on_exit,
        snapshots: !args.cold_boot,
        pool_size: args.pool,
    };
    // Build the template before taking requests, with progress shown, rather than in the first create.
    let (cache, agent) = (runtime.cache.clone(), runtime.agent_bin.clone());
    tokio::task::spawn_blocking(move || ember_image::template::ensure(&cache, "base", &agent)).await??;
    ember_daemon::serve(config, runtime).await?;
    Ok(ExitCode::SUCCESS)
}
