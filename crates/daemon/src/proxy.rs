//! Sandbox traffic on the API's port: a request whose `Host` is `{port}-{sandboxID}.{domain}`
//! (E2B's exposed ports, `sandbox.get_host(port)`), or that has `E2b-Sandbox-Id` (or is a signed
//! `/files` URL with none), is forwarded to that guest port (the one `E2b-Sandbox-Port` names;
//! 49983 envd, 49999 the code interpreter, any other port as is), bodies streamed both ways
//! without buffering, WebSocket and other upgrades spliced. Hop-by-hop headers, the client's
//! daemon credentials (`X-API-Key`, cookies, the traffic token) and the routing headers are not
//! passed to the guest. A sandbox made with `allowPublicTraffic: false` wants its traffic token
//! (`e2b-traffic-access-token`) on every port but envd's (which has its own). Unknown or dead
//! sandboxes get the 502 JSON the SDKs recognise; envd's internal endpoints are not reachable
//! from outside.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ember_envd_proto::signature::{constant_eq, sign, FileOp};
use ember_envd_proto::ENVD_PORT;
use ember_runtime::AgentError;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::manager::Manager;

pub const SANDBOX_ID: &str = "e2b-sandbox-id";
pub const SANDBOX_PORT: &str = "e2b-sandbox-port";
/// Header carrying the traffic access token of a sandbox whose public traffic is off.
pub const TRAFFIC_TOKEN: &str = "e2b-traffic-access-token";
/// envd endpoints only the daemon may call.
const INTERNAL_PATHS: &[&str] = &["/init", "/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw"];
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"];
/// Request headers that are the client's credentials for the daemon or routing for the proxy,
/// never passed to the untrusted guest. `X-Access-Token` and `Authorization` (Basic auth names
/// the user) are envd's own and pass through.
const NOT_FORWARDED: &[&str] = &["x-api-key", "cookie", "proxy-authorization", SANDBOX_ID, SANDBOX_PORT, TRAFFIC_TOKEN];

/// The sandbox and port a `Host` of the form `{port}-{sandboxID}.{domain}` names. The host may
/// carry a port when `domain` has none (a proxy in front of the daemon); case does not matter.
pub fn parse_host_route(host: &str, domain: &str) -> Option<(u16, String)> {
    let host = host.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    let host = match (domain.contains(':'), host.rsplit_once(':')) {
        (false, Some((name, port))) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    let label = host.strip_suffix(domain.as_str())?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    let port = parse_port(Some(port.as_bytes())).ok()?;
    let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    id_ok.then(|| (port, id.to_string()))
}

/// `E2b-Sandbox-Port` is not a port number from 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid E2b-Sandbox-Port")]
pub struct InvalidPort;

/// The guest port named by `E2b-Sandbox-Port` (envd's without the header): decimal digits only,
/// 1 to 65535.
pub fn parse_port(header: Option<&[u8]>) -> Result<u16, InvalidPort> {
    let Some(digits) = header else {
        return Ok(ENVD_PORT);
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(InvalidPort);
    }
    match std::str::from_utf8(digits).map(str::parse::<u16>) {
        Ok(Ok(port)) if port > 0 => Ok(port),
        _ => Err(InvalidPort),
    }
}

/// The query of a signed `/files` URL, read as envd reads it (one of each key at most).
#[derive(Debug, Clone, Deserialize)]
struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<String>,
}

/// What a `/files` URL's v1 signature covers, and the signature.
#[derive(Debug, Clone)]
pub struct SignedQuery {
    pub path: String,
    pub op: FileOp,
    pub user: String,
    pub expiration: Option<i64>,
    pub signature: String,
}

impl SignedQuery {
    /// Whether `token` produces this URL's signature.
    pub fn matches(&self, token: &str) -> bool {
        let expected = sign(&self.path, self.op, &self.user, token, self.expiration);
        constant_eq(expected.as_bytes(), self.signature.as_bytes())
    }
}

