//! `ember usage [--team T] [--since WHEN] [--json]`: metered usage from the daemon's database,
//! per team and per sandbox: running and paused seconds, vCPU-seconds and GiB-seconds (both
//! while running). Sandboxes still running or paused count up to now.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use ember_store::Usage;
use serde_json::json;

use crate::apikey::{check_team, open};

#[derive(Args)]
pub struct UsageArgs {
    /// Only this team.
    #[arg(long)]
    team: Option<String>,
    /// From when: RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01, UTC); default: the
    /// start of this month (UTC).
    #[arg(long)]
    since: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// `--since` in Unix ms.
fn since_ms(s: &str) -> anyhow::Result<i64> {
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_string() };
    let t = ember_envd_proto::time::parse_rfc3339(&full).ok_or_else(|| {
        anyhow::anyhow!("--since: expected RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01), got '{s}'")
    })?;
    Ok(i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339(ms: i64) -> String {
    ember_envd_proto::time::rfc3339(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The JSON of one sandbox's or team's amounts.
fn amounts(u: &Usage) -> serde_json::Value {
    json!({
        "running_seconds": secs(u.running_ms),
        "paused_seconds": secs(u.paused_ms),
        "vcpu_seconds": secs(u.vcpu_ms),
        "gib_seconds": secs(u.mib_ms) / 1024.0,
    })
}

pub fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    if let Some(team) = &args.team {
        check_team(team)?;
    }
    let now = ember_store::now_ms();
    let since = match &args.since {
        Some(s) => since_ms(s)?,
        None => ember_store::month_start_ms(now),
    };
    if since > now {
        anyhow::bail!("--since is in the future");
    }
    let rows = open(args.data_dir)?.usage(args.team.as_deref(), since, now)?;
    // Rows come ordered by team: group them.
    let mut teams: Vec<(Usage, Vec<Usage>)> = Vec::new();
    for row in rows {
        match teams.last_mut() {
            Some((total, list)) if total.team == row.team => {
                total.add(&row);
                list.push(row);
            }
            _ => {
                let total = Usage { team: row.team.clone(), ..row.clone() };
                teams.push((total, vec![row]));
            }
        }
    }
    if args.json {
        let teams: Vec<_> = teams
            .iter()
            .map(|(total, list)| {
                let mut t = amounts(total);
                t["team"] = json!(total.team);
                t["sandboxes"] = list
                    .iter()
                    .map(|u| {
                        let mut s = amounts(u);
                        s["sandbox_id"] = json!(u.sandbox_id);
                        s["first_recorded"] = json!(rfc3339(u.first_ms));
                        s["ended"] = json!(u.last_end_ms.map(rfc3339));
                        s
                    })
                    .collect();
                t
            })
            .collect();
        let out = json!({ "since": rfc3339(since), "until": rfc3339(now), "teams": teams });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("usage from {} to {}", rfc3339(since), rfc3339(now));
    println!("{:<40} {:>12} {:>12} {:>12} {:>12}", "team / sandbox", "running s", "paused s", "vCPU-s", "GiB-s");
    let row = |name: &str, u: &Usage| {
        format!(
            "{name:<40} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
            secs(u.running_ms),
            secs(u.paused_ms),
            secs(u.vcpu_ms),
            secs(u.mib_ms) / 1024.0
        )
    };
    for (total, list) in &teams {
        println!("{}", row(&total.team, total));
        for u in list {
            let ended = if u.last_end_ms.is_some() { " (ended)" } else { "" };
            println!("{}", row(&format!("  {}{ended}", u.sandbox_id), u));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_and_rfc3339() {
        assert_eq!(since_ms("2026-03-01").unwrap(), 1_772_323_200_000);
        assert_eq!(since_ms("2026-03-01T00:00:01Z").unwrap(), 1_772_323_201_000);
        assert!(since_ms("yesterday").is_err());
        assert!(since_ms("2026-13-01").is_err());
    }
}
