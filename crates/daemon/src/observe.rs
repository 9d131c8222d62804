//! What a sandbox's owner can observe: its metrics over time (`GET /sandboxes/{id}/metrics`,
//! and the latest of several in `GET /sandboxes/metrics`) and its logs (`GET
//! /sandboxes/{id}/logs`, `GET /v2/sandboxes/{id}/logs` with cursor, direction, level and
//! search). The logs merge the guest's serial console (kernel, init, and the agent's own lines
//! with their timestamps: process starts and exits among them) with the daemon's lifecycle
//! events for the sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use ember_api::LogLevel as Level;
use ember_api::{LogEntry, LogLine, SandboxLogs, SandboxMetric};
use serde::{Deserialize, Serialize};

use crate::auth::Team;
use crate::error::ApiError;
use crate::manager::observe::sample_now;
use crate::manager::{Live, Manager};
use crate::sandboxes::rfc3339;

type Mgr = State<Arc<Manager>>;
/// Most serial-console bytes read for the logs (the newest).
const MAX_LOG_BYTES: u64 = 1 << 20;
/// Most log entries one answer carries.
const MAX_LOG_LIMIT: usize = 1000;
/// Most sandboxes one `GET /sandboxes/metrics` names.
const MAX_METRICS_IDS: usize = 100;
/// Most bytes of a log search.
const MAX_SEARCH: usize = 256;

#[derive(Debug, Default, Deserialize)]
pub struct MetricsQuery {
    /// Unix seconds.
    start: Option<i64>,
    end: Option<i64>,
}

/// The sandbox's metrics from `start` to `end`, oldest first: a sample every few seconds while
/// it ran. A sandbox too new to have one is sampled now.
pub async fn metrics(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let live = m.get(&team.0, &id)?;
    let samples = live.observed.samples(q.start, q.end);
    if !samples.is_empty() || live.is_paused() || q.start.is_some() || q.end.is_some() {
        return Ok(Json(samples));
    }
    let metric = sample_now(&live).await.map_err(|e| {
        tracing::warn!(sandbox = %id, error = %e, "reading metrics");
        ApiError::Internal("the sandbox did not report metrics".into())
    })?;
    Ok(Json(vec![metric]))
}

#[derive(Debug, Default, Deserialize)]
pub struct ManyQuery {
    /// Comma-separated sandbox ids.
    sandbox_ids: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SandboxesWithMetrics {
    sandboxes: BTreeMap<String, SandboxMetric>,
}

/// The latest metrics of each of the team's sandboxes that `sandbox_ids` names (others are left
/// out, as are sandboxes with none yet that cannot be sampled now).
pub async fn metrics_many(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Query(q): Query<ManyQuery>,
) -> Result<Json<SandboxesWithMetrics>, ApiError> {
    let ids: std::collections::BTreeSet<&str> =
        q.sandbox_ids.as_deref().unwrap_or_default().split(',').filter(|s| !s.is_empty()).collect();
    if ids.len() > MAX_METRICS_IDS {
        return Err(ApiError::BadRequest(format!("at most {MAX_METRICS_IDS} sandbox ids")));
    }
    // Sandboxes without a sample yet are sampled now, all at once (each with its deadline).
    let lookups = ids.into_iter().filter_map(|id| m.get(&team.0, id).ok()).map(|live| async move {
        let latest = match live.observed.latest() {
            Some(metric) => Some(metric),
            None if !live.is_paused() => sample_now(&live).await.ok(),
            None => None,
        };
        latest.map(|metric| (live.id(), metric))
    });
    let sandboxes = futures_util::future::join_all(lookups).await.into_iter().flatten().collect();
    Ok(Json(SandboxesWithMetrics { sandboxes }))
}

/// A log line, read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ms: i64,
    level: Level,
    message: String,
    fields: BTreeMap<String, String>,
    /// The line as written (the v1 logs' `line`).
    raw: String,
}

/// Reads one console line: the agent's (`TIMESTAMP LEVEL target: message key=value ...`) with
/// its own time, level and fields; any other (kernel, init) as `info` at time `before` (the
/// line before it, or the sandbox's start).
fn parse_line(line: &str, before: i64) -> Entry {
    let line = line.trim();
    let plain = |message: &str| Entry {
        ms: before,
        level: Level::Info,
        message: message.to_string(),
        fields: BTreeMap::new(),
        raw: line.to_string(),
    };
    let Some((stamp, rest)) = line.split_once(' ') else { return plain(line) };
    let Some(time) = ember_envd_proto::time::parse_rfc3339(stamp) else { return plain(line) };
    let rest = rest.trim_start();
    let Some((level, rest)) = rest.split_once(' ').and_then(|(w, r)| Some((Level::from_tracing(w)?, r))) else {
        return plain(line);
    };
    let rest = rest.trim_start();
    let rest = match rest.split_once(": ") {
        Some((target, message)) if !target.contains(' ') => message,
        _ => rest,
    };
    let mut words: Vec<&str> = rest.split(' ').collect();
    let mut fields = BTreeMap::new();
    while words.len() > 1 {
        let Some((k, v)) = words[words.len() - 1].split_once('=') else { break };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            break;
        }
        fields.insert(k.to_string(), v.trim_matches('"').to_string());
        words.pop();
    }
    let ms =
        time.duration_since(std::time::UNIX_EPOCH).map_or(before, |d| i64::try_from(d.as_millis()).unwrap_or(before));
    Entry { ms, level, message: words.join(" "), fields, raw: line.to_string() }
}

