//! `ember-agent`: PID 1 in the guest (then it starts itself again as the server), or
//! `ember-agent serve` anywhere, including on the host in a scratch directory.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ember_agent::ca::CaPaths;
use ember_agent::init::BootParams;
use ember_agent::server::{serve, AgentConfig};
use ember_agent::statefile::GUEST_STATE_FILE;

#[derive(Parser)]
#[command(name = "ember-agent", version, about = "Ember guest agent (E2B envd protocol)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve envd's protocol.
    Serve {
        #[arg(long, default_value = "0.0.0.0:49983")]
        listen: SocketAddr,
        /// User for requests that name none.
        #[arg(long, default_value = "user")]
        default_user: String,
        /// Root of the account database (`/etc/passwd`, `/etc/group`).
        #[arg(long, default_value = "/")]
        users_root: PathBuf,
        /// Guest duties on `/init`: set the clock and reseed the kernel's RNG (inside a guest only).
        #[arg(long)]
        guest: bool,
        /// Where to save what `/init` sets (root-only), so a restarted server keeps its token;
        /// default with `--guest`: /run/ember/agent.json, else kept in memory only.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// The guest's address, on which servers listening on loopback only are made reachable
        /// (with `--guest` only); default: from `ember.ip=` on the kernel command line.
        #[arg(long)]
        guest_ip: Option<IpAddr>,
    },
    /// Grow the root filesystem to its disk's new size (the host grew the disk; as root), then
    /// print the disk's sizes as JSON. Without --bytes, only print them.
    GrowRoot {
        /// The size the disk must reach first, in bytes (the kernel learns of it shortly after).
        #[arg(long)]
        bytes: Option<u64>,
        #[arg(long, default_value = "/dev/vda")]
        device: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    if std::process::id() == 1 {
        ember_agent::init::run();
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMBER_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let config = match cli.command {
        Some(Cmd::GrowRoot { bytes, device }) => {
            let root = std::path::Path::new("/");
            if let Some(bytes) = bytes {
                ember_agent::disk::grow_root(&device, root, bytes, std::time::Duration::from_secs(10))?;
            }
            println!("{}", serde_json::to_string(&ember_agent::disk::root_disk(&device, root)?)?);
            return Ok(());
        }
        Some(Cmd::Serve { listen, default_user, users_root, guest, state_file, guest_ip }) => {
            let state_file = state_file.or_else(|| guest.then(|| GUEST_STATE_FILE.into()));
            let guest_ip = guest_ip.or_else(|| if guest { boot_guest_ip() } else { None });
            let run_info_dir = guest.then(|| ember_agent::runinfo::GUEST_DIR.into());
            AgentConfig {
                listen,
                default_user,
                users_root,
                guest,
                state_file,
                ca_paths: CaPaths::guest(),
                guest_ip,
                run_info_dir,
            }
        }
        None => AgentConfig {
            listen: ([0, 0, 0, 0], ember_envd_proto::ENVD_PORT).into(),
            default_user: "user".into(),
            users_root: "/".into(),
            guest: false,
            state_file: None,
            ca_paths: CaPaths::guest(),
            guest_ip: None,
            run_info_dir: None,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(serve(config))
}

/// The guest's address from the kernel command line (`ember.ip=`).
fn boot_guest_ip() -> Option<IpAddr> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let ip = BootParams::parse(&cmdline).guest_addr();
    if ip.is_none() {
        tracing::warn!("no ember.ip= on the kernel command line: loopback-only servers are not forwarded");
    }
    ip
}
