//! Who a request is and whether it may proceed: the `X-Access-Token` check (with the paths
//! envd exempts), the Linux user named by Basic auth or `username`, and v1 signed file URLs.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ember_envd_proto::{Code, ConnectError};
use std::sync::Arc;

use ember_envd_proto::signature::{constant_eq, sign, FileOp};

use crate::state::Agent;
use crate::users::{user_from_basic_auth, User};

pub const TOKEN_HEADER: &str = "x-access-token";

/// An HTTP error answer of the plain endpoints: `{code, message}` with the status as `code`.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    HttpError(status, message.into()).into_response()
}

/// An error of the plain endpoints, turned into its answer at the edge.
#[derive(Debug)]
pub struct HttpError(pub StatusCode, pub String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.0.as_u16(), "message": self.1 });
        (self.0, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

/// envd's answer to a call without the right token.
const UNAUTHORIZED: &str = "unauthorized access, please provide a valid access token or method signing if supported";

/// Rejects requests without the access token. `GET /health` and `POST /init` (which checks the
/// token itself) always pass; `/files` passes to its own check (the token, or a URL signed with
/// it) once the agent holds a token. An agent that holds none refuses everything else: it has
/// not been initialised, or restarted without its state, and fails closed.
pub async fn require_token(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let always =
        (req.method() == Method::GET && path == "/health") || (req.method() == Method::POST && path == "/init");
    if always {
        return next.run(req).await;
    }
    let allowed = match agent.access_token() {
        None => false,
        Some(_) if path == "/files" => true,
        Some(token) => header_matches(req.headers(), &token),
    };
    if allowed {
        return next.run(req).await;
    }
    let rpc = path.starts_with("/process.") || path.starts_with("/filesystem.");
    let (parts, body) = req.into_parts();
    drain(body).await;
    if rpc {
        return crate::connect::error_for(&parts.headers, ConnectError::new(Code::Unauthenticated, UNAUTHORIZED));
    }
    http_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED)
}

/// How much of a refused request's body is read before answering, and for how long.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads (a bounded part of) a refused request's body, so that a client still sending it (a
/// streaming RPC) reads the refusal instead of failing with a broken pipe when the connection
/// closes under its write.
async fn drain(body: axum::body::Body) {
    let _ = tokio::time::timeout(DRAIN_DEADLINE, axum::body::to_bytes(body, DRAIN_LIMIT)).await;
}

/// Whether the request carries `token` in `X-Access-Token` (compared in constant time).
pub fn header_matches(headers: &HeaderMap, token: &str) -> bool {
    headers.get(TOKEN_HEADER).is_some_and(|v| constant_eq(v.as_bytes(), token.as_bytes()))
}

/// The user an RPC runs as: `Authorization: Basic`, else the default user.
pub fn rpc_user(agent: &Agent, headers: &HeaderMap) -> Result<User, ConnectError> {
    let name = match headers.get(header::AUTHORIZATION) {
        Some(v) => user_from_basic_auth(v.to_str().unwrap_or_default())
            .map_err(|e| ConnectError::new(Code::Unauthenticated, e.to_string()))?,
        None => agent.identity().default_user,
    };
    agent.users.lookup(&name).map_err(|e| ConnectError::new(Code::Unauthenticated, e.to_string()))
}

/// Checks a `/files` request: the header token, or else a valid, unexpired signature. Without
/// a token to check against, nothing is allowed.
pub fn check_file_access(
    agent: &Agent,
    headers: &HeaderMap,
    query: &crate::files::FileQuery,
    op: FileOp,
) -> Result<(), HttpError> {
    let Some(token) = agent.access_token() else {
        return Err(HttpError(StatusCode::UNAUTHORIZED, UNAUTHORIZED.into()));
    };
    if headers.get(TOKEN_HEADER).is_some() {
        return if header_matches(headers, &token) {
            Ok(())
        } else {
            Err(HttpError(StatusCode::UNAUTHORIZED, "invalid access token".into()))
        };
    }
    let Some(signature) = &query.signature else {
        return Err(HttpError(StatusCode::UNAUTHORIZED, "missing signature query parameter".into()));
    };
    let expiration = match &query.signature_expiration {
        Some(s) => Some(
            s.parse::<i64>().map_err(|_| HttpError(StatusCode::BAD_REQUEST, "invalid signature_expiration".into()))?,
        ),
        None => None,
    };
    let path = query.path.as_deref().unwrap_or_default();
    let user = query.username.as_deref().unwrap_or_default();
    let expected = sign(path, op, user, &token, expiration);
    if !constant_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(HttpError(StatusCode::UNAUTHORIZED, "invalid signature".into()));
    }
    if let Some(exp) = expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        if exp < now {
            return Err(HttpError(StatusCode::UNAUTHORIZED, "signature is already expired".into()));
        }
    }
    Ok(())
}
