//! DNS messages from the guest and from upstream resolvers (`net::dns`): guest queries, the
//! answers built from them, and A answers.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use ember_fuzz::config;
use ember_net::dns::{
    build_a_query, error_answer, parse_a_answer, parse_query, reject_answer, DnsError, Reject, REFUSED, SERVFAIL,
};
use proptest::prelude::*;
use std::net::Ipv4Addr;

/// Host names the client may ask: 1 to 5 labels of letters, digits, `-` and `_`, mixed case,
/// sometimes with a trailing dot.
fn host_name() -> impl Strategy<Value = String> {
    (prop::collection::vec("[a-zA-Z0-9_-]{1,63}", 1..5), any::<bool>())
        .prop_filter("255 bytes at most in wire form", |(labels, _)| {
            labels.iter().map(|l| l.len() + 1).sum::<usize>() < 255
        })
        .prop_map(|(labels, dot)| labels.join(".") + if dot { "." } else { "" })
}

/// Messages shaped like queries and answers (a header with small counts, then labels,
/// compression pointers and arbitrary bytes), and plain arbitrary bytes.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => "[a-z]{0,10}".prop_map(|l| [vec![u8::try_from(l.len()).unwrap()], l.into_bytes()].concat()),
        1 => (0xC0u8..=0xFF, any::<u8>()).prop_map(|(a, b)| vec![a, b]),
        1 => Just(vec![0]),
        2 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    let header = (any::<u16>(), any::<u16>(), 0u8..3, 0u8..4).prop_map(|(id, flags, qd, an)| {
        [id.to_be_bytes(), flags.to_be_bytes(), [0, qd], [0, an], [0, 0], [0, 0]].concat()
    });
    prop_oneof![
        (header, prop::collection::vec(piece, 0..12)).prop_map(|(h, p)| [h, p.concat()].concat()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// An answer to `query` giving `ips`, each A record named by a pointer to the question.
fn a_answer(query: &[u8], ips: &[Ipv4Addr]) -> Vec<u8> {
    let mut msg = query.to_vec();
    msg[2] |= 0x80;
    msg[3] |= 0x80;
    msg[6..8].copy_from_slice(&u16::try_from(ips.len()).unwrap().to_be_bytes());
    for ip in ips {
        msg.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        msg.extend_from_slice(&ip.octets());
    }
    msg
}

proptest! {
    #![proptest_config(config(1))]

    /// Any guest message is a query, dropped, or answered with a bare header; a query's
    /// refusal is an answer to it that reads back as REFUSED.
    #[test]
    fn guest_messages_never_panic(msg in message()) {
        match parse_query(&msg) {
            Ok(q) => {
                prop_assert!(q.name.len() <= 4 * 255 && !q.name.ends_with('.'));
                prop_assert!(q.name.bytes().all(|b| !b.is_ascii_uppercase()));
                let refused = error_answer(&q, REFUSED);
                prop_assert!(matches!(parse_a_answer(&refused, "a.test"), Err(DnsError::Rcode(REFUSED))));
                prop_assert_eq!(&refused[..2], &msg[..2]);
                prop_assert_eq!(error_answer(&q, SERVFAIL)[3] & 0xF, SERVFAIL);
            }
            Err(Reject::Drop) => prop_assert_eq!(reject_answer(&msg, Reject::Drop), None),
            Err(r @ Reject::Answer(code)) => {
                let answer = reject_answer(&msg, r).unwrap();
                prop_assert_eq!(answer.len(), 12);
                prop_assert_eq!(answer[3] & 0xF, code);
            }
        }
    }

    /// Any upstream answer parses or fails, whatever name is asked.
    #[test]
    fn upstream_answers_never_panic(msg in message(), name in host_name()) {
        let _ = parse_a_answer(&msg, &name);
        let _ = parse_a_answer(&msg, "");
    }

    /// A built query reads back as the same name (lower case, no trailing dot), type A.
    #[test]
    fn built_queries_parse_back(id in any::<u16>(), name in host_name()) {
        let query = build_a_query(id, &name).unwrap();
        let q = parse_query(&query).unwrap();
        prop_assert_eq!(q.id, id);
        prop_assert_eq!(q.name, name.trim_end_matches('.').to_ascii_lowercase());
        prop_assert_eq!((q.qtype, q.qclass), (1, 1));
    }

    /// An answer's addresses are read back; cut short it fails; any byte changed, it does not panic.
    #[test]
    fn a_answers_parse_back(
        name in host_name(),
        ips in prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 0..6),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let answer = a_answer(&build_a_query(7, &name).unwrap(), &ips);
        prop_assert_eq!(parse_a_answer(&answer, &name.to_ascii_uppercase()).unwrap(), ips.clone());
        if !ips.is_empty() {
            prop_assert!(parse_a_answer(&answer[..answer.len() - 1], &name).is_err());
        }
        let mut mangled = answer.clone();
        let at = at % mangled.len();
        mangled[at] = byte;
        let _ = parse_a_answer(&mangled, &name);
        let _ = parse_query(&mangled);
    }
}
