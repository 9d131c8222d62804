//! `ember apikey create | list | revoke`: API keys in the daemon's database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use ember_store::Store;

#[derive(Subcommand)]
pub enum ApiKeyCmd {
    /// Create a key; it is printed once and stored only as a hash.
    Create {
        /// The team whose sandboxes the key sees and controls.
        #[arg(long, default_value = "default")]
        team: String,
        /// A label for the key.
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List keys (without their secrets).
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a key by its id.
    Revoke {
        id: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// The daemon's database in `data_dir` (or the default one).
pub(crate) fn open(data_dir: Option<PathBuf>) -> anyhow::Result<Store> {
    let dir = ember::settings::data_dir(data_dir);
    // Made private by the umask if missing; `ember serve` sets its access in full at start.
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Store::open(&dir.join("ember.db")).context("open the state database")
}

/// Team names: 1-64 letters, digits, '-' and '_'.
pub(crate) fn check_team(team: &str) -> anyhow::Result<()> {
    if team.is_empty() || team.len() > 64 || !team.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        anyhow::bail!("team names are 1-64 characters of letters, digits, '-' and '_'");
    }
    Ok(())
}

pub fn run(cmd: ApiKeyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ApiKeyCmd::Create { team, name, data_dir } => {
            check_team(&team)?;
            let key = open(data_dir)?.create_key(&team, &name)?;
            println!("{}", key.key);
            eprintln!("created key {} for team {}; it is not shown again", key.id, key.team);
        }
        ApiKeyCmd::List { data_dir } => {
            for k in open(data_dir)?.list_keys()? {
                let state = if k.revoked { "revoked" } else { "active" };
                println!("{}\t{}...\tteam={}\t{}\t{}", k.id, k.prefix, k.team, state, k.name);
            }
        }
        ApiKeyCmd::Revoke { id, data_dir } => {
            if !open(data_dir)?.revoke_key(&id)? {
                eprintln!("ember: no active key with id {id}");
                return Ok(ExitCode::FAILURE);
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
