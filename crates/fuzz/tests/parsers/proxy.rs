//! The proxy's routing: `E2b-Sandbox-Port`, signed `/files` URLs, and the headers it forwards
//! (`daemon::proxy`).

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use ember_agent::files::FileQuery;
use ember_daemon::proxy::{parse_port, parse_signed_query, strip_request_headers, SANDBOX_ID, SANDBOX_PORT};
use ember_envd_proto::signature::{sign, FileOp};
use ember_envd_proto::ENVD_PORT;
use ember_fuzz::{config, text_bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// Keys of a `/files` query, with a few others.
const KEYS: &[&str] = &["path", "username", "signature", "signature_expiration", "other", "Signature", "path "];

/// Query parameters: a mix of the keys above with arbitrary values, and values that are the
/// right signature for some token.
fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    let value = prop_oneof![
        any::<String>(),
        "[0-9+-]{0,20}",
        (any::<String>(), any::<bool>(), any::<String>(), any::<Option<i64>>()).prop_map(|(path, write, user, exp)| {
            let op = if write { FileOp::Write } else { FileOp::Read };
            sign(&path, op, &user, "tok", exp)
        }),
    ];
    prop::collection::vec((prop::sample::select(KEYS).prop_map(str::to_string), value), 0..7)
}

/// The signed fields of a URL.
#[derive(Debug, Clone)]
struct Signed {
    path: Option<String>,
    user: Option<String>,
    expiration: Option<i64>,
    write: bool,
}

fn signed() -> impl Strategy<Value = Signed> {
    (any::<Option<String>>(), any::<Option<String>>(), any::<Option<i64>>(), any::<bool>())
        .prop_map(|(path, user, expiration, write)| Signed { path, user, expiration, write })
}

impl Signed {
    fn signature(&self, token: &str) -> String {
        let op = if self.write { FileOp::Write } else { FileOp::Read };
        let (path, user) = (self.path.as_deref().unwrap_or_default(), self.user.as_deref().unwrap_or_default());
        sign(path, op, user, token, self.expiration)
    }

    /// The query an SDK builds, with `extra` parameters, shuffled by `order`.
    fn query(&self, signature: &str, extra: &[(String, String)], order: usize) -> String {
        let mut pairs: Vec<(String, String)> = extra.to_vec();
        pairs.extend(self.path.clone().map(|p| ("path".into(), p)));
        pairs.extend(self.user.clone().map(|u| ("username".into(), u)));
        pairs.extend(self.expiration.map(|e| ("signature_expiration".into(), e.to_string())));
        pairs.push(("signature".into(), signature.into()));
        let n = pairs.len();
        pairs.rotate_left(order % n);
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// Whether envd would take `query` as signed by `token` for this operation (expiry aside): the
/// agent reads the query into its `FileQuery` as axum's `Query` does.
fn envd_accepts(write: bool, query: &str, token: &str) -> bool {
    let Ok(q) = serde_urlencoded::from_str::<FileQuery>(query) else { return false };
    let expiration = match q.signature_expiration.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(_)) => return false,
    };
    let op = if write { FileOp::Write } else { FileOp::Read };
    let expected =
        sign(q.path.as_deref().unwrap_or_default(), op, q.username.as_deref().unwrap_or_default(), token, expiration);
    q.signature.as_deref() == Some(expected.as_str())
}

/// Queries signed the SDK's way, then tampered with as an attacker might: repeated keys (before
/// or after the original), a junk expiration beside a signature made without one, other keys.
/// Returns whether it is a POST, the query and the token that signed it.
fn tampered() -> impl Strategy<Value = (bool, String, String)> {
    let edit = (0u8..3, prop::sample::select(KEYS), prop_oneof![any::<String>(), "[0-9+-]{0,4}"], any::<usize>());
    (signed(), prop_oneof![Just("tok".to_string()), any::<String>()], prop::collection::vec(edit, 0..3), any::<usize>())
        .prop_map(|(s, token, edits, order)| {
            let mut pairs: Vec<(String, String)> =
                serde_urlencoded::from_str(&s.query(&s.signature(&token), &[], order)).unwrap_or_default();
            for (kind, key, value, at) in edits {
                let at = at % (pairs.len() + 1);
                match kind {
                    // A key repeated (or added) with another value.
                    0 => pairs.insert(at, (key.to_string(), value)),
                    // A repeated key with the same value.
                    1 => {
                        if let Some(p) = pairs.iter().find(|(k, _)| k == key).cloned() {
                            pairs.insert(at, p);
                        }
                    }
                    // A junk expiration where the signature was made without one.
                    _ => {
                        if s.expiration.is_none() && !pairs.iter().any(|(k, _)| k == "signature_expiration") {
                            pairs.insert(at, ("signature_expiration".into(), value));
                        }
                    }
                }
            }
            (s.write, serde_urlencoded::to_string(pairs).unwrap_or_default(), token)
        })
}

