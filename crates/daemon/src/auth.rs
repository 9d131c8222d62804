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

/// Least estimated entropy, in bits, of a key accepted from `EMBER_API_KEY`.
pub const MIN_KEY_BITS: f64 = 96.0;

/// Checks that a key chosen by the operator is not guessable: long enough, and with enough
/// entropy in its characters (estimated from their frequencies, so repeated or patterned keys
/// such as all zeros fail). A random `e2b_` + 40 hex digits key has about 150 bits.
pub fn check_key_strength(key: &str) -> Result<(), String> {
    let body = key.strip_prefix("e2b_").unwrap_or(key);
    if body.len() < 24 {
        return Err(format!("the API key is {} characters long; use at least 24 random ones", body.len()));
    }
    let mut counts = std::collections::HashMap::new();
    for c in body.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = body.chars().count() as f64;
    let per_char: f64 = counts.values().map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum();
    let bits = per_char * n;
    if bits < MIN_KEY_BITS {
        return Err(format!(
            "the API key has about {bits:.0} bits of entropy, fewer than {MIN_KEY_BITS:.0}: use a random key, e.g. e2b_$(od -An -N20 -tx1 /dev/urandom | tr -d ' \\n')"
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_keys_are_refused_and_random_ones_accepted() {
        assert!(check_key_strength(&format!("e2b_{}", "0".repeat(40))).is_err());
        assert!(check_key_strength(&format!("e2b_{}", "ab".repeat(20))).is_err());
        assert!(check_key_strength("e2b_0123456789abcdef").is_err(), "too short");
        assert!(check_key_strength("e2b_53ae1fa40ba5d1d8e9b0fe4d0a4e1f5a3c2b6d7e").is_ok());
        for _ in 0..100 {
            let key = format!("e2b_{}", crate::manager::random_hex(20));
            assert!(check_key_strength(&key).is_ok(), "{key}");
        }
    }
}
