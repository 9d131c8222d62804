//! CORS for browser clients of the guest's servers (envd on 49983, the code interpreter on
//! 49999), as envd answers: any origin, a preflight answered without the access token, the
//! headers a browser asks to send allowed, and the Connect headers exposed. The servers wrap
//! their routers in a middleware built from these values.

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
     X-Requested-With, X-User-Agent, E2b-Sandbox-Id, E2b-Sandbox-Port, E2b-Traffic-Access-Token";
/// `Access-Control-Expose-Headers` of every answer: envd's (Connect's and gRPC's status headers,
/// `Location`, `Cache-Control`, `X-Content-Type-Options`) and those of file downloads.
pub const EXPOSE_HEADERS: &str = "Connect-Content-Encoding, Connect-Protocol-Version, Grpc-Message, Grpc-Status, \
     Grpc-Status-Details-Bin, Location, Cache-Control, X-Content-Type-Options, Content-Disposition, \
     Content-Encoding, Content-Length, Content-Range, Accept-Ranges";
/// `Access-Control-Max-Age` of a preflight, in seconds (envd's two hours).
pub const MAX_AGE: &str = "7200";

/// The headers of a preflight's answer, given its `Access-Control-Request-Headers` (echoed when
/// it is a plain header list, else [`ALLOW_HEADERS`]).
pub fn preflight_headers(requested: Option<&str>) -> [(&'static str, String); 5] {
    let allow = requested
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.len() <= 4096 && r.bytes().all(is_list_byte))
        .map_or_else(|| ALLOW_HEADERS.to_string(), str::to_string);
    [
        ("access-control-allow-origin", ALLOW_ORIGIN.to_string()),
        ("access-control-allow-methods", ALLOW_METHODS.to_string()),
        ("access-control-allow-headers", allow),
        ("access-control-max-age", MAX_AGE.to_string()),
        ("access-control-expose-headers", EXPOSE_HEADERS.to_string()),
    ]
}

/// The headers added to every other answer.
pub fn response_headers() -> [(&'static str, &'static str); 2] {
    [("access-control-allow-origin", ALLOW_ORIGIN), ("access-control-expose-headers", EXPOSE_HEADERS)]
}

/// A byte of a comma-separated list of header names.
fn is_list_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_, ".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(requested: Option<&str>) -> String {
        preflight_headers(requested).into_iter().find(|(k, _)| *k == "access-control-allow-headers").unwrap().1
    }

    #[test]
    fn preflights_echo_the_requested_headers_or_list_the_needed_ones() {
        assert_eq!(allowed(Some("x-access-token, content-type")), "x-access-token, content-type");
        let default = allowed(None).to_ascii_lowercase();
        for h in ["connect-protocol-version", "x-access-token", "e2b-sandbox-id", "e2b-sandbox-port", "authorization"] {
            assert!(default.contains(h), "{h}");
        }
        // Nothing but a header list is echoed.
        assert_eq!(allowed(Some("a\r\nb")), ALLOW_HEADERS);
        assert_eq!(allowed(Some("  ")), ALLOW_HEADERS);
    }
}
