//! Property-based fuzzing of the parsers that read bytes from untrusted peers (the guest, SDK
//! clients, QEMU): the tests are in `tests/parsers/`. This library holds what they share.
//!
//! Case counts are small by default so that the tests run in CI in a few seconds; set
//! `PROPTEST_CASES` for a long run (see `README.md`).

#![forbid(unsafe_code)]

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Default cases per property in CI.
pub const DEFAULT_CASES: u32 = 256;

/// The run's case count: `PROPTEST_CASES`, else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES)
}

/// The proptest configuration of a property that costs `weight` ordinary cases each (heavy
/// properties run proportionally fewer cases, at least one). Failures are not persisted to
/// files: a failure found is added as an explicit regression test instead.
pub fn config(weight: u32) -> Config {
    Config {
        cases: (cases() / weight.max(1)).max(1),
        failure_persistence: None,
        max_global_rejects: u32::MAX,
        ..Config::default()
    }
}

/// Splits `data` at the given cut points (taken modulo its length, in any order) into the
/// chunks a peer might deliver, empty chunks included.
pub fn chunk<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut prev = 0;
    for a in at {
        chunks.push(&data[prev..a]);
        prev = a;
    }
    chunks.push(&data[prev..]);
    chunks
}

/// Cut points for [`chunk`].
pub fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..8)
}

/// Bytes biased towards what parsers look for: mostly printable ASCII, some structure
/// characters and some arbitrary bytes.
pub fn text_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => 0x20u8..0x7f,
            2 => prop::sample::select(b"0123456789-:.,=&%+ \r\n\t{}[]\"\\".to_vec()),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_data_in_order() {
        let data = b"abcdef";
        assert_eq!(chunk(data, &[]), vec![&data[..]]);
        assert_eq!(chunk(data, &[4, 2, 13]), vec![&b"ab"[..], b"cd", b"ef", b""]);
        assert_eq!(chunk(data, &[6, 0]).concat(), data);
    }
}
