//! The agent's HTTP/1.1 server: envd's `/health` and the `process.Process/Start` stream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ember_envd_proto::envelope::encode_end;
use ember_envd_proto::process::{StartRequest, START_PATH};
use ember_envd_proto::{Code, ConnectError, Decoder, CONNECT_JSON};
use futures_util::stream;

use crate::process::{self, Launch};
use crate::users::{user_from_basic_auth, UserDb};

/// Largest request body of an RPC (4 MiB): a start request is a command line and environment.
pub const MAX_RPC_BODY: usize = 4 << 20;

/// Settings of the running agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// User for requests that name none.
    pub default_user: String,
    /// Root of the account database (`/` in a guest).
    pub users_root: std::path::PathBuf,
}

struct AppState {
    config: AgentConfig,
    users: UserDb,
    sandbox_envs: BTreeMap<String, String>,
}

/// Builds the router; separate from [`serve`] so tests can drive it without a socket.
pub fn router(config: AgentConfig) -> Router {
    let state = Arc::new(AppState {
        users: UserDb::new(&config.users_root),
        config,
        sandbox_envs: BTreeMap::new(),
    });
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route(START_PATH, post(start))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(state)
}

/// Serves until the process is stopped.
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    tracing::info!(addr = %config.listen, version = ember_envd_proto::ENVD_VERSION, "ember-agent listening");
    axum::serve(listener, router(config)).await.context("serve")
}

async fn start(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = (|| {
        let request: StartRequest = decode_single_frame(&headers, &body)?;
        let name = match headers.get(header::AUTHORIZATION) {
            Some(v) => user_from_basic_auth(v.to_str().unwrap_or_default())
                .map_err(|e| ConnectError::new(Code::Unauthenticated, e.to_string()))?,
            None => state.config.default_user.clone(),
        };
        let user = state
            .users
            .lookup(&name)
            .map_err(|e| ConnectError::new(Code::Unauthenticated, e.to_string()))?;
        process::start(Launch {
            request,
            user,
            sandbox_envs: state.sandbox_envs.clone(),
        })
    })();
    match result {
        Ok((pid, rx)) => {
            tracing::debug!(pid, "process started");
            let frames = stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|frame| (Ok::<_, Infallible>(frame), rx))
            });
            stream_response(Body::from_stream(frames))
        }
        Err(err) => {
            tracing::debug!(%err, "start refused");
            stream_response(Body::from(encode_end(Some(err))))
        }
    }
}

/// A Connect server-stream response: always HTTP 200, errors travel in the end frame.
fn stream_response(body: Body) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, CONNECT_JSON)], body).into_response()
}

/// Decodes a streaming request body that must hold exactly one message.
fn decode_single_frame<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ConnectError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ctype.starts_with(CONNECT_JSON) {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!("content-type must be {CONNECT_JSON}, got '{ctype}'"),
        ));
    }
    let bad = |msg: String| ConnectError::new(Code::InvalidArgument, msg);
    let mut decoder = Decoder::new();
    decoder.push(body);
    let frame = decoder
        .next_frame()
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("empty request".into()))?;
    if frame.is_end_stream()
        || decoder
            .next_frame()
            .map_err(|e| bad(e.to_string()))?
            .is_some()
    {
        return Err(bad("expected exactly one request message".into()));
    }
    decoder.finish().map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&frame.payload).map_err(|e| bad(format!("invalid request message: {e}")))
}
