//! The API's one error type, mapped to an HTTP status and `{code, message}` in one place.
//! Internal failures are logged with their detail where they happen; clients get a summary.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooMany(String),
    #[error("request body too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// Detail is logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::manager::LifecycleError> for ApiError {
    /// The one place lifecycle errors become HTTP answers; internal ones are logged here, once,
    /// and clients get a summary.
    fn from(e: crate::manager::LifecycleError) -> Self {
        use crate::manager::LifecycleError as L;
        match e {
            L::NotFound(_) | L::Missing(_) => ApiError::NotFound(e.to_string()),
            L::Invalid(_) | L::UnknownTemplate(_) => ApiError::BadRequest(e.to_string()),
            L::TooMany(_) | L::Quota(_) => ApiError::TooMany(e.to_string()),
            L::Conflict(_) => ApiError::Conflict(e.to_string()),
            L::Ended(_) => ApiError::NotFound(e.to_string()),
            L::Guest(_) | L::Store(_) | L::Task(_) | L::Io(..) => {
                tracing::error!(error = %e, "sandbox operation failed");
                ApiError::Internal("the sandbox operation failed; see the daemon's log".into())
            }
        }
    }
}

impl ApiError {
    /// The kind the operator metrics count it by (`prom::ERROR_KINDS`).
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooMany(_) => "too_many",
            ApiError::TooLarge(_) => "too_large",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::prom::TELEMETRY.error(self.kind());
        let status = self.status();
        (status, Json(ember_api::Error { code: status.as_u16(), message: self.to_string() })).into_response()
    }
}

/// Most bytes of a plain-text error answer that [`json_errors`] rewrites.
const MAX_PLAIN_ERROR: usize = 16 * 1024;

/// Gives the API's own plain-text 4xx answers (axum's rejections of a query string or a path it
/// cannot read) the `{code, message}` shape every other error has.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !resp.status().is_client_error() || !plain {
        return resp;
    }
    let status = resp.status();
    let message = match axum::body::to_bytes(resp.into_body(), MAX_PLAIN_ERROR).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => status.canonical_reason().unwrap_or("bad request").to_string(),
    };
    (status, Json(ember_api::Error { code: status.as_u16(), message })).into_response()
}

/// Parses a JSON request body into `T`, with a clear 400 for anything malformed.
pub fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8], required: bool) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if required { Err(ApiError::BadRequest("request body is empty".into())) } else { Ok(T::default()) };
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
