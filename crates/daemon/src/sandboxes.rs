//! The `sandboxes` resource: create (v1 and v2), get, list (v1 and v2, with metadata and state
//! filters and `X-Next-Token` pages), kill, time-out, refresh, connect (v1, v2, resume),
//! pause and fork. Metrics and logs are in [`crate::observe`].

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_api::{ConnectRequest, NewSandbox, SandboxDetail, TimeoutRequest};
use ember_store::{now_ms, SandboxRecord, SandboxState};
use serde::Deserialize;

use crate::auth::Team;
use crate::error::{parse_json, ApiError};
use crate::manager::{Live, Manager};

type Mgr = State<Arc<Manager>>;

/// The request body, or a JSON error when it is too large or unreadable.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(e.body_text()),
        _ => ApiError::BadRequest(e.body_text()),
    })
}

pub(crate) fn rfc3339(ms: i64) -> String {
    ember_envd_proto::time::rfc3339(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn sandbox_json(r: &SandboxRecord, domain: &str) -> ember_api::Sandbox {
    ember_api::Sandbox {
        template_id: r.template.clone(),
        sandbox_id: r.id.clone(),
        client_id: "ember".into(),
        envd_version: ember_envd_proto::ENVD_VERSION.into(),
        envd_access_token: r.access_token.clone(),
        traffic_access_token: r.traffic_token.clone(),
        domain: Some(domain.to_string()),
        alias: r.alias.clone(),
    }
}

fn detail_of(m: &Manager, r: &SandboxRecord, with_token: bool) -> SandboxDetail {
    let mode = (r.state == SandboxState::Paused).then(|| m.runtime().pause_mode(&r.id)).flatten();
    detail(r, with_token, m.domain(), mode.map(|p| p.as_str()))
}

/// `pause_mode`: what a paused sandbox kept (`full`, `filesystem`), from the runtime.
fn detail(r: &SandboxRecord, with_token: bool, domain: &str, pause_mode: Option<&str>) -> SandboxDetail {
    SandboxDetail {
        template_id: r.template.clone(),
        sandbox_id: r.id.clone(),
        client_id: "ember".into(),
        alias: r.alias.clone(),
        started_at: rfc3339(r.started_ms),
        end_at: rfc3339(r.end_ms),
        envd_version: ember_envd_proto::ENVD_VERSION.into(),
        cpu_count: r.vcpus,
        memory_mb: r.memory_mib,
        disk_size_mb: r.disk_mib,
        state: r.state.as_str().into(),
        metadata: r.metadata.clone(),
        domain: Some(domain.to_string()),
        envd_access_token: if with_token { r.access_token.clone() } else { None },
        allow_internet_access: Some(r.allow_internet),
        network: with_token.then(|| crate::network::stored(r).config),
        lifecycle: Some(ember_api::SandboxLifecycle {
            on_timeout: if r.lifecycle.auto_pause { "pause" } else { "kill" }.into(),
            auto_resume: r.lifecycle.auto_resume,
        }),
        pause_mode: pause_mode.map(str::to_string),
    }
}

pub async fn create(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: NewSandbox =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let net = crate::network::check_create(req.network.clone(), req.allow_internet_access)?;
    let live = m.create(&team.0, req, net).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&live.record(), m.domain()))).into_response())
}

pub async fn get(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    Ok(Json(detail_of(&m, &m.get(&team.0, &id)?.record(), true)))
}

