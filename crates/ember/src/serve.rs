//! `ember serve`: the daemon with the E2B-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ember::settings;
use ember_daemon::ServeConfig;

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
    /// vCPUs of every built-in template's sandboxes (1-8) [default: the template's own: 1, and
    /// 2 for code-interpreter].
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory of every built-in template's sandboxes in MiB (128-8192) [default: the
    /// template's own: 256 for base, 512 for the runtimes and code-interpreter].
    #[arg(long = "memory-mb")]
    memory_mb: Option<u32>,
    /// The most vCPUs a template may give its sandboxes (up to 8).
    #[arg(long, default_value_t = 4)]
    max_cpus: u32,
    /// The most memory a template may give its sandboxes, in MiB (up to 8192).
    #[arg(long = "max-memory-mb", default_value_t = 4096)]
    max_memory_mb: u32,
    /// Destroy all sandboxes when the daemon stops, instead of leaving them for the next one.
    #[arg(long)]
    destroy_on_exit: bool,
    /// Boot every sandbox cold instead of restoring the template's snapshot.
    #[arg(long)]
    cold_boot: bool,
    /// Sandboxes of template `base` kept restored and ready ahead of creates (0 turns the pool off).
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// The same for the code-interpreter template (`code-interpreter-v1`); filling it first builds
    /// the template in the background. 0 turns this pool off (the template is then built on its
    /// first create).
    #[arg(long, default_value_t = 2)]
    interpreter_pool: usize,
    /// Paused sandboxes one team may keep (each holds all its RAM on disk).
    #[arg(long, default_value_t = 16)]
    max_paused_per_team: usize,
    /// Snapshots one team may keep.
    #[arg(long, default_value_t = 10)]
    max_snapshots_per_team: usize,
    /// Disk space all snapshots together may use, in GiB.
    #[arg(long, default_value_t = 20)]
    max_snapshot_gib: u64,
    /// Accept an EMBER_API_KEY with too little entropy (for throwaway local set-ups only).
    #[arg(long)]
    allow_weak_api_key: bool,
    /// Domain of exposed ports: a request whose Host is `{port}-{sandboxID}.{DOMAIN}` goes to that
    /// port of that sandbox (default: the listen address).
    #[arg(long)]
    domain: Option<String>,
    /// How long a template build's ready command may keep failing, in seconds (E2B's default:
    /// 600).
    #[arg(long, value_name = "SECS")]
    build_ready_timeout: Option<u64>,
    /// Resolver the sandboxes' DNS service forwards to (repeatable; default: the host's, from
    /// /etc/resolv.conf). An address, with :PORT if not 53.
    #[arg(long = "dns", value_name = "ADDR")]
    dns: Vec<String>,
    /// A network sandboxes may reach although it is always denied otherwise (a private range, a
    /// host address); repeatable. Never needed by default.
    #[arg(long = "allow-host-cidr", value_name = "CIDR")]
    allow_host_cidr: Vec<String>,
    /// A PEM file of CA certificates sandboxes trust, besides the host's extra ones.
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Do not carry the host's extra CA certificates (/usr/local/share/ca-certificates) into sandboxes.
    #[arg(long)]
    no_host_ca: bool,
    /// Serve operator metrics (Prometheus text, GET /metrics) on this address, e.g.
    /// 127.0.0.1:9464; never on the API's port. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// TCG only: each VM's translation cache in MiB (16-1024; default 256). Smaller lowers a
    /// sandbox's private memory and costs speed when its code no longer fits.
    #[arg(long, value_name = "MIB")]
    tcg_tb_mib: Option<u32>,
    /// Every team's default quotas; `ember team set` overrides them per team. None by default.
    #[command(flatten)]
    team_quota: TeamQuotaArgs,
}

/// Default team quotas (`ember serve`); per-team values come from `ember team set`.
#[derive(Args)]
struct TeamQuotaArgs {
    /// Most sandboxes one team may have running at once.
    #[arg(long, value_name = "N")]
    team_max_sandboxes: Option<u64>,
    /// Most vCPUs one team's running sandboxes may have together.
    #[arg(long, value_name = "N")]
    team_max_vcpus: Option<u64>,
    /// Most memory one team's running sandboxes may have together, in MiB.
    #[arg(long, value_name = "MIB")]
    team_max_memory_mb: Option<u64>,
    /// Most running sandbox-minutes one team may use in a calendar month (UTC).
    #[arg(long, value_name = "N")]
    team_max_minutes_month: Option<u64>,
}

