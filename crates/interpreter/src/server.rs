//! The HTTP surface: `/health`, `/execute` (NDJSON stream), `/contexts`; errors as the SDKs
//! read them (404 and 400 as plain text, shown verbatim; 401 and 502 as envd's JSON).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ember_envd_proto::interpreter::{CreateContextRequest, ErrorBody, ExecuteRequest};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::context::{Cell, ContextError, Registry};
use crate::envd::{Envd, EnvdError};
use crate::execute::{Line, Output};
use crate::lang::{check_env, Language};

/// Largest code accepted.
pub const MAX_CODE: usize = 10 << 20;
/// Largest request body (code plus env vars and JSON quoting).
const MAX_BODY: usize = 12 << 20;
/// The header with envd's access token.
const ACCESS_TOKEN: &str = "x-access-token";

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400, plain text
    #[error("{0}")]
    BadRequest(String),
    /// 404, plain text (`Context {id} not found`)
    #[error("{0}")]
    NotFound(String),
    /// 401 `{code, message}`
    #[error("{0}")]
    Unauthorized(String),
    /// 502 `{code, message}`: envd did not answer
    #[error("{0}")]
    BadGateway(String),
    /// 503 `{code, message}`: kernels still starting or failing
    #[error("{0}")]
    Unavailable(String),
}

