//! REST JSON bodies (`api` types through `daemon::error::parse_json`, as the handlers read them).

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::collections::BTreeMap;

use ember_api::{ConnectRequest, NewSandbox, TimeoutRequest};
use ember_daemon::error::{parse_json, ApiError};
use ember_fuzz::{config, text_bytes};
use http::StatusCode;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Every way the daemon reads a JSON body, each answer reduced to its HTTP status.
fn statuses(body: &[u8]) -> Vec<StatusCode> {
    fn status<T>(r: Result<T, ApiError>) -> StatusCode {
        r.map_or_else(|e| e.status(), |_| StatusCode::OK)
    }
    let direct = |ok: bool| if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let mut out = Vec::new();
    for required in [false, true] {
        out.push(status(parse_json::<NewSandbox>(body, required)));
        out.push(status(parse_json::<ConnectRequest>(body, required)));
    }
    // Create and set-timeout bodies go straight to serde_json, mapped to 400 the same way.
    out.push(direct(serde_json::from_slice::<NewSandbox>(body).is_ok()));
    out.push(direct(serde_json::from_slice::<TimeoutRequest>(body).is_ok()));
    out
}

fn strings() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(any::<String>(), any::<String>(), 0..4)
}

/// A create body as an SDK might send it.
fn create_body() -> impl Strategy<Value = Value> {
    (
        any::<String>(),
        any::<Option<i64>>(),
        prop::option::of(strings()),
        prop::option::of(strings()),
        any::<[Option<bool>; 3]>(),
    )
        .prop_map(|(template, timeout, metadata, envs, [secure, internet, pause])| {
            json!({
                "templateID": template, "timeout": timeout, "metadata": metadata, "envVars": envs,
                "secure": secure, "allow_internet_access": internet, "autoPause": pause,
            })
        })
}

/// Bodies: arbitrary bytes, and create bodies with bytes replaced, inserted or removed.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        text_bytes(256),
        (create_body(), prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 1..6)).prop_map(|(v, edits)| {
            let mut b = v.to_string().into_bytes();
            for (at, kind, byte) in edits {
                let i = at % (b.len() + 1);
                match kind {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => b.push(byte),
                }
            }
            b
        }),
    ]
}

proptest! {
    #![proptest_config(config(1))]

    /// Any body is either read or refused with a 400, never a panic or another status.
    #[test]
    fn bad_bodies_are_400(body in bodies()) {
        for s in statuses(&body) {
            prop_assert!(s == StatusCode::OK || s == StatusCode::BAD_REQUEST, "{}", s);
        }
    }

}

proptest! {
    #![proptest_config(config(8))]

    /// Deep nesting is refused with a 400 (serde_json's recursion limit), not a stack overflow.
    #[test]
    fn deep_nesting_is_400(depth in 0usize..20_000, open in prop::sample::select(vec!["[", "{\"a\":", "{\"metadata\":"])) {
        let close = if open == "[" { "]" } else { "}" };
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        for s in statuses(body.as_bytes()) {
            prop_assert!(s == StatusCode::OK || s == StatusCode::BAD_REQUEST, "{}", s);
        }
        if depth > 128 {
            prop_assert_eq!(parse_json::<NewSandbox>(body.as_bytes(), true).map_err(|e| e.status()).err(), Some(StatusCode::BAD_REQUEST));
        }
    }

    /// An empty (or blank) body is the default when optional and a 400 when required.
    #[test]
    fn blank_bodies(blank in "[ \t\r\n]{0,8}") {
        prop_assert_eq!(parse_json::<ConnectRequest>(blank.as_bytes(), false).ok().map(|r| (r.timeout, r.duration)), Some((None, None)));
        prop_assert_eq!(parse_json::<NewSandbox>(blank.as_bytes(), true).map_err(|e| e.status()).err(), Some(StatusCode::BAD_REQUEST));
    }

    /// Create bodies are read field for field.
    #[test]
    fn create_bodies_round_trip(v in create_body()) {
        let r: NewSandbox = parse_json(v.to_string().as_bytes(), true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&r.template_id, &v["templateID"]);
        prop_assert_eq!(json!(r.timeout), v["timeout"].clone());
        prop_assert_eq!(json!(r.metadata), v["metadata"].clone());
        prop_assert_eq!(json!(r.env_vars), v["envVars"].clone());
        prop_assert_eq!(json!([r.secure, r.allow_internet_access, r.auto_pause]), json!([v["secure"], v["allow_internet_access"], v["autoPause"]]));
    }
}
