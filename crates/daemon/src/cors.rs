//! CORS for browser clients of the REST API and of sandbox traffic routed by header
//! (`E2B_SANDBOX_URL`): a preflight carries no routing headers, so the daemon answers it itself;
//! other answers get `Access-Control-Allow-Origin: *` unless they carry their own. Requests
//! routed by `Host` to an exposed port are the guest's server's business and are left alone.
//! Credentials are headers (`X-API-Key`, `X-Access-Token`), never cookies, so `*` gives a page
//! nothing it could not do without a browser.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::manager::Manager;
use crate::proxy::parse_host_route;

/// Methods the API and envd use.
const METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// Headers a browser client sends when a preflight names none we can echo.
const HEADERS: &str = "Content-Type, Authorization, X-API-Key, X-Access-Token, E2b-Sandbox-Id, E2b-Sandbox-Port, \
                       E2b-Traffic-Access-Token, Connect-Protocol-Version, Connect-Timeout-Ms, Keepalive-Ping-Interval";
/// How long a browser may cache a preflight, in seconds.
const MAX_AGE: &str = "86400";

pub async fn cors(State(manager): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    let host_routed = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| parse_host_route(h, manager.domain()).is_some());
    if host_routed {
        return next.run(req).await;
    }
    if is_preflight(req.method(), req.headers()) {
        return preflight(req.headers());
    }
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("*"));
    }
    resp
}

fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// 204 with what the browser asked for: its requested headers echoed (bounded), else ours.
fn preflight(request: &HeaderMap) -> Response {
    let asked = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= 4096 && v.to_str().is_ok())
        .cloned()
        .unwrap_or(HeaderValue::from_static(HEADERS));
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(METHODS));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflights_echo_the_asked_headers_and_only_preflights_are_answered() {
        let mut h = HeaderMap::new();
        assert!(!is_preflight(&Method::OPTIONS, &h), "an OPTIONS without Access-Control-Request-Method");
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        assert!(is_preflight(&Method::OPTIONS, &h));
        assert!(!is_preflight(&Method::POST, &h));
        let r = preflight(&h);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], HEADERS);
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("x-access-token, e2b-sandbox-id"));
        let r = preflight(&h);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-access-token, e2b-sandbox-id");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