impl From<ContextError> for ApiError {
    fn from(e: ContextError) -> Self {
        match e {
            ContextError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ContextError::Start { .. } => {
                tracing::warn!("{e}");
                ApiError::Unavailable(e.to_string())
            }
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<EnvdError> for ApiError {
    fn from(e: EnvdError) -> Self {
        match e {
            EnvdError::Unauthorized(m) => ApiError::Unauthorized(m),
            EnvdError::Unavailable(m) => {
                tracing::warn!("access check: {m}");
                ApiError::BadGateway(format!("the sandbox's agent did not answer the access check: {m}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let json = |status: StatusCode, message: String| {
            (status, Json(ErrorBody { code: status.as_u16(), message })).into_response()
        };
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m).into_response(),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m).into_response(),
            ApiError::Unauthorized(m) => json(StatusCode::UNAUTHORIZED, m),
            ApiError::BadGateway(m) => json(StatusCode::BAD_GATEWAY, m),
            ApiError::Unavailable(m) => json(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

/// The server's state.
pub struct App {
    pub registry: Registry,
    pub envd: Envd,
    /// Set once the start-up contexts have started.
    pub ready: AtomicBool,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/execute", post(execute))
        .route("/contexts", get(list_contexts).post(create_context))
        .route("/contexts/{id}", delete(delete_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .route("/warm", post(warm))
        .layer(axum::middleware::from_fn(with_cors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// CORS for browser clients, as envd answers ([`ember_envd_proto::cors`]): a preflight
/// (`OPTIONS`, which carries no token) is answered here, every other answer gets the CORS headers.
async fn with_cors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(headers) = ember_envd_proto::cors::preflight(req.method(), req.headers()) {
        return (StatusCode::NO_CONTENT, headers).into_response();
    }
    let mut resp = next.run(req).await;
    ember_envd_proto::cors::add_to(resp.headers_mut());
    resp
}

async fn health(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        Json("OK").into_response()
    } else {
        ApiError::Unavailable("kernels are starting".into()).into_response()
    }
}

/// The access check: envd must accept the caller's token (or its absence, when the sandbox has
/// none). Returns the sandbox's env vars.
async fn check_access(app: &App, headers: &HeaderMap) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    Ok(app.envd.envs(headers.get(ACCESS_TOKEN)).await?)
}

/// `/contexts` calls: the SDKs (Python 2.11.5, JS 2.8.0) send no `X-Access-Token` on them,
/// only on `/execute`, so a request without one is let through (requiring it would break
/// `create_code_context` and friends on every secured sandbox); a request with one is checked.
async fn check_context_access(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(ACCESS_TOKEN) {
        check_access(app, headers).await?;
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

async fn execute(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let sandbox_env = check_access(&app, &headers).await?;
    let req: ExecuteRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    if req.code.len() > MAX_CODE {
        return Err(ApiError::BadRequest(format!("code is larger than {MAX_CODE} bytes")));
    }
    let context = match (&req.context_id, &req.language) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("context_id and language are mutually exclusive: send one of them".into()))
        }
        (Some(id), None) => app.registry.get(id)?,
        (None, language) => {
            let language = app.registry.language(language.as_deref())?;
            app.registry.default_for(language)?
        }
    };
    let call_env = req.env_vars.unwrap_or_default();
    check_env(&call_env).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !call_env.is_empty() && context.language == Language::Java {
        return Err(ApiError::BadRequest("env_vars are not supported in java contexts".into()));
    }
    let (out, rx, budget) = Output::new();
    let (gone_tx, gone_rx) = oneshot::channel();
    let cell = Cell { code: req.code, sandbox_env, call_env };
    let app2 = app.clone();
    tokio::spawn(async move {
        context.execute(&app2.registry.settings, cell, out, gone_rx).await;
    });
    let mut res = Response::new(stream_body(rx, budget, gone_tx));
    res.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(res)
}

/// The body of `/execute`: lines as the execution makes them. Dropping it (client gone) closes
/// the budget and resolves the execution's `gone`.
fn stream_body(rx: mpsc::UnboundedReceiver<Line>, budget: Arc<Semaphore>, gone: oneshot::Sender<()>) -> Body {
    struct Feed {
        rx: mpsc::UnboundedReceiver<Line>,
        budget: Arc<Semaphore>,
        _gone: oneshot::Sender<()>,
    }
    impl Drop for Feed {
        fn drop(&mut self) {
            self.budget.close();
        }
    }
    let feed = Feed { rx, budget, _gone: gone };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let line = feed.rx.recv().await?;
        Some((Ok::<_, Infallible>(line.bytes), feed))
    });
    Body::from_stream(stream)
}

async fn list_contexts(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_context_access(&app, &headers).await?;
    Ok(Json(app.registry.list()).into_response())
}

async fn create_context(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    check_context_access(&app, &headers).await?;
    let req: CreateContextRequest = parse_json(&body)?;
    let language = app.registry.language(req.language.as_deref())?;
    let ctx = app.registry.create(language, req.cwd.as_deref())?;
    if let Err(e) = ctx.warm(&app.registry.settings).await {
        let _ = app.registry.delete(&ctx.id);
        return Err(e.into());
    }
    Ok(Json(ctx.info()).into_response())
}

async fn delete_context(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_context_access(&app, &headers).await?;
    app.registry.delete(&id)?;
    Ok(Json(()).into_response())
}

async fn restart_context(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_context_access(&app, &headers).await?;
    let ctx = app.registry.get(&id)?;
    ctx.restart(&app.registry.settings).await?;
    Ok(Json(()).into_response())
}

/// `POST /warm` (Ember's, not E2B's; needs the access token): runs each context's warm-up cell
/// outside the history, one context after another, so a client's first cell does not pay for
/// what a restored guest has not run yet (the daemon calls it on the sandboxes it pools).
async fn warm(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_access(&app, &headers).await?;
    let ids: Vec<String> = app.registry.list().into_iter().map(|c| c.id).collect();
    for id in ids {
        let Ok(ctx) = app.registry.get(&id) else { continue };
        ctx.exercise(&app.registry.settings).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Starts the start-up contexts (they become the default contexts of their languages), then
/// marks the server ready. A language without a kernelspec is skipped; a kernel that fails to
/// start is logged (its context starts a kernel again on first use) and does not hold readiness
/// back forever.
pub async fn start_contexts(app: Arc<App>, languages: Vec<Language>) {
    let available = app.registry.available();
    let mut tasks = Vec::new();
    for lang in languages {
        if !available.contains(&lang) {
            tracing::warn!(language = %lang, "start-up context skipped: kernelspec {} not installed", lang.kernelspec());
            continue;
        }
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let ctx = match app.registry.default_for(lang) {
                Ok(c) => c,
                Err(e) => return tracing::error!(language = %lang, "start-up context: {e}"),
            };
            match ctx.warm(&app.registry.settings).await {
                Ok(()) => {
                    tracing::info!(language = %lang, ms = started.elapsed().as_millis(), "start-up context ready")
                }
                Err(e) => tracing::error!(language = %lang, "start-up context: {e}"),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    app.ready.store(true, Ordering::Release);
    tracing::info!("ready");
}
