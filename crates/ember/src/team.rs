//! `ember team set | show | list`: per-team quotas in the daemon's database, over the daemon's
//! defaults (`ember serve --team-max-*`). A running daemon reads them at each create.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ember_store::Quota;

use crate::apikey::{check_team, open};

/// Largest value a quota flag takes (beyond any real host).
const MAX_LIMIT: u64 = 1 << 40;

/// A quota flag's value: a number, or `default` (the team has none of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(Option<u64>);

fn limit(s: &str) -> Result<Limit, String> {
    match s {
        "default" | "none" => Ok(Limit(None)),
        n => match n.parse::<u64>() {
            Ok(n) if n <= MAX_LIMIT => Ok(Limit(Some(n))),
            _ => Err(format!("expected a whole number from 0 to {MAX_LIMIT}, or 'default'")),
        },
    }
}

#[derive(Subcommand)]
pub enum TeamCmd {
    /// Set a team's quotas; flags not given stay as they are, `default` removes one (the
    /// daemon's default applies). 0 allows nothing.
    Set {
        team: String,
        /// Most sandboxes running at once.
        #[arg(long, value_name = "N|default", value_parser = limit)]
        max_sandboxes: Option<Limit>,
        /// Most vCPUs of its running sandboxes together.
        #[arg(long, value_name = "N|default", value_parser = limit)]
        max_vcpus: Option<Limit>,
        /// Most memory of its running sandboxes together, in MiB.
        #[arg(long, value_name = "MIB|default", value_parser = limit)]
        max_memory_mb: Option<Limit>,
        /// Most running sandbox-minutes in a calendar month (UTC).
        #[arg(long, value_name = "N|default", value_parser = limit)]
        max_minutes_month: Option<Limit>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show a team's own quotas and the sandbox-minutes it used this month.
    Show {
        team: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the teams with quotas of their own.
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub fn run(cmd: TeamCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TeamCmd::Set { team, max_sandboxes, max_vcpus, max_memory_mb, max_minutes_month, data_dir } => {
            check_team(&team)?;
            let store = open(data_dir)?;
            let mut q = store.quota(&team)?;
            let set = |field: &mut Option<u64>, v: Option<Limit>| {
                if let Some(Limit(v)) = v {
                    *field = v;
                }
            };
            set(&mut q.max_sandboxes, max_sandboxes);
            set(&mut q.max_vcpus, max_vcpus);
            set(&mut q.max_memory_mib, max_memory_mb);
            set(&mut q.max_minutes_month, max_minutes_month);
            store.set_quota(&team, &q)?;
            println!("{}", line(&team, &q));
        }
        TeamCmd::Show { team, data_dir } => {
            check_team(&team)?;
            let store = open(data_dir)?;
            let q = store.quota(&team)?;
            println!("{}", line(&team, &q));
            let used = store.minutes_this_month(&team, ember_store::now_ms())?;
            println!("used this month: {used} sandbox-minutes");
        }
        TeamCmd::List { data_dir } => {
            for (team, q) in open(data_dir)?.quotas(None)? {
                println!("{}", line(&team, &q));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `team  max-sandboxes=N  ...`, `default` where the team has no value of its own.
fn line(team: &str, q: &Quota) -> String {
    let v = |x: Option<u64>| x.map_or_else(|| "default".to_string(), |n| n.to_string());
    format!(
        "{team}\tmax-sandboxes={}\tmax-vcpus={}\tmax-memory-mb={}\tmax-minutes-month={}",
        v(q.max_sandboxes),
        v(q.max_vcpus),
        v(q.max_memory_mib),
        v(q.max_minutes_month)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_numbers_or_default() {
        assert_eq!(limit("3"), Ok(Limit(Some(3))));
        assert_eq!(limit("0"), Ok(Limit(Some(0))));
        assert_eq!(limit("default"), Ok(Limit(None)));
        assert!(limit("-1").is_err());
        assert!(limit("lots").is_err());
        assert!(limit(&(MAX_LIMIT + 1).to_string()).is_err());
    }
}
