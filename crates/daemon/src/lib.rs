//! `ember serve`: one HTTP/1.1 port serving E2B's REST API ([`sandboxes`], [`templates`],
//! [`snapshots`] and [`teams`], behind [`auth`]) and
//! all sandbox traffic ([`proxy`], with [`cors`] for browsers), with the sandboxes' lifecycle and state in [`manager`].

#![forbid(unsafe_code)]
// Values from guests and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

pub mod auth;
pub mod cors;
pub mod error;
pub mod manager;
pub mod network;
pub mod observe;
pub mod page;
pub mod prom;
pub mod proxy;
pub mod sandboxes;
pub mod snapshots;
pub mod teams;
pub mod templates;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::manager::Manager;

/// How long a stopping daemon waits for requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest REST request body (1 MiB); sandbox traffic is streamed and not bounded here.
const MAX_REST_BODY: usize = 1 << 20;

/// Plain settings of the daemon.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    pub max_sandboxes: usize,
    /// vCPUs and MiB of memory of every built-in template's sandboxes, instead of each template's
    /// own (`ember_image::template::default_size`: `base` 1 vCPU and 256 MiB).
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// The most vCPUs and MiB of memory a template (and so its sandboxes) may ask for.
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
    /// A key accepted besides the stored ones (`EMBER_API_KEY`), for team `default`.
    pub env_api_key: Option<String>,
    /// Destroy every sandbox when the daemon stops (otherwise the next daemon adopts them).
    pub destroy_on_exit: bool,
    /// Create by restoring the template's snapshot (otherwise boot each sandbox cold).
    pub snapshots: bool,
    /// Sandboxes of template `base` kept restored ahead of time for creates (memory for latency).
    pub pool_size: usize,
    /// The same for the code-interpreter template; its first fill builds the template.
    pub interpreter_pool_size: usize,
    /// Paused sandboxes one team may keep (they hold all their RAM on disk).
    pub max_paused_per_team: usize,
    /// Snapshots one team may keep.
    pub max_snapshots_per_team: usize,
    /// Bytes all snapshots together may use on the host.
    pub max_snapshot_bytes: u64,
    /// How long a template build's ready command may keep failing (E2B's 10 minutes if none).
    pub build_ready_timeout_secs: Option<u64>,
    /// The domain exposed ports are reached under: `{port}-{sandboxID}.{domain}` (returned by
    /// create as `domain`, so the SDKs' `get_host` names it).
    pub domain: String,
    /// Where operator metrics (Prometheus text, `GET /metrics`) are served; none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Every team's quota unless the store has one for it (`ember team set`); none by default.
    pub team_quota: ember_store::Quota,
}

/// The whole HTTP surface.
pub fn router(manager: Arc<Manager>) -> Router {
    let api = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list_v1))
        .route("/v2/sandboxes", post(sandboxes::create).get(sandboxes::list_v2))
        .route("/sandboxes/{id}", get(sandboxes::get).delete(sandboxes::kill))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/fork", post(sandboxes::fork))
        .route("/sandboxes/metrics", get(observe::metrics_many))
        .route("/sandboxes/{id}/metrics", get(observe::metrics))
        .route("/sandboxes/{id}/logs", get(observe::logs))
        .route("/v2/sandboxes/{id}/logs", get(observe::logs_v2))
        .route("/sandboxes/{id}/network", axum::routing::put(network::update))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/templates", get(templates::list))
        .route("/v2/templates", get(templates::list).post(templates::request))
        .route("/v3/templates", post(templates::request))
        .route("/templates/{id}", get(templates::get).delete(templates::delete))
        .route("/templates/{id}/files/{hash}", get(templates::files))
        .route("/v2/templates/{id}/builds/{build}", post(templates::start))
        .route("/templates/{id}/builds/{build}/status", get(templates::status))
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route("/teams/{team}/metrics", get(teams::metrics))
        .route("/teams/{team}/metrics/max", get(teams::max))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&manager), auth::require_key))
        .layer(axum::middleware::from_fn(error::json_errors));
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        // The upload URL authorises itself (a signed, expiring token); its body is streamed.
        .route("/templates/uploads/{token}", axum::routing::put(templates::upload).layer(DefaultBodyLimit::disable()))
        .merge(api)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_REST_BODY))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&manager), proxy::route))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&manager), cors::cors))
        .with_state(manager)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(config: ServeConfig, runtime: ember_runtime::RuntimeConfig) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("listen on {}", config.listen))?;
    let destroy = config.destroy_on_exit;
    let manager = Manager::start(config, runtime).await?;
    eprintln!("ember: accelerator: {}", manager.runtime().accel());
    if let Some(w) = manager.runtime().accel().warning() {
        eprintln!("ember: warning: {w}");
    }
    for w in [manager.runtime().qemu_user_warning(), manager.runtime().cgroup_warning()].into_iter().flatten() {
        eprintln!("ember: warning: {w}");
    }
    if let Some(v) = manager.runtime().cgroup_version() {
        eprintln!("ember: each sandbox's QEMU runs in a cgroup of its own (cgroup v{v})");
    }
    eprintln!("ember: serving the E2B API on http://{}", listener.local_addr()?);
    if let Some(addr) = manager.config().metrics_listen {
        let ops = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr} for metrics"))?;
        eprintln!("ember: operator metrics on http://{}/metrics", ops.local_addr()?);
        let app = Router::new().route("/metrics", get(prom::metrics)).with_state(Arc::clone(&manager));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(ops, app).await {
                tracing::error!(error = %e, "the operator metrics server stopped");
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(Arc::clone(&manager));
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    stop_signal().await;
    let _ = stop_tx.send(());
    // Requests in flight get a moment to finish; long streams (a command's output) do not hold
    // the stop up.
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(result)) => result.context("serve")?,
        Ok(Err(e)) => tracing::error!(error = %e, "the server task failed"),
        Err(_) => tracing::warn!("connections still open after {} s; stopping anyway", DRAIN_TIMEOUT.as_secs()),
    }
    manager.shutdown(destroy).await;
    Ok(())
}

async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
