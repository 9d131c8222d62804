//! CORS for browser clients, as envd answers: any origin, a preflight answered without the
//! access token, the headers a browser asks to send allowed, and the Connect headers exposed.
//! One set of answers for the guest's servers (envd on 49983, the code interpreter on 49999) and
//! the daemon (the REST API and header-routed sandbox traffic): each wraps its router in a
//! middleware made of [`preflight`] and [`add_to`]. Credentials are headers (`X-API-Key`,
//! `X-Access-Token`), never cookies, so `*` gives a page nothing it could not do without a browser.

use http::header::{self, HeaderMap, HeaderValue};

/// `Access-Control-Allow-Origin` of every answer.
pub const ALLOW_ORIGIN: &str = "*";
/// `Access-Control-Allow-Methods` of a preflight.
pub const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// `Access-Control-Allow-Headers` of a preflight that names none: the Connect protocol's
/// headers, the access token, the proxy's routing headers and Basic auth. A preflight that names
/// headers has them echoed instead (a wildcard would not cover `Authorization`).
pub const ALLOW_HEADERS: &str = "Accept, Accept-Encoding, Authorization, Cache-Control, Content-Encoding, \
     Content-Type, Connect-Accept-Encoding, Connect-Content-Encoding, Connect-Protocol-Version, \
     Connect-Timeout-Ms, Grpc-Timeout, Range, User-Agent, X-Access-Token, X-Grpc-Web, \
     X-Requested-With, X-User-Agent, X-API-Key, Keepalive-Ping-Interval, E2b-Sandbox-Id, E2b-Sandbox-Port, \
     E2b-Traffic-Access-Token";
/// `Access-Control-Expose-Headers` of every answer: envd's (Connect's and gRPC's status headers,
/// `Location`, `Cache-Control`, `X-Content-Type-Options`), those of file downloads, and the REST
/// API's paging headers.
pub const EXPOSE_HEADERS: &str = "Connect-Content-Encoding, Connect-Protocol-Version, Grpc-Message, Grpc-Status, \
     Grpc-Status-Details-Bin, Location, Cache-Control, X-Content-Type-Options, Content-Disposition, \
     Content-Encoding, Content-Length, Content-Range, Accept-Ranges, X-Next-Token, X-Total-Running";
/// `Access-Control-Max-Age` of a preflight, in seconds (envd's two hours).
pub const MAX_AGE: &str = "7200";

/// The headers of the 204 answering a preflight (an `OPTIONS` with
/// `Access-Control-Request-Method`), or none if `method` and `request` are not one. The headers a
/// browser asks for are echoed when they are a plain list, else [`ALLOW_HEADERS`] are allowed.
pub fn preflight(method: &http::Method, request: &HeaderMap) -> Option<HeaderMap> {
    if method != http::Method::OPTIONS || !request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let allow = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.len() <= 4096 && r.bytes().all(is_list_byte))
        .and_then(|r| HeaderValue::from_str(r).ok())
        .unwrap_or(HeaderValue::from_static(ALLOW_HEADERS));
    let mut h = HeaderMap::new();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static(ALLOW_ORIGIN));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    Some(h)
}

/// Adds the CORS headers of an ordinary answer, unless it carries its own (a guest's answer
/// relayed by the daemon).
pub fn add_to(response: &mut HeaderMap) {
    if !response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static(ALLOW_ORIGIN));
        response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    }
}

/// A byte of a comma-separated list of header names.
fn is_list_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_, ".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(requested: Option<&'static str>) -> String {
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        if let Some(r) = requested {
            h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static(r));
        }
        let answer = preflight(&http::Method::OPTIONS, &h).unwrap();
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        answer[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().to_string()
    }

    #[test]
    fn preflights_echo_the_requested_headers_or_list_the_needed_ones() {
        assert_eq!(allowed(Some("x-access-token, content-type")), "x-access-token, content-type");
        let default = allowed(None).to_ascii_lowercase();
        for h in ["connect-protocol-version", "x-access-token", "e2b-sandbox-id", "x-api-key", "authorization"] {
            assert!(default.contains(h), "{h}");
        }
        // Nothing but a header list is echoed.
        assert_eq!(allowed(Some("a;b")), ALLOW_HEADERS);
        assert_eq!(allowed(Some("  ")), ALLOW_HEADERS);
    }

    #[test]
    fn only_preflights_are_answered_and_own_headers_are_kept() {
        let mut h = HeaderMap::new();
        assert!(preflight(&http::Method::OPTIONS, &h).is_none(), "no Access-Control-Request-Method");
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("GET"));
        assert!(preflight(&http::Method::GET, &h).is_none());
        let mut answer = HeaderMap::new();
        add_to(&mut answer);
        assert_eq!(answer[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let mut own = HeaderMap::new();
        own.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("https://a.test"));
        add_to(&mut own);
        assert_eq!(own[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert!(!own.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));
    }
}
