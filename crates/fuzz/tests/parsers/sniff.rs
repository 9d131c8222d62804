//! The host a guest's connection names (`net::sniff`): HTTP/1.x `Host` and TLS SNI, read from
//! the first bytes of connections the egress proxy takes.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use ember_fuzz::{config, text_bytes};
use ember_net::sniff::{http_host, tls_sni, Sniff, MAX_HEAD};
use proptest::prelude::*;

/// Host names: 1 to 4 labels of letters, digits, `-` and `_`, mixed case.
fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_-]{1,63}", 1..4).prop_map(|labels| labels.join("."))
}

fn vec16(body: &[u8]) -> Vec<u8> {
    [&u16::try_from(body.len()).unwrap().to_be_bytes()[..], body].concat()
}

/// A ClientHello naming `host`, between `before` and `after` other extensions, its handshake
/// message cut into records of `record` bytes.
fn client_hello(host: &str, before: &[(u16, Vec<u8>)], after: &[(u16, Vec<u8>)], record: usize) -> Vec<u8> {
    let sni = vec16(&[&[0u8][..], &vec16(host.as_bytes())].concat());
    let mut exts = Vec::new();
    for (kind, data) in before.iter().chain([(0, sni)].iter()).chain(after) {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&vec16(data));
    }
    let body = [&[3u8, 3][..], &[7; 32], &[0], &vec16(&[0x13, 0x01]), &[1, 0], &vec16(&exts)].concat();
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let handshake = [&[1u8, len[1], len[2], len[3]][..], &body].concat();
    handshake.chunks(record).flat_map(|c| [&[22u8, 3, 1][..], &vec16(c)].concat()).collect()
}

/// Extensions other than server_name.
fn extensions() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec((1u16..=0xFFFF, prop::collection::vec(any::<u8>(), 0..40)), 0..4)
}

/// Header lines other than Host.
fn headers() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..5).prop_map(|v| {
        v.into_iter().filter(|(n, _)| !n.eq_ignore_ascii_case("host")).map(|(n, v)| format!("{n}: {v}")).collect()
    })
}

proptest! {
    #![proptest_config(config(1))]

    /// Arbitrary bytes never panic; what is found stays found with more bytes after it.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop_oneof![text_bytes(256), prop::collection::vec(any::<u8>(), 0..256)], more in text_bytes(16)) {
        for sniff in [http_host, tls_sni] {
            if let Sniff::Found(host) = sniff(&data) {
                prop_assert!(!host.is_empty() && !host.bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert_eq!(sniff(&[&data[..], &more].concat()), Sniff::Found(host));
            }
        }
    }

    /// Requests with a Host header name it (lower case, without port); every prefix of their
    /// head asks for more.
    #[test]
    fn http_requests_name_their_host(
        host in host_name(),
        port in prop::option::of(any::<u16>()),
        before in headers(),
        after in headers(),
        body in text_bytes(32),
    ) {
        let host_line = match port { Some(p) => format!("Host: {host}:{p}"), None => format!("host:{host}") };
        let lines = [vec!["GET /path?q HTTP/1.1".to_string()], before, vec![host_line], after].concat();
        let head = lines.join("\r\n") + "\r\n\r\n";
        let request = [head.as_bytes(), &body].concat();
        prop_assert_eq!(http_host(&request), Sniff::Found(host.to_ascii_lowercase()));
        prop_assert_eq!(tls_sni(&request), Sniff::Invalid);
        for cut in 0..head.len() - 1 {
            prop_assert_eq!(http_host(&request[..cut]), Sniff::NeedMore, "{}", cut);
        }
    }

    /// A ClientHello built around any host name sniffs back to it, whatever its split into
    /// records; every prefix asks for more; any byte changed never panics.
    #[test]
    fn client_hellos_name_their_host(
        host in host_name(),
        before in extensions(),
        after in extensions(),
        record in prop_oneof![1usize..64, Just(1 << 14)],
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let hello = client_hello(&host, &before, &after, record);
        prop_assume!(hello.len() < MAX_HEAD);
        prop_assert_eq!(tls_sni(&hello), Sniff::Found(host.to_ascii_lowercase()));
        prop_assert_eq!(http_host(&hello), Sniff::Invalid);
        for cut in 0..hello.len() {
            prop_assert_eq!(tls_sni(&hello[..cut]), Sniff::NeedMore, "{}", cut);
        }
        let mut mangled = hello;
        let at = at % mangled.len();
        mangled[at] = byte;
        let _ = tls_sni(&mangled);
    }
}
