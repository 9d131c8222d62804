//! envd's plain endpoints besides `/files`: `/health`, `/envs`, `/metrics` and `/init`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ember_envd_proto::init::InitRequest;
use ember_envd_proto::metrics::Metrics;
use ember_envd_proto::INITIALISED_HEADER;

use crate::auth::{header_matches, http_error};
use crate::ca;
use crate::connect::read_body;
use crate::state::Agent;

/// Largest `/init` body (1 MiB).
const MAX_INIT: usize = 1 << 20;
/// Longest access token accepted (it must fit in a header).
const MAX_TOKEN: usize = 4096;

/// `204`, with [`INITIALISED_HEADER`] telling whether the agent holds a token (a restarted agent
/// that lost its state holds none, and the host initialises it again).
pub async fn health(State(agent): State<Arc<Agent>>) -> Response {
    let initialised = if agent.initialised() { "true" } else { "false" };
    (StatusCode::NO_CONTENT, [(INITIALISED_HEADER, initialised)]).into_response()
}

pub async fn envs(State(agent): State<Arc<Agent>>) -> Json<BTreeMap<String, String>> {
    Json(agent.identity().env)
}

/// Whether an `/init` carries the token the agent holds (none is needed while it holds none).
fn init_allowed(agent: &Agent, headers: &HeaderMap) -> bool {
    agent.access_token().is_none_or(|token| header_matches(headers, &token))
}

/// Sets the sandbox's identity (saved, so a restarted server keeps it) and, in a guest, the
/// clock, the RNG, the hostname and the extra CA certificates ([`ca`]). An `/init` that leaves
/// the agent without a token succeeds, but the agent goes on refusing every call but `/health`
/// and `/init`.
pub async fn init(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Body) -> Response {
    // Checked before reading the body, and again under the lock (another /init may have set a
    // token meanwhile); the body is read outside the lock so a slow client holds nobody up.
    if !init_allowed(&agent, &headers) {
        return http_error(StatusCode::UNAUTHORIZED, "invalid access token");
    }
    let body = match read_body(body, MAX_INIT).await {
        Ok(b) => b,
        Err(e) => return http_error(StatusCode::PAYLOAD_TOO_LARGE, e.message),
    };
    let req: InitRequest = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
        Ok(r) => r,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("invalid /init body: {e}")),
    };
    // `None`: no caBundle; `Some(None)`: remove the certificates installed.
    let ca_bundle = match req.ca_bundle.as_deref().map(ca::Bundle::parse).transpose() {
        Ok(bundle) => bundle,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let _serial = agent.init_lock.lock().await;
    if !init_allowed(&agent, &headers) {
        return http_error(StatusCode::UNAUTHORIZED, "invalid access token");
    }
    if let Some(token) = &req.access_token {
        if token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return http_error(StatusCode::BAD_REQUEST, "accessToken must be at most 4096 printable ASCII characters");
        }
    }
    if let Some(user) = &req.default_user {
        if agent.users.lookup(user).is_err() {
            return http_error(StatusCode::BAD_REQUEST, format!("default user '{user}' does not exist"));
        }
    }
    if let (Some(ts), true) = (&req.timestamp, agent.config.guest) {
        match ember_envd_proto::time::parse_rfc3339(ts) {
            Some(t) => crate::time::set_clock(t),
            None => return http_error(StatusCode::BAD_REQUEST, format!("invalid timestamp '{ts}'")),
        }
    }
    if let Some(hex) = &req.entropy {
        match decode_hex(hex) {
            Some(bytes) if bytes.len() <= 512 => {
                if agent.config.guest {
                    crate::time::reseed(&bytes);
                }
            }
            _ => return http_error(StatusCode::BAD_REQUEST, "entropy must be at most 512 hex-encoded bytes"),
        }
    }
    if let Some(name) = &req.hostname {
        let valid =
            !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return http_error(StatusCode::BAD_REQUEST, "hostname must be 1-63 letters, digits or '-'");
        }
        if agent.config.guest {
            crate::time::set_hostname(name);
        }
    }
    let mut next = agent.identity();
    if let (Some(bundle), true) = (ca_bundle, agent.config.guest) {
        let installed = bundle.is_some();
        let pem = bundle.as_ref().map(|b| b.pem().to_string());
        let already = *agent.installed_ca.lock().unwrap_or_else(|e| e.into_inner()) == pem && pem.is_some();
        let paths = agent.config.ca_paths.clone();
        let result = match already {
            true => Ok(()),
            false => match tokio::task::spawn_blocking(move || ca::install(&paths, bundle.as_ref())).await {
                Ok(installing) => installing.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        *agent.installed_ca.lock().unwrap_or_else(|e| e.into_inner()) = if result.is_ok() { pem } else { None };
        if let Err(e) = result {
            tracing::error!(error = %e, "installing the CA bundle /init gave");
            return http_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot install the CA certificates");
        }
        if installed {
            next.agent_env.insert(ca::NODE_ENV.into(), agent.config.ca_paths.extra.display().to_string());
        } else {
            next.agent_env.remove(ca::NODE_ENV);
        }
    }
    if let Some(env) = req.env_vars {
        if let Some(dir) = &agent.config.run_info_dir {
            // As envd: a sandbox whose files cannot be written still starts; the error is logged.
            if let Err(e) = crate::runinfo::write(dir, &env) {
                tracing::error!(error = %e, dir = %dir.display(), "writing the files naming the sandbox");
            }
        }
        next.env = env;
    }
    // An empty token never clears the one held: that would lock the agent and open /init to
    // anyone.
    if let Some(token) = req.access_token.filter(|t| !t.is_empty()) {
        next.access_token = Some(token);
    }
    if let Some(user) = req.default_user {
        next.default_user = user;
    }
    if let Some(dir) = req.default_workdir {
        next.default_workdir = Some(PathBuf::from(dir)).filter(|d| d.is_absolute());
    }
    let locked = next.access_token.is_none();
    if let Err(e) = agent.set_identity(next).await {
        tracing::error!(error = %e, "saving the state /init set");
        return http_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot save the agent's state");
    }
    if locked {
        tracing::warn!("/init set no access token: every call but /health and /init is refused until one sets it");
    }
    StatusCode::NO_CONTENT.into_response()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub async fn metrics() -> Json<Metrics> {
    let first = cpu_times();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = cpu_times();
    let cpu_used_pct = match (first, second) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            ((busy1 - busy0) as f64 / (total1 - total0) as f64 * 10_000.0).round() / 100.0
        }
        _ => 0.0,
    };
    let mem = meminfo();
    let kib = |k: &str| mem.get(k).copied().unwrap_or(0) * 1024;
    let (total, available) = (kib("MemTotal"), kib("MemAvailable"));
    let used = total.saturating_sub(available);
    let (disk_total, disk_used) = disk("/");
    Json(Metrics {
        ts: ember_envd_proto::time::now_unix(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        cpu_used_pct,
        mem_total: total,
        mem_used: used,
        mem_cache: kib("Cached") + kib("Buffers"),
        mem_total_mib: total >> 20,
        mem_used_mib: used >> 20,
        disk_used,
        disk_total,
    })
}

/// Busy and total jiffies from the first line of `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// (total, used) bytes of the filesystem holding `path`.
fn disk(path: &str) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            let total = s.blocks() * frag;
            (total, total.saturating_sub(s.blocks_free() * frag))
        }
        Err(_) => (0, 0),
    }
}