proptest! {
    #![proptest_config(config(1))]

    /// A signed query, tampered with or not, is routed with a token exactly when envd would
    /// take it as signed with that token: nothing envd refuses reaches a sandbox, and nothing
    /// envd accepts is left unrouted.
    #[test]
    fn routing_agrees_with_envd((post, query, token) in tampered()) {
        let routed = parse_signed_query(post, "/files", &query).is_some_and(|q| q.matches(&token));
        prop_assert_eq!(routed, envd_accepts(post, &query, &token), "{:?}", query);
    }

    /// Any `E2b-Sandbox-Port` value never panics; an accepted one is its digits' value, 1-65535.
    #[test]
    fn ports_are_their_digits(value in prop_oneof![text_bytes(12), "[0-9]{1,7}".prop_map(String::into_bytes)]) {
        match parse_port(Some(&value)) {
            Ok(port) => {
                prop_assert!(port > 0 && value.iter().all(u8::is_ascii_digit));
                let digits = std::str::from_utf8(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(digits.parse::<u64>().ok(), Some(u64::from(port)));
            }
            Err(_) => {
                let n = std::str::from_utf8(&value).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit())).and_then(|s| s.parse::<u64>().ok());
                prop_assert!(!matches!(n, Some(1..=65535)), "refused {:?}", String::from_utf8_lossy(&value));
            }
        }
        prop_assert_eq!(parse_port(None), Ok(ENVD_PORT));
    }

    /// Arbitrary paths and queries never panic, and a query is routed to a sandbox only if envd
    /// in that sandbox would take it as signed with the sandbox's token.
    #[test]
    fn only_what_envd_accepts_is_routed(
        post in any::<bool>(),
        path in prop_oneof![Just("/files".to_string()), "/[a-z]{0,6}", any::<String>()],
        query in prop_oneof![
            params().prop_map(|p| serde_urlencoded::to_string(p).unwrap_or_default()),
            params().prop_map(|p| p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")),
            text_bytes(128).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        token in prop_oneof![Just("tok".to_string()), any::<String>()],
    ) {
        if let Some(signed) = parse_signed_query(post, &path, &query) {
            prop_assert_eq!(path.as_str(), "/files");
            if signed.matches(&token) {
                prop_assert!(envd_accepts(post, &query, &token), "routed {:?} for {:?}", query, token);
            }
        }
    }

    /// A URL signed the SDK's way is routed with its token and no other, and only for its
    /// operation; unsigned or wrongly signed it is not.
    #[test]
    fn signed_urls_route_to_their_token_only(
        s in signed(),
        extra in prop::collection::vec(("x-[a-z]{1,4}", any::<String>()), 0..3),
        order in any::<usize>(),
        token in any::<String>(),
        other in any::<String>(),
        wrong in any::<String>(),
    ) {
        let good = s.signature(&token);
        let q = s.query(&good, &extra, order);
        let parsed = parse_signed_query(s.write, "/files", &q);
        prop_assert!(parsed.as_ref().is_some_and(|p| p.matches(&token)), "{:?}", q);
        prop_assert!(envd_accepts(s.write, &q, &token));
        if other != token {
            prop_assert!(!parsed.as_ref().is_some_and(|p| p.matches(&other)));
        }
        prop_assert!(!parse_signed_query(!s.write, "/files", &q).is_some_and(|p| p.matches(&token)));
        if wrong != good {
            let q = s.query(&wrong, &extra, order);
            prop_assert!(!parse_signed_query(s.write, "/files", &q).is_some_and(|p| p.matches(&token)));
        }
        // Without its signature the URL is not a signed one at all.
        let unsigned = q.split('&').filter(|kv| !kv.starts_with("signature=")).collect::<Vec<_>>().join("&");
        prop_assert!(parse_signed_query(s.write, "/files", &unsigned).is_none(), "{:?}", unsigned);
    }

    /// Forwarded requests keep no credential for the daemon and no routing header, whatever the
    /// spelling of the names, and keep every other header.
    #[test]
    fn credentials_are_never_forwarded(headers in prop::collection::vec((
        prop_oneof![
            prop::sample::select(vec!["X-Api-Key", "x-api-key", "X-API-KEY", "Cookie", "Proxy-Authorization", SANDBOX_ID, SANDBOX_PORT, "E2B-Sandbox-ID"]).prop_map(str::to_string),
            prop::sample::select(vec!["X-Access-Token", "Authorization", "Content-Type", "Range"]).prop_map(str::to_string),
            "[a-zA-Z-]{1,12}",
        ],
        "[ -~]{0,16}",
    ), 0..12)) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                map.append(n, v);
            }
        }
        let before = map.clone();
        strip_request_headers(&mut map);
        let dropped = ["x-api-key", "cookie", "proxy-authorization", SANDBOX_ID, SANDBOX_PORT];
        let hop = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"];
        for name in before.keys() {
            let gone = dropped.contains(&name.as_str()) || hop.contains(&name.as_str());
            prop_assert_eq!(map.get_all(name).iter().count(), if gone { 0 } else { before.get_all(name).iter().count() }, "{}", name);
        }
        prop_assert_eq!(map.keys_len(), before.keys().filter(|n| !dropped.contains(&n.as_str()) && !hop.contains(&n.as_str())).count());
    }
}
