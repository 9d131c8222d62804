//! CORS for browser clients of the REST API and of sandbox traffic routed by header
//! (`E2B_SANDBOX_URL`), with envd's answers ([`ember_envd_proto::cors`]): a preflight carries no
//! routing headers, so the daemon answers it itself; other answers get the CORS headers unless
//! they carry their own (a guest's). Requests routed by `Host` to an exposed port are the
//! guest's server's business and are left alone.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_envd_proto::cors;

use crate::manager::Manager;
use crate::proxy::parse_host_route;

pub async fn cors(State(manager): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    let host_routed = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| parse_host_route(h, manager.domain()).is_some());
    if host_routed {
        return next.run(req).await;
    }
    if let Some(headers) = cors::preflight(req.method(), req.headers()) {
        return (StatusCode::NO_CONTENT, headers).into_response();
    }
    let mut resp = next.run(req).await;
    cors::add_to(resp.headers_mut());
    resp
}
