//! QMP messages from QEMU (`vmm::qmp::read_message`): JSON lines of at most 1 MiB.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use ember_fuzz::{config, text_bytes};
use ember_vmm::qmp::{read_message, QmpError, MAX_LINE};
use futures_util::FutureExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::BufReader;

/// Reads messages from `data` through a buffer of `capacity` bytes until an error; in-memory
/// input never blocks, so every read completes on its first poll.
fn read_all(data: &[u8], capacity: usize) -> (Vec<Value>, QmpError) {
    let mut reader = BufReader::with_capacity(capacity, data);
    let mut messages = Vec::new();
    loop {
        match read_message(&mut reader).now_or_never() {
            Some(Ok(v)) => messages.push(v),
            Some(Err(e)) => return (messages, e),
            None => return (messages, QmpError::Malformed("the reader blocked on in-memory input".into())),
        }
    }
}

/// JSON values without floats (whose text form need not round-trip exactly).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config(1))]

    /// Arbitrary bytes never panic; reading stops at an error (at the latest, end of input).
    #[test]
    fn arbitrary_bytes_never_panic(data in text_bytes(512), capacity in 1usize..64) {
        let (messages, _) = read_all(&data, capacity);
        prop_assert!(messages.len() <= data.iter().filter(|b| **b == b'\n').count());
    }

    /// Messages, one per line (`\n` or `\r\n`), are read back in order whatever the buffering,
    /// and the end of input is reported as a closed connection.
    #[test]
    fn messages_round_trip(values in prop::collection::vec(json_value(), 0..5), crlf in any::<bool>(), capacity in 1usize..64) {
        let end = if crlf { "\r\n" } else { "\n" };
        let data: String = values.iter().map(|v| format!("{v}{end}")).collect();
        let (got, err) = read_all(data.as_bytes(), capacity);
        prop_assert_eq!(got, values);
        prop_assert!(matches!(err, QmpError::Closed), "{:?}", err);
    }
}

proptest! {
    #![proptest_config(config(16))]

    /// A line is accepted up to exactly 1 MiB and refused beyond, with or without its newline
    /// arriving, whatever the buffering.
    #[test]
    fn lines_past_one_mebibyte_are_refused(delta in -3i64..=3, newline in any::<bool>(), capacity in prop_oneof![Just(8192usize), 1usize..70_000]) {
        let len = (MAX_LINE as i64 + delta) as usize;
        let mut line = json!({ "return": "" }).to_string().into_bytes();
        let pad = len - line.len();
        line.truncate(line.len() - 2);
        line.resize(line.len() + pad, b'x');
        line.extend_from_slice(b"\"}");
        prop_assert_eq!(line.len(), len);
        if newline {
            line.push(b'\n');
        }
        let mut reader = BufReader::with_capacity(capacity, &line[..]);
        let result = read_message(&mut reader).now_or_never();
        match result {
            Some(Ok(v)) => prop_assert!(len <= MAX_LINE && newline && v["return"].as_str().map(str::len) == Some(pad)),
            Some(Err(QmpError::Malformed(m))) => prop_assert!(len > MAX_LINE && m.contains("longer than"), "{}", m),
            Some(Err(QmpError::Closed)) => prop_assert!(len <= MAX_LINE && !newline),
            other => prop_assert!(false, "{:?}", other.map(|r| r.map(|_| ()))),
        }
    }
}
