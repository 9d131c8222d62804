//! Sandbox traffic on the API's port: a request with `E2b-Sandbox-Id` (or a signed `/files` URL
//! with none) is forwarded to the guest port named by `E2b-Sandbox-Port` (49983 envd, 49999 the
//! code interpreter, any other port as is), bodies streamed both ways without buffering.
//! Unknown or dead sandboxes get the 502 JSON the SDKs recognise; envd's internal endpoints are
//! not reachable from outside.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ember_envd_proto::signature::{constant_eq, sign, FileOp};
use ember_envd_proto::ENVD_PORT;
use ember_runtime::AgentError;

use crate::manager::Manager;

pub const SANDBOX_ID: &str = "e2b-sandbox-id";
pub const SANDBOX_PORT: &str = "e2b-sandbox-port";
/// envd endpoints only the daemon may call.
const INTERNAL_PATHS: &[&str] = &["/init", "/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw"];
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"];

/// Sends sandbox traffic to the proxy and everything else on to the REST API.
pub async fn route(State(manager): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    let target = match req.headers().get(SANDBOX_ID) {
        Some(v) => Some(v.to_str().unwrap_or_default().to_string()),
        None => signed_files_target(&manager, &req),
    };
    match target {
        Some(id) => forward(&manager, &id, req).await,
        None => next.run(req).await,
    }
}

/// The sandbox a header-less signed `/files` URL is for: the one whose token signs it.
fn signed_files_target(manager: &Manager, req: &Request) -> Option<String> {
    if req.uri().path() != "/files" {
        return None;
    }
    let query: Vec<(String, String)> = serde_urlencoded::from_str(req.uri().query()?).ok()?;
    let get = |k: &str| query.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str());
    let signature = get("signature")?;
    let path = get("path").unwrap_or_default();
    let user = get("username").unwrap_or_default();
    let expiration = get("signature_expiration").and_then(|e| e.parse().ok());
    let op = if req.method() == axum::http::Method::POST { FileOp::Write } else { FileOp::Read };
    manager.all().into_iter().map(|l| l.record()).find_map(|r| {
        let token = r.access_token.as_deref()?;
        constant_eq(sign(path, op, user, token, expiration).as_bytes(), signature.as_bytes()).then_some(r.id)
    })
}

/// The proxy's own error answers, in the shape the SDKs match on.
fn bad_gateway(id: &str, message: &str) -> Response {
    let body = serde_json::json!({ "sandboxId": id, "message": message, "code": 502 });
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

async fn forward(manager: &Manager, id: &str, req: Request) -> Response {
    let Some(live) = manager.get_any(id) else {
        return bad_gateway(id, "The sandbox was not found");
    };
    if live.record().state == crate::manager::PAUSED {
        return bad_gateway(id, "The sandbox was not found: it is paused (connect to resume it)");
    }
    let port = match req.headers().get(SANDBOX_PORT).map(|v| v.to_str().unwrap_or_default().parse::<u16>()) {
        None => ENVD_PORT,
        Some(Ok(p)) if p > 0 => p,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(ember_api::Error { code: 400, message: "invalid E2b-Sandbox-Port".into() }),
            )
                .into_response()
        }
    };
    if port == ENVD_PORT && INTERNAL_PATHS.contains(&req.uri().path()) {
        let error = ember_api::Error { code: 403, message: format!("{} is internal to the sandbox", req.uri().path()) };
        return (StatusCode::FORBIDDEN, Json(error)).into_response();
    }
    let (mut parts, body) = req.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    parts.uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad path").into_response(),
    };
    if let Ok(host) = format!("{}:{port}", ember_net::GUEST_IP).parse() {
        parts.headers.insert(header::HOST, host);
    }
    let outgoing = axum::http::Request::from_parts(parts, body);
    match live.port(port).send(outgoing, Duration::from_secs(5)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for name in HOP_BY_HOP.iter().filter(|n| **n != "host") {
                parts.headers.remove(HeaderName::from_static(name));
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(AgentError::Connect(_)) => bad_gateway(id, "The sandbox is running but port is not open"),
        Err(e) => {
            tracing::warn!(sandbox = %id, port, error = %e, "proxying to a sandbox");
            if manager.get_any(id).is_none() {
                bad_gateway(id, "The sandbox was not found")
            } else {
                bad_gateway(id, "The sandbox did not answer")
            }
        }
    }
}