pub async fn kill(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let live = m.get(&team.0, &id)?;
    m.kill(&live, "killed through the API").await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_timeout(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body_bytes(body)?;
    let live = m.get(&team.0, &id)?;
    let req: TimeoutRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    // 0 means "time out now", as on E2B: the reaper acts on it (kill, or pause) within a tick.
    let secs = if req.timeout == 0 { 0 } else { m.check_timeout(req.timeout)? };
    m.set_end(&live, now_ms() + secs * 1000, false)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The team's sandbox `id` and the time-out (seconds, checked) that an optional
/// `ConnectRequest` body asks for through `pick`, else the default.
fn sandbox_and_timeout(
    m: &Manager,
    team: &Team,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    pick: fn(&ConnectRequest) -> Option<i64>,
) -> Result<(Arc<Live>, i64), ApiError> {
    let body = body_bytes(body)?;
    let live = m.get(&team.0, id)?;
    let req: ConnectRequest = parse_json(&body, false)?;
    let secs = m.check_timeout(pick(&req).unwrap_or(m.default_timeout()))?;
    Ok((live, secs))
}

pub async fn refresh(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (live, secs) = sandbox_and_timeout(&m, &team, &id, body, |r| r.duration)?;
    m.set_end(&live, now_ms() + secs * 1000, true)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connect (v1 and v2): a running sandbox answers 200 and its end is extended, never
/// shortened; a paused one is resumed and answers 201.
pub async fn connect(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (live, secs) = sandbox_and_timeout(&m, &team, &id, body, |r| r.timeout)?;
    if m.resume(Arc::clone(&live), secs).await? {
        return Ok((StatusCode::CREATED, Json(sandbox_json(&live.record(), m.domain()))).into_response());
    }
    m.set_end(&live, now_ms() + secs * 1000, true)?;
    Ok((StatusCode::OK, Json(sandbox_json(&live.record(), m.domain()))).into_response())
}

/// The deprecated resume: 201 for a paused sandbox, 409 for a running one.
pub async fn resume(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (live, secs) = sandbox_and_timeout(&m, &team, &id, body, |r| r.timeout)?;
    match m.resume(Arc::clone(&live), secs).await? {
        true => Ok((StatusCode::CREATED, Json(sandbox_json(&live.record(), m.domain()))).into_response()),
        false => Err(ApiError::Conflict(format!("sandbox {id} is already running"))),
    }
}

/// Pause: 204, or 409 when it is paused already.
pub async fn pause(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body_bytes(body)?;
    let live = m.get(&team.0, &id)?;
    let req: ember_api::PauseRequest = parse_json(&body, false)?;
    m.pause(live, req.memory.unwrap_or(true)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fork: 201 with one entry per copy, a sandbox or the error that stopped it (E2B's shape).
pub async fn fork(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let live = m.get(&team.0, &id)?;
    let req: ember_api::ForkRequest = parse_json(&body, false)?;
    let count = usize::try_from(req.count.unwrap_or(1)).unwrap_or(0);
    let copies = m.fork(live, req.timeout, count).await?;
    let results: Vec<ember_api::ForkResult> = copies
        .into_iter()
        .map(|copy| match copy {
            Ok(live) => ember_api::ForkResult { sandbox: Some(sandbox_json(&live.record(), m.domain())), error: None },
            Err(e) => {
                let e = ApiError::from(e);
                let error = ember_api::Error { code: e.status().as_u16(), message: e.to_string() };
                ember_api::ForkResult { sandbox: None, error: Some(error) }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(results)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    /// `asc` or `desc` by start time (E2B's default: newest first).
    order: Option<String>,
    /// RFC 3339: started at or after / before.
    started_after: Option<String>,
    started_before: Option<String>,
    /// A template name, alias or id.
    template: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

fn parse_time(what: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let t = ember_envd_proto::time::parse_rfc3339(v)
        .ok_or_else(|| ApiError::BadRequest(format!("{what} is not an RFC 3339 time: '{v}'")))?;
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    Ok(Some(ms))
}

/// Whether `r` was made from the template the list filter names (its name, an alias of it,
/// or, for a built template, the name the create used).
fn made_from(r: &SandboxRecord, wanted: &str) -> bool {
    let canonical = |n: &str| ember_image::template::canonical(n).map(str::to_string).unwrap_or_else(|| n.to_string());
    r.template == wanted || r.alias.as_deref() == Some(wanted) || canonical(&r.template) == canonical(wanted)
}

fn filter(records: Vec<SandboxRecord>, q: &ListQuery) -> Result<Vec<SandboxRecord>, ApiError> {
    let wanted: Vec<(String, String)> = match &q.metadata {
        Some(m) => {
            serde_urlencoded::from_str(m).map_err(|e| ApiError::BadRequest(format!("invalid metadata filter: {e}")))?
        }
        None => Vec::new(),
    };
    let states: Option<Vec<&str>> = q.state.as_deref().map(|s| s.split(',').map(str::trim).collect());
    if let Some(bad) = states.iter().flatten().find(|s| !matches!(**s, "running" | "paused")) {
        return Err(ApiError::BadRequest(format!("unknown state '{bad}'")));
    }
    let after = parse_time("startedAfter", q.started_after.as_deref())?;
    let before = parse_time("startedBefore", q.started_before.as_deref())?;
    Ok(records
        .into_iter()
        .filter(|r| wanted.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
        .filter(|r| states.as_ref().is_none_or(|s| s.contains(&r.state.as_str())))
        .filter(|r| after.is_none_or(|t| r.started_ms >= t) && before.is_none_or(|t| r.started_ms <= t))
        .filter(|r| q.template.as_deref().is_none_or(|t| made_from(r, t)))
        .collect())
}

/// Whether the list is newest first (the default) or oldest first.
fn descending(q: &ListQuery) -> Result<bool, ApiError> {
    match q.order.as_deref() {
        None | Some("desc") => Ok(true),
        Some("asc") => Ok(false),
        Some(other) => Err(ApiError::BadRequest(format!("order must be asc or desc, got '{other}'"))),
    }
}

/// The team's sandboxes that `q` selects, in its order.
fn listed(m: &Manager, team: &Team, q: &ListQuery) -> Result<(Vec<SandboxRecord>, bool), ApiError> {
    let descending = descending(q)?;
    let mut records = filter(m.list(&team.0), q)?;
    if descending {
        records.reverse();
    }
    Ok((records, descending))
}

/// A sandbox's place in a list: its start time, then its id. Start times do not change on
/// pause or resume, so a page token stays good.
fn list_key(r: &SandboxRecord) -> String {
    format!("{:020}.{}", r.started_ms.max(0), r.id)
}

pub async fn list_v1(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (records, _) = listed(&m, &team, &q)?;
    Ok(Json(records.iter().map(|r| detail_of(&m, r, false)).collect::<Vec<_>>()).into_response())
}

/// `GET /v2/sandboxes`: pages keyed by start time and id, with `X-Total-Running` (the team's
/// running sandboxes).
pub async fn list_v2(
    State(m): Mgr,
    Extension(team): Extension<Team>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (records, descending) = listed(&m, &team, &q)?;
    let running = m.list(&team.0).iter().filter(|r| r.state == SandboxState::Running).count();
    let items = records.iter().map(|r| (list_key(r), detail_of(&m, r, false))).collect();
    let mut resp = crate::page::keyed(items, descending, q.limit, q.next_token.as_deref())?;
    resp.headers_mut().insert("x-total-running", axum::http::HeaderValue::from(running));
    Ok(resp)
}
