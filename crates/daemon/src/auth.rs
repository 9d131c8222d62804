//! API keys on REST calls: `X-API-Key`, checked against the key in `EMBER_API_KEY` (team
//! `default`) and the hashed keys in the store. The team travels in the request's extensions.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use ember_envd_proto::signature::constant_eq;

use crate::error::ApiError;
use crate::manager::Manager;

/// The team a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team(pub String);

/// Team of the key given in `EMBER_API_KEY`.
pub const ENV_KEY_TEAM: &str = "default";

pub async fn require_key(State(manager): State<Arc<Manager>>, mut req: Request, next: Next) -> Response {
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    match team_for(&manager, &key) {
        Some(team) => {
            req.extensions_mut().insert(Team(team));
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

fn team_for(manager: &Manager, key: &str) -> Option<String> {
    if key.is_empty() || key.len() > 256 {
        return None;
    }
    if let Some(env_key) = &manager.config().env_api_key {
        if constant_eq(env_key.as_bytes(), key.as_bytes()) {
            return Some(ENV_KEY_TEAM.into());
        }
    }
    match manager.store().team_for_key(key) {
        Ok(team) => team,
        Err(e) => {
            tracing::error!(error = %e, "looking up an API key");
            None
        }
    }
}
