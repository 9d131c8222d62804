//! RFC 3339 timestamps (`envd-proto::time`): the agent parses the host's time in `/init`.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_envd_proto::time::{parse_rfc3339, rfc3339};
use ember_fuzz::config;
use proptest::prelude::*;

/// 9999-12-31T23:59:59Z, the last second with a four-digit year.
const MAX_SECS: u64 = 253_402_300_799;

fn instant() -> impl Strategy<Value = SystemTime> {
    (0..=MAX_SECS, 0u32..1_000_000_000).prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
}

/// Whether `s` has the shape `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` with digits where digits
/// belong, a real calendar date and in-range fields: the only strings the parser may accept.
fn well_formed(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let value = |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<u32>().ok()).unwrap_or(u32::MAX);
    if b.len() < 20
        || !(digits(0..4) && digits(5..7) && digits(8..10) && digits(11..13) && digits(14..16) && digits(17..19))
        || (b[4], b[7], b[13], b[16]) != (b'-', b'-', b':', b':')
        || !matches!(b[10], b'T' | b't' | b' ')
    {
        return false;
    }
    let (y, mo, d) = (value(0..4), value(5..7), value(8..10));
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if d == 0 || d > month_days || value(11..13) > 23 || value(14..16) > 59 || value(17..19) > 60 {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        b"Z" | b"z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
                && (h1 - b'0') * 10 + (h2 - b'0') <= 23
                && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    }
}

/// Strings close to timestamps: a formatted one with characters replaced, inserted or removed,
/// or a valid head followed by arbitrary characters (multi-byte ones included).
fn near_timestamps() -> impl Strategy<Value = String> {
    let edit = (
        any::<usize>(),
        0u8..3,
        prop::sample::select(vec!['0', '9', '+', '-', ':', '.', 'Z', 'T', ' ', 'é', '€', '𝄞', '\0']),
    );
    prop_oneof![
        (instant(), prop::collection::vec(edit, 1..4)).prop_map(|(t, edits)| {
            let mut chars: Vec<char> = rfc3339(t).chars().collect();
            for (at, kind, c) in edits {
                let i = at % (chars.len() + 1);
                match kind {
                    0 if i < chars.len() => chars[i] = c,
                    1 => chars.insert(i, c),
                    _ if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ => chars.push(c),
                }
            }
            chars.into_iter().collect()
        }),
        (instant(), "(\\.[0-9]{0,12})?", "[-+0-9:Zz.é€𝄞]{0,8}")
            .prop_map(|(t, frac, tail)| { format!("{}{frac}{tail}", &rfc3339(t)[..19]) }),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(1))]

    /// Formatting then parsing gives the same instant, to the nanosecond.
    #[test]
    fn format_then_parse_round_trips(t in instant()) {
        prop_assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }

    /// The same instant written with any offset (and fewer fraction digits) parses the same.
    #[test]
    fn offsets_are_applied(t in instant(), east in any::<bool>(), h in 0i64..24, m in 0i64..60, digits in 0usize..10) {
        let offset = (h * 3600 + m * 60) * if east { 1 } else { -1 };
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64 + offset;
        prop_assume!((0..=MAX_SECS as i64).contains(&secs));
        let nanos = t.duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let truncated = nanos / 10u32.pow(9 - digits as u32) * 10u32.pow(9 - digits as u32);
        let local = rfc3339(UNIX_EPOCH + Duration::new(secs as u64, 0));
        let frac = if digits == 0 { String::new() } else { format!(".{:09}", truncated)[..=digits].to_string() };
        let s = format!("{}{frac}{}{h:02}:{m:02}", &local[..19], if east { '+' } else { '-' });
        let expected = UNIX_EPOCH + Duration::new((secs - offset) as u64, truncated);
        prop_assert_eq!(parse_rfc3339(&s), Some(expected), "{}", s);
    }

    /// Near-timestamps and arbitrary strings never panic, and only well-formed ones are accepted.
    #[test]
    fn only_well_formed_strings_are_accepted(s in near_timestamps()) {
        if parse_rfc3339(&s).is_some() {
            prop_assert!(well_formed(&s), "accepted {:?}", s);
        }
    }
}

#[test]
fn the_checker_knows_a_timestamp() {
    assert!(well_formed("2026-11-28T05:24:05.123+02:00"));
    assert!(well_formed("2024-02-29T00:00:00Z"));
    assert!(!well_formed("2026-02-29T00:00:00Z"));
    assert!(!well_formed("2026-01-01T-1:00:00Z"));
    assert!(!well_formed("2026-01-01T00:00:00+24:00"));
}

/// Inputs the properties above found (fixed in `parse_rfc3339`).
#[test]
fn regressions() {
    // Panicked: slicing the offset inside a multi-byte character.
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00-Z€+"), None);
    // Accepted: a sign taken as part of the seconds.
    assert_eq!(parse_rfc3339("2260-11-01T00:00:+0.000000000Z"), None);
}