/// The signed part of a request to `path` with `query`: `None` unless the path is `/files` and
/// the query has a signature and is one envd would read (no repeated keys, a numeric expiration).
pub fn parse_signed_query(method_is_post: bool, path: &str, query: &str) -> Option<SignedQuery> {
    if path != "/files" {
        return None;
    }
    let q: FilesQuery = serde_urlencoded::from_str(query).ok()?;
    let expiration = match q.signature_expiration {
        Some(e) => Some(e.parse::<i64>().ok()?),
        None => None,
    };
    Some(SignedQuery {
        path: q.path.unwrap_or_default(),
        op: if method_is_post { FileOp::Write } else { FileOp::Read },
        user: q.username.unwrap_or_default(),
        expiration,
        signature: q.signature?,
    })
}

/// Removes hop-by-hop headers and the client's credentials and routing headers from a request
/// about to be forwarded to a guest.
pub fn strip_request_headers(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP.iter().chain(NOT_FORWARDED) {
        headers.remove(*name);
    }
}

/// Sends sandbox traffic to the proxy and everything else on to the REST API.
pub async fn route(State(manager): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some((port, id)) = host.and_then(|h| parse_host_route(h, manager.domain())) {
        return forward(&manager, &id, Target::Host(port), req).await;
    }
    let target = match req.headers().get(SANDBOX_ID) {
        Some(v) => Some(v.to_str().unwrap_or_default().to_string()),
        None => signed_files_target(&manager, &req),
    };
    match target {
        Some(id) => forward(&manager, &id, Target::Header, req).await,
        None => next.run(req).await,
    }
}

/// How a request named its guest port.
#[derive(Clone, Copy)]
enum Target {
    /// `E2b-Sandbox-Port` (envd's without it); the guest sees `Host: GUEST_IP:port`.
    Header,
    /// The `Host` (`{port}-{id}.{domain}`), which the guest sees as sent (or masked).
    Host(u16),
}

/// Whether the request asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// A 403 in the API's error shape.
fn forbidden(message: String) -> Response {
    (StatusCode::FORBIDDEN, Json(ember_api::Error { code: 403, message })).into_response()
}

/// The sandbox a header-less signed `/files` URL is for: the one whose token signs it.
fn signed_files_target(manager: &Manager, req: &Request) -> Option<String> {
    let signed = parse_signed_query(req.method() == axum::http::Method::POST, req.uri().path(), req.uri().query()?)?;
    manager
        .all()
        .into_iter()
        .map(|l| l.record())
        .find_map(|r| signed.matches(r.access_token.as_deref()?).then_some(r.id))
}

