//! List pages: `limit` (1-100) and an opaque `nextToken` in, one page out with `X-Next-Token`
//! when more follow. [`page`] counts from the start; [`keyed`] carries the last key it gave, so
//! its pages stay right while items come and go.

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

/// Most bytes of a [`keyed`] page token.
const MAX_KEY_TOKEN: usize = 256;

/// A page of `items`, each with its key and sorted by it (ascending or `descending`), that
/// starts after the item whose key is `next_token`, so that items added or removed between two requests never make
/// a page repeat or skip one of the others. Keys are compared as strings; the token is the
/// last key of the page.
pub fn keyed<T: Serialize>(
    items: Vec<(String, T)>,
    descending: bool,
    limit: Option<usize>,
    next_token: Option<&str>,
) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    if let Some(t) = next_token {
        if t.is_empty() || t.len() > MAX_KEY_TOKEN || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
            return Err(ApiError::BadRequest("invalid nextToken".into()));
        }
    }
    let after = |k: &str| match (next_token, descending) {
        (None, _) => true,
        (Some(t), false) => k > t,
        (Some(t), true) => k < t,
    };
    let mut rest: Vec<(String, T)> = items.into_iter().filter(|(k, _)| after(k)).collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let last = rest.last().map(|(k, _)| k.clone());
    let mut resp = Json(rest.into_iter().map(|(_, i)| i).collect::<Vec<T>>()).into_response();
    if let (true, Some(last)) = (more, last) {
        if let Ok(v) = HeaderValue::from_str(&last) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> Vec<u32> {
        serde_json::from_slice(&axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn keyed_pages_neither_repeat_nor_skip_when_items_come_and_go() {
        let key = |v: Vec<u32>| v.into_iter().map(|i| (format!("{i:05}"), i)).collect::<Vec<_>>();
        let r = keyed(key(vec![1, 2, 3, 4, 5]), false, Some(2), None).unwrap();
        let token = r.headers()["x-next-token"].to_str().unwrap().to_string();
        assert_eq!(body(r).await, [1, 2]);
        // 1 goes away and 0 arrives before the next page: it still starts at 3.
        let r = keyed(key(vec![0, 2, 3, 4, 5]), false, Some(2), Some(&token)).unwrap();
        let token = r.headers()["x-next-token"].to_str().unwrap().to_string();
        assert_eq!(body(r).await, [3, 4]);
        let r = keyed(key(vec![0, 2, 3, 4, 5]), false, Some(2), Some(&token)).unwrap();
        assert!(r.headers().get("x-next-token").is_none());
        assert_eq!(body(r).await, [5]);
        let r = keyed(key(vec![5, 4, 3, 2, 1]), true, Some(3), None).unwrap();
        let token = r.headers()["x-next-token"].to_str().unwrap().to_string();
        assert_eq!(body(r).await, [5, 4, 3]);
        assert_eq!(body(keyed(key(vec![6, 5, 4, 3, 2, 1]), true, Some(3), Some(&token)).unwrap()).await, [2, 1]);
        for bad in ["", "a/b", "x y", &"9".repeat(300)] {
            assert!(keyed(key(vec![1]), false, None, Some(bad)).is_err(), "{bad:?}");
        }
        assert!(keyed(key(vec![1]), false, Some(101), None).is_err());
    }

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
