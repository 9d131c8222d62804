//! The agent's HTTP/1.1 server: routes for envd's endpoints and RPC services, behind the
//! access-token check (which refuses everything but `/health` and `/init` until a token is set).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::http_error;
use crate::state::Agent;
use crate::{auth, files, fs, process, system};

/// Settings of the running agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// User for requests that name none (until `/init` sets another).
    pub default_user: String,
    /// Root of the account database (`/` in a guest).
    pub users_root: std::path::PathBuf,
    /// Whether `/init` sets the clock and reseeds the RNG (in a guest, never on a host).
    pub guest: bool,
    /// Where what `/init` sets is saved, so a restarted server keeps its token
    /// ([`crate::statefile`]); `None` keeps it in memory only (a restarted server then holds no
    /// token and refuses every call until `/init`).
    pub state_file: Option<std::path::PathBuf>,
    /// Where `/init` installs extra CA certificates (`caBundle`; in a guest only).
    pub ca_paths: crate::ca::CaPaths,
    /// The guest's own address: in a guest, servers listening on its loopback only are made
    /// reachable on it ([`crate::forward`]); `None` forwards nothing.
    pub guest_ip: Option<IpAddr>,
    /// Where `/init` writes the files naming the sandbox and its template ([`crate::runinfo`];
    /// `/run/e2b` in a guest); `None` writes none.
    pub run_info_dir: Option<std::path::PathBuf>,
}

/// Builds the router; separate from [`serve`] so tests can drive it without a socket.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/envs", get(system::envs))
        .route("/metrics", get(system::metrics))
        .route("/init", post(system::init))
        .route("/files", get(files::download).post(files::upload))
        .route("/process.Process/{method}", post(process::handle))
        .route("/filesystem.Filesystem/{method}", post(fs::handle))
        .fallback(|| async { http_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&agent), auth::require_token))
        // Outside the token check: a browser's preflight carries no token, and a refusal must
        // carry the CORS headers for the browser to show it.
        .layer(axum::middleware::from_fn(with_cors))
        // Bodies are read as streams with per-endpoint limits.
        .layer(DefaultBodyLimit::disable())
        .with_state(agent)
}

/// CORS for browser clients ([`ember_envd_proto::cors`]): a preflight (`OPTIONS`) is answered
/// here, every other answer gets the CORS headers.
async fn with_cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(headers) = ember_envd_proto::cors::preflight(req.method(), req.headers()) {
        return (StatusCode::NO_CONTENT, headers).into_response();
    }
    let mut resp = next.run(req).await;
    ember_envd_proto::cors::add_to(resp.headers_mut());
    resp
}

/// Serves until the process is stopped; in a guest, also forwards the guest's address to servers
/// listening on its loopback only ([`crate::forward`]).
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("bind {}", config.listen))?;
    tracing::info!(addr = %config.listen, version = ember_envd_proto::ENVD_VERSION, "ember-agent listening");
    if let (true, Some(ip)) = (config.guest, config.guest_ip) {
        let own = vec![config.listen.port(), ember_envd_proto::ENVD_PORT];
        tokio::spawn(crate::forward::run(ip, own));
    }
    let agent = Arc::new(Agent::new(config));
    if !agent.initialised() {
        tracing::info!("no access token yet: refusing every call but /health and /init");
    }
    axum::serve(listener, router(agent)).await.context("serve")
}