/// The proxy's own error answers, in the shape the SDKs match on.
fn bad_gateway(id: &str, message: &str) -> Response {
    let body = ember_api::ProxyError { sandbox_id: id.into(), message: message.into(), code: 502 };
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

async fn forward(manager: &Arc<Manager>, id: &str, target: Target, mut req: Request) -> Response {
    let Some(live) = manager.get_any(id) else {
        return bad_gateway(id, "The sandbox was not found");
    };
    let port = match target {
        Target::Host(port) => port,
        Target::Header => match parse_port(req.headers().get(SANDBOX_PORT).map(|v| v.as_bytes())) {
            Ok(p) => p,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, Json(ember_api::Error { code: 400, message: e.to_string() }))
                    .into_response()
            }
        },
    };
    if port == ENVD_PORT && INTERNAL_PATHS.contains(&req.uri().path()) {
        return forbidden(format!("{} is internal to the sandbox", req.uri().path()));
    }
    let record = live.record();
    if let (Some(token), true) = (&record.traffic_token, port != ENVD_PORT) {
        let given = req.headers().get(TRAFFIC_TOKEN).map(|v| v.as_bytes()).unwrap_or_default();
        if !constant_eq(given, token.as_bytes()) {
            return forbidden(format!(
                "sandbox {id} does not allow public traffic: send its traffic access token in {TRAFFIC_TOKEN}"
            ));
        }
    }
    if live.is_paused() {
        // Only a filesystem-only pause refuses: a resume in flight has taken the marker away
        // already, and `resume` waits for it and answers at once.
        let fs_only = manager.runtime().pause_mode(id) == Some(ember_runtime::snapshot::PauseMode::Filesystem);
        if !(record.lifecycle.auto_resume && !fs_only && may_wake(&req, port, &record)) {
            return bad_gateway(id, "The sandbox was not found: it is paused (connect to resume it)");
        }
        let timeout = record.lifecycle.timeout_secs.max(1);
        if let Err(e) = manager.resume(Arc::clone(&live), timeout).await {
            tracing::warn!(sandbox = %id, error = %e, "resuming a sandbox on traffic");
            return bad_gateway(id, "The sandbox was not found: it is paused and could not be resumed");
        }
        tracing::info!(sandbox = %id, port, "resumed by traffic (auto-resume)");
    }
    let upgrade = wants_upgrade(req.headers())
        .then(|| (hyper::upgrade::on(&mut req), req.headers().get(header::UPGRADE).cloned()));
    let original_host = req.headers().get(header::HOST).cloned();
    let (mut parts, body) = req.into_parts();
    strip_request_headers(&mut parts.headers);
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    parts.uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad path").into_response(),
    };
    let mask = match target {
        Target::Host(_) => crate::network::request_host_mask(&record),
        Target::Header => None,
    };
    let host = match (target, mask, original_host) {
        (Target::Host(_), Some(mask), _) => mask.replace("${PORT}", &port.to_string()).parse().ok(),
        (Target::Host(_), None, Some(original)) => Some(original),
        _ => format!("{}:{port}", ember_net::GUEST_IP).parse().ok(),
    };
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    let client_upgrade = match upgrade {
        Some((on_upgrade, Some(protocol))) => {
            parts.headers.insert(header::CONNECTION, axum::http::HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
            Some(on_upgrade)
        }
        _ => None,
    };
    let outgoing = axum::http::Request::from_parts(parts, body);
    // Watched from before the request goes, so a pause or kill while it is in flight counts.
    let gone = live.until_vm_gone();
    match live.port(port).send(outgoing, Duration::from_secs(5)).await {
        Ok(mut resp) => {
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if let (true, Some(client)) = (switching, client_upgrade) {
                let guest = hyper::upgrade::on(&mut resp);
                let sandbox = id.to_string();
                let gone = live.until_vm_gone();
                tokio::spawn(async move {
                    let (Ok(client), Ok(guest)) = tokio::join!(client, guest) else { return };
                    let (mut client, mut guest) = (TokioIo::new(client), TokioIo::new(guest));
                    tokio::select! {
                        result = tokio::io::copy_bidirectional(&mut client, &mut guest) => if let Err(e) = result {
                            tracing::debug!(sandbox, port, error = %e, "upgraded connection closed");
                        },
                        () = gone => tracing::debug!(sandbox, port, "upgraded connection cut: the sandbox's VM went away"),
                    }
                });
            }
            let (mut parts, body) = resp.into_parts();
            for name in HOP_BY_HOP.iter().filter(|n| **n != "host") {
                if switching && matches!(*name, "connection" | "upgrade") {
                    continue;
                }
                parts.headers.remove(HeaderName::from_static(name));
            }
            Response::from_parts(parts, Body::new(UntilGone::new(body, gone)))
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

/// Whether a request may wake a paused sandbox whose lifecycle allows it: to envd, only one
/// that carries the sandbox's access token (or a `/files` URL it signs), so that knowing an id
/// is not enough to resume a sandbox; to another port, any request that passed the traffic
/// token check (exposed ports are public unless the sandbox says otherwise).
fn may_wake(req: &Request, port: u16, record: &ember_store::SandboxRecord) -> bool {
    if port != ENVD_PORT {
        return true;
    }
    let Some(token) = record.access_token.as_deref() else { return true };
    let given = req.headers().get("x-access-token").map(|v| v.as_bytes()).unwrap_or_default();
    if constant_eq(given, token.as_bytes()) {
        return true;
    }
    let signed = req
        .uri()
        .query()
        .and_then(|q| parse_signed_query(req.method() == axum::http::Method::POST, req.uri().path(), q));
    let now = ember_envd_proto::time::now_unix();
    signed.is_some_and(|s| s.matches(token) && s.expiration.is_none_or(|e| e >= now))
}

/// A response body from a guest that ends with an error when the VM it came from goes away
/// (paused or ended), so that a client streaming from it (a command's output, a watch) learns
/// at once instead of waiting on a guest that will never answer; the SDKs then probe the
/// sandbox and report it killed.
struct UntilGone<B> {
    inner: B,
    gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    done: bool,
}

impl<B> UntilGone<B> {
    fn new(inner: B, gone: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self { inner, gone: Box::pin(gone), done: false }
    }
}

impl<B> hyper::body::Body for UntilGone<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        if self.gone.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err("the sandbox's VM went away (paused or ended)".into())));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_and_routing_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("X-API-Key", "e2b_secret"),
            ("Cookie", "session=1"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("E2b-Sandbox-Id", "abc"),
            ("E2b-Sandbox-Port", "49983"),
            ("E2b-Traffic-Access-Token", "traffic"),
            ("Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Host", "127.0.0.1:3000"),
            ("X-Access-Token", "envd-token"),
            ("Authorization", "Basic dXNlcjo="),
            ("Content-Type", "application/connect+json"),
            ("Keepalive-Ping-Interval", "50"),
        ] {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static(value));
        }
        headers.append("cookie", HeaderValue::from_static("second=2"));
        strip_request_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type", "keepalive-ping-interval", "x-access-token"]);
        assert_eq!(headers["authorization"], "Basic dXNlcjo=");
        assert_eq!(headers["x-access-token"], "envd-token");
    }

    #[test]
    fn exposed_port_hosts_name_a_port_and_a_sandbox() {
        let d = "127.0.0.1:3000";
        assert_eq!(parse_host_route("8000-abc123.127.0.0.1:3000", d), Some((8000, "abc123".into())));
        assert_eq!(parse_host_route("49983-ABC.sandboxes.test", "sandboxes.test"), Some((49983, "abc".into())));
        assert_eq!(parse_host_route("80-abc.sandboxes.test:8443", "sandboxes.test"), Some((80, "abc".into())));
        for bad in [
            "127.0.0.1:3000",
            "abc.127.0.0.1:3000",
            "0-abc.127.0.0.1:3000",
            "70000-abc.127.0.0.1:3000",
            "80-.127.0.0.1:3000",
            "80-a_b.127.0.0.1:3000",
            "80-abc.127.0.0.1:3001",
            "80-abcx127.0.0.1:3000",
            "80-abc.evil.127.0.0.1:3000x",
        ] {
            assert_eq!(parse_host_route(bad, d), None, "{bad}");
        }
        assert_eq!(parse_host_route("80-a.b.sandboxes.test", "sandboxes.test"), None, "an id has no dots");
    }

    #[test]
    fn upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn ports_are_decimal_and_nonzero() {
        assert_eq!(parse_port(None), Ok(ENVD_PORT));
        assert_eq!(parse_port(Some(b"49999")), Ok(49999));
        assert_eq!(parse_port(Some(b"0080")), Ok(80));
        for bad in [&b""[..], b"0", b"65536", b"+80", b"-1", b" 80", b"80 ", b"8o", b"\xff"] {
            assert_eq!(parse_port(Some(bad)), Err(InvalidPort), "{bad:?}");
        }
    }

    #[test]
    fn signed_queries_are_read_as_envd_reads_them() {
        let sig = sign("/a", FileOp::Read, "user", "tok", Some(99));
        let query = format!("path=%2Fa&username=user&signature_expiration=99&signature={sig}");
        let signed = parse_signed_query(false, "/files", &query).unwrap();
        assert!(signed.matches("tok"));
        assert!(!signed.matches("other"));
        assert!(!parse_signed_query(true, "/files", &query).unwrap().matches("tok"));
        assert!(parse_signed_query(false, "/filesx", &query).is_none());
        assert!(parse_signed_query(false, "/files", "path=%2Fa").is_none());
        // envd refuses a repeated key and a non-numeric expiration, so neither is routed.
        assert!(parse_signed_query(false, "/files", &format!("{query}&signature=x")).is_none());
        assert!(parse_signed_query(false, "/files", &format!("{query}&path=%2Fb")).is_none());
        let unsigned_exp =
            format!("path=%2Fa&signature_expiration=soon&signature={}", sign("/a", FileOp::Read, "", "tok", None));
        assert!(parse_signed_query(false, "/files", &unsigned_exp).is_none());
    }
}