/// Network slots the daemon keeps made ahead of creates.
const SLOT_POOL: usize = 4;

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let base = ember_image::template::default_size("base");
    let (cpus, memory_mb) = (args.cpus.unwrap_or(base.vcpus), args.memory_mb.unwrap_or(base.memory_mib));
    ember_vmm::config::check_sizes(cpus, memory_mb)?;
    ember_vmm::config::check_sizes(args.max_cpus, args.max_memory_mb).context("--max-cpus and --max-memory-mb")?;
    if cpus > args.max_cpus || memory_mb > args.max_memory_mb {
        anyhow::bail!("--cpus and --memory-mb must not exceed --max-cpus and --max-memory-mb");
    }
    if args.max_timeout == 0 {
        anyhow::bail!("--max-timeout must be at least 1 second");
    }
    let data_dir = settings::data_dir(args.data_dir);
    let mut runtime = settings::runtime_config(data_dir.clone(), settings::guest_binaries()?);
    runtime.slot_pool = SLOT_POOL;
    if let Some(mib) = args.tcg_tb_mib {
        if !ember_vmm::config::TCG_TB_MIB_RANGE.contains(&mib) {
            anyhow::bail!("--tcg-tb-mib must be between 16 and 1024, got {mib}");
        }
        runtime.tcg_tb_mib = mib;
    }
    runtime.network = settings::network(&args.dns, &args.allow_host_cidr, args.ca_bundle.as_deref(), !args.no_host_ca)?;
    let domain = match args.domain {
        Some(d) => settings::check_domain(&d)?,
        None => settings::default_domain(args.listen),
    };
    let config = ServeConfig {
        listen: args.listen,
        data_dir,
        default_timeout_secs: 300.min(args.max_timeout),
        max_timeout_secs: args.max_timeout,
        max_sandboxes: args.max_sandboxes,
        vcpus: args.cpus,
        memory_mib: args.memory_mb,
        max_vcpus: args.max_cpus,
        max_memory_mib: args.max_memory_mb,
        env_api_key: env_api_key(args.allow_weak_api_key)?,
        destroy_on_exit: args.destroy_on_exit,
        snapshots: !args.cold_boot,
        pool_size: args.pool,
        interpreter_pool_size: args.interpreter_pool,
        max_paused_per_team: args.max_paused_per_team,
        max_snapshots_per_team: args.max_snapshots_per_team,
        max_snapshot_bytes: args.max_snapshot_gib.saturating_mul(1 << 30),
        domain,
        build_ready_timeout_secs: args.build_ready_timeout,
        metrics_listen: args.metrics_listen,
        team_quota: ember_store::Quota {
            max_sandboxes: args.team_quota.team_max_sandboxes,
            max_vcpus: args.team_quota.team_max_vcpus,
            max_memory_mib: args.team_quota.team_max_memory_mb,
            max_minutes_month: args.team_quota.team_max_minutes_month,
        },
    };
    // Build the template before taking requests, with progress shown, rather than in the first create.
    runtime.cache.prepare(ember_runtime::private::qemu_group(runtime.qemu_user.as_deref())?)?;
    let (cache, bins) = (runtime.cache.clone(), runtime.binaries.clone());
    tokio::task::spawn_blocking(move || ember_image::template::ensure(&cache, "base", &bins)).await??;
    ember_daemon::serve(config, runtime).await?;
    Ok(ExitCode::SUCCESS)
}

/// `EMBER_API_KEY`, refused when it is guessable unless `--allow-weak-api-key` says otherwise.
fn env_api_key(allow_weak: bool) -> anyhow::Result<Option<String>> {
    let Some(key) = std::env::var("EMBER_API_KEY").ok().filter(|k| !k.is_empty()) else { return Ok(None) };
    if let Err(why) = ember_daemon::auth::check_key_strength(&key) {
        if !allow_weak {
            anyhow::bail!("EMBER_API_KEY refused: {why} (or pass --allow-weak-api-key)");
        }
        eprintln!("ember: warning: EMBER_API_KEY is weak ({why}); accepted because of --allow-weak-api-key");
    }
    Ok(Some(key))
}