/// The sandbox's log: its console lines and the daemon's events for it, oldest first.
fn entries(live: &Live) -> Vec<Entry> {
    let started = live.record().started_ms;
    let text = ember_runtime::sandbox::console_tail(&live.dir, MAX_LOG_BYTES);
    let mut before = started;
    let mut all: Vec<Entry> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut entry = parse_line(line, before);
        before = entry.ms;
        // The guest writes these lines: they say so, whatever they claim.
        entry.fields.insert("source".into(), "guest".into());
        all.push(entry);
    }
    all.extend(live.observed.events().into_iter().map(|e| Entry {
        ms: e.ms,
        level: if e.level == "warn" { Level::Warn } else { Level::Info },
        raw: format!("ember: {}", e.message),
        message: e.message,
        fields: BTreeMap::from([("source".to_string(), "ember".to_string())]),
    }));
    all.sort_by_key(|e| e.ms);
    all
}

fn log_entry(e: &Entry) -> LogEntry {
    LogEntry {
        timestamp: rfc3339(e.ms),
        message: e.message.clone(),
        level: e.level.as_str().into(),
        fields: e.fields.clone(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    /// Unix ms: entries from then on.
    start: Option<i64>,
    limit: Option<usize>,
}

/// `GET /sandboxes/{id}/logs` (the CLI's): the newest `limit` entries from `start` on.
pub async fn logs(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<SandboxLogs>, ApiError> {
    let live = m.get(&team.0, &id)?;
    let limit = q.limit.unwrap_or(MAX_LOG_LIMIT).min(MAX_LOG_LIMIT);
    let all: Vec<Entry> = entries(&live).into_iter().filter(|e| q.start.is_none_or(|s| e.ms >= s)).collect();
    let newest = &all[all.len().saturating_sub(limit)..];
    Ok(Json(SandboxLogs {
        logs: newest.iter().map(|e| LogLine { timestamp: rfc3339(e.ms), line: e.raw.clone() }).collect(),
        log_entries: newest.iter().map(log_entry).collect(),
    }))
}

#[derive(Debug, Default, Deserialize)]
pub struct LogQueryV2 {
    /// Unix ms: where to start (inclusive).
    cursor: Option<i64>,
    limit: Option<usize>,
    /// `forward` (oldest first, from the cursor on; the default) or `backward` (newest first, up
    /// to the cursor).
    direction: Option<String>,
    /// The least severe level wanted.
    level: Option<Level>,
    /// Entries whose message contains this (case does not matter).
    search: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SandboxLogsV2 {
    logs: Vec<LogEntry>,
}

/// `GET /v2/sandboxes/{id}/logs`.
pub async fn logs_v2(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    Query(q): Query<LogQueryV2>,
) -> Result<Json<SandboxLogsV2>, ApiError> {
    let live = m.get(&team.0, &id)?;
    let limit = q.limit.unwrap_or(MAX_LOG_LIMIT);
    if !(1..=MAX_LOG_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LOG_LIMIT}")));
    }
    let backward = match q.direction.as_deref() {
        None | Some("forward") => false,
        Some("backward") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!("direction must be forward or backward, got '{other}'")))
        }
    };
    if q.search.as_ref().is_some_and(|s| s.len() > MAX_SEARCH) {
        return Err(ApiError::BadRequest(format!("search is at most {MAX_SEARCH} bytes")));
    }
    let search = q.search.as_deref().map(str::to_lowercase);
    let wanted = |e: &Entry| {
        q.level.is_none_or(|l| e.level >= l)
            && search.as_deref().is_none_or(|s| e.message.to_lowercase().contains(s))
            && q.cursor.is_none_or(|c| if backward { e.ms <= c } else { e.ms >= c })
    };
    let mut selected: Vec<Entry> = entries(&live).into_iter().filter(wanted).collect();
    if backward {
        selected.reverse();
    }
    selected.truncate(limit);
    Ok(Json(SandboxLogsV2 { logs: selected.iter().map(log_entry).collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_lines_keep_their_time_level_and_fields_and_others_take_the_time_before() {
        let e =
            parse_line("2026-11-23T01:02:03.500000Z  INFO ember_agent::process: process started pid=42 cmd=bash", 7);
        assert_eq!(e.ms, 1_795_395_723_500);
        assert_eq!((e.level, e.message.as_str()), (Level::Info, "process started"));
        assert_eq!(e.fields, BTreeMap::from([("pid".into(), "42".into()), ("cmd".into(), "bash".into())]));
        let w = parse_line("2026-11-23T01:02:03Z WARN x: disk almost full", 7);
        assert_eq!((w.level, w.message.as_str()), (Level::Warn, "disk almost full"));
        for other in ["[    1.234567] EXT4-fs (vda): mounted", "ember-init: starting", "2026-13-99 nonsense", "x=1"] {
            let e = parse_line(other, 7);
            assert_eq!((e.ms, e.level, e.message.as_str()), (7, Level::Info, other.trim()), "{other}");
        }
        assert!(Level::Error > Level::Warn && Level::Warn > Level::Info && Level::Info > Level::Debug);
    }
}
