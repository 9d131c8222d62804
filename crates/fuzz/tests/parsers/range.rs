//! The `Range` header of `/files` downloads (`agent::files::range`).

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use ember_agent::files::range;
use ember_fuzz::{config, text_bytes};
use http::{header, HeaderMap, HeaderValue};
use proptest::prelude::*;

fn with_range(value: &[u8]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, HeaderValue::from_bytes(value).ok()?);
    Some(headers)
}

/// File sizes, small and huge.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, any::<u64>(), Just(u64::MAX)]
}

/// Range values: arbitrary bytes, and well-shaped ones with arbitrary numbers.
fn range_value() -> impl Strategy<Value = Vec<u8>> {
    let num = prop_oneof![
        Just(String::new()),
        (0u64..80).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9 +-]{1,22}"
    ];
    prop_oneof![
        text_bytes(40).prop_map(|b| [b"bytes=".to_vec(), b].concat()),
        text_bytes(40),
        (num.clone(), num, "[ ]{0,2}", prop::sample::select(vec!["bytes=", "bytes =", "Bytes=", ""]))
            .prop_map(|(a, b, sp, unit)| format!("{unit}{a}{sp}-{sp}{b}").into_bytes()),
    ]
}

proptest! {
    #![proptest_config(config(1))]

    /// Any header never panics, and an accepted range lies within the file: start <= end < size.
    #[test]
    fn accepted_ranges_lie_within_the_file(value in range_value(), len in size()) {
        let Some(headers) = with_range(&value) else { return Ok(()) };
        if let Some(Ok((start, end))) = range(&headers, len) {
            prop_assert!(start <= end && end < len, "{:?} of {} gave {}-{}", String::from_utf8_lossy(&value), len, start, end);
        }
    }

    /// Well-formed ranges are read exactly, clamped to the file, and refused past its end.
    #[test]
    fn well_formed_ranges_are_read(a in 0u64..100, b in 0u64..100, len in 0u64..100) {
        let r = |v: String| range(&with_range(v.as_bytes()).unwrap_or_default(), len);
        let last = len.checked_sub(1);
        prop_assert_eq!(r(format!("bytes={a}-{b}")), Some(if a <= b && a < len { Ok((a, b.min(len - 1))) } else { Err(()) }));
        prop_assert_eq!(r(format!("bytes={a}-")), Some(match last { Some(l) if a <= l => Ok((a, l)), _ => Err(()) }));
        let suffix = match last { Some(l) if b > 0 => Ok((len.saturating_sub(b), l)), _ => Err(()) };
        prop_assert_eq!(r(format!("bytes=-{b}")), Some(suffix));
        // Several ranges are not supported: the whole file is sent.
        prop_assert_eq!(r(format!("bytes={a}-{b},{b}-")), None);
    }
}
