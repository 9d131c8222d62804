//! List pages: `limit` (1-100) and an opaque `nextToken` in, one page out with `X-Next-Token`
//! when more follow.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::ApiError;

pub const MAX_PAGE: usize = 100;

/// The page of `items` that `limit` and `next_token` select, as a JSON answer.
pub fn page<T: Serialize>(items: Vec<T>, limit: Option<usize>, next_token: Option<&str>) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let start: usize = match next_token {
        Some(t) => t.parse().map_err(|_| ApiError::BadRequest("invalid nextToken".into()))?,
        None => 0,
    };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let mut resp = Json(page).into_response();
    if start + limit < total {
        if let Ok(v) = HeaderValue::from_str(&(start + limit).to_string()) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_the_next_token_until_the_end() {
        let r = page((0..5).collect(), Some(2), None).unwrap();
        assert_eq!(r.headers()["x-next-token"], "2");
        let r = page((0..5).collect(), Some(2), Some("4")).unwrap();
        assert!(r.headers().get("x-next-token").is_none());
        assert!(page((0..5).collect::<Vec<i32>>(), Some(0), None).is_err());
        assert!(page((0..5).collect::<Vec<i32>>(), Some(2), Some("x")).is_err());
    }
}
