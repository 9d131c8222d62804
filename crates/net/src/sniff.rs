//! The host a guest's connection names before it is let out: the `Host` header of an HTTP/1.x
//! request ([`http_host`]) or the server name of a TLS ClientHello ([`tls_sni`]). The egress
//! proxy reads a connection's first bytes into a buffer and asks again as they arrive.
//!
//! Both parsers are pure and strict, since the bytes come from a hostile guest: they look at
//! most [`MAX_HEAD`] bytes, accept one plain host name only (letters, digits, `-`, `_`, dots),
//! and call anything ambiguous (two `Host` headers, two server names, an absolute request
//! target that could name another host) invalid.

#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

/// Most bytes of a connection read to find its host.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request method accepted.
const MAX_METHOD: usize = 32;
/// Longest host name (a DNS name in text form).
const MAX_HOST: usize = 253;
/// TLS record types and limits.
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const MAX_RECORD: usize = 1 << 14;
const SERVER_NAME: u16 = 0;

/// What the bytes so far say about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// The host, lower case, without port or trailing dot.
    Found(String),
    /// Not yet known: read more (unless [`MAX_HEAD`] bytes are in already).
    NeedMore,
    /// Not a request naming exactly one host, or none within [`MAX_HEAD`] bytes.
    Invalid,
}

/// `NeedMore`, or `Invalid` once `MAX_HEAD` bytes have not sufficed.
fn undecided(len: usize) -> Sniff {
    if len >= MAX_HEAD {
        Sniff::Invalid
    } else {
        Sniff::NeedMore
    }
}

/// A host name as text: one trailing dot dropped; labels of 1 to 63 letters, digits, `-` and
/// `_`; 253 bytes at most. Or an IPv6 literal in brackets, kept with them (no domain rule
/// matches it). Lower case.
fn host_name(raw: &[u8]) -> Option<String> {
    let (name, ok) = match raw.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]")) {
        Some(v6) => {
            (raw, !v6.is_empty() && v6.len() <= 45 && v6.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b)))
        }
        None => {
            let name = raw.strip_suffix(b".").unwrap_or(raw);
            let label_ok = |l: &[u8]| {
                !l.is_empty() && l.len() <= 63 && l.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            (name, !name.is_empty() && name.len() <= MAX_HOST && name.split(|&b| b == b'.').all(label_ok))
        }
    };
    ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// RFC 9110's `tchar`: what a method or header name is made of.
fn is_tchar(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn method_ok(method: &[u8]) -> bool {
    !method.is_empty() && method.len() <= MAX_METHOD && method.iter().all(is_tchar)
}

/// A whole request line: `METHOD SP TARGET SP HTTP/1.x`, the target in origin form (`/...`) or
/// `*` (an absolute target would name a host of its own).
fn request_line_ok(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    method_ok(method)
        && (target.starts_with(b"/") || target == b"*")
        && target.iter().all(|&b| b.is_ascii_graphic())
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Whether an unfinished request line can still become a valid one (so garbage is refused at
/// once rather than after the deadline).
fn request_prefix_ok(partial: &[u8]) -> bool {
    match partial.iter().position(|&b| b == b' ') {
        None => partial.len() <= MAX_METHOD && partial.iter().all(is_tchar),
        Some(sp) => method_ok(&partial[..sp]) && partial.get(sp + 1).is_none_or(|&b| b == b'/' || b == b'*'),
    }
}

/// The host of a `Host` value, `host[:port]` or `[v6]:port`.
fn host_value(value: &[u8]) -> Option<String> {
    let port_ok = |rest: &[u8]| match rest.strip_prefix(b":") {
        None => rest.is_empty(),
        Some(digits) => !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
    };
    let split = if value.starts_with(b"[") {
        value.iter().position(|&b| b == b']').map_or(value.len(), |end| end + 1)
    } else {
        value.iter().position(|&b| b == b':').unwrap_or(value.len())
    };
    let (host, rest) = value.split_at(split);
    if port_ok(rest) {
        host_name(host)
    } else {
        None
    }
}

/// The host named by the `Host` header of an HTTP/1.x request whose head starts `buf`. The whole
/// head must be in (so that a second `Host` is seen); header names must be tokens directly
/// followed by `:` (so no folded line or `Host :` slips past).
pub fn http_host(buf: &[u8]) -> Sniff {
    let buf = buf.get(..MAX_HEAD).unwrap_or(buf);
    let mut lines = buf.split_inclusive(|&b| b == b'\n');
    let Some(first) = lines.next() else { return undecided(buf.len()) };
    if !first.ends_with(b"\n") {
        return if request_prefix_ok(first) { undecided(buf.len()) } else { Sniff::Invalid };
    }
    if !request_line_ok(trim_eol(first)) {
        return Sniff::Invalid;
    }
    let mut host = None;
    for line in lines {
        if !line.ends_with(b"\n") {
            break;
        }
        let line = trim_eol(line);
        if line.is_empty() {
            return host.map_or(Sniff::Invalid, Sniff::Found);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { return Sniff::Invalid };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(is_tchar) {
            return Sniff::Invalid;
        }
        if name.eq_ignore_ascii_case(b"host") {
            let value = value.trim_ascii();
            match host_value(value) {
                Some(h) if host.is_none() => host = Some(h),
                _ => return Sniff::Invalid,
            }
        }
    }
    undecided(buf.len())
}

/// A cursor over TLS's length-prefixed structures.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.buf.get(..n)?, self.buf.get(n..)?);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn done(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The ClientHello's body, reassembled from the handshake records at the start of `buf`:
/// `Ok(None)` while incomplete, `Err` when the bytes are not (the start of) one.
fn reassemble(buf: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if handshake.first().is_some_and(|&t| t != CLIENT_HELLO) {
            return Err(());
        }
        if let Some(len) = handshake.get(1..4) {
            let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
            if len + 4 > MAX_HEAD {
                return Err(());
            }
            if let Some(body) = handshake.get(4..4 + len) {
                return Ok(Some(body.to_vec()));
            }
        }
        let Some(header) = rest.get(..5) else {
            // Only the part of a record header that is in can be checked.
            let ok = rest.first().is_none_or(|&t| t == HANDSHAKE) && rest.get(1).is_none_or(|&v| v == 3);
            return if ok { Ok(None) } else { Err(()) };
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != HANDSHAKE || header[1] != 3 || len == 0 || len > MAX_RECORD {
            return Err(());
        }
        let Some(fragment) = rest.get(5..5 + len) else { return Ok(None) };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];
    }
}

/// The host_name of a ClientHello body's server_name extension (RFC 8446 4.1.2, RFC 6066 3).
fn hello_server_name(body: &[u8]) -> Option<String> {
    let mut r = Reader { buf: body };
    r.take(2 + 32)?; // legacy_version, random
    if r.vec8()?.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 || r.vec8()?.is_empty() {
        return None;
    }
    let mut extensions = Reader { buf: r.vec16()? };
    if !r.done() {
        return None;
    }
    let mut host = None;
    while !extensions.done() {
        let (kind, data) = (extensions.u16()?, extensions.vec16()?);
        if kind == SERVER_NAME {
            if host.is_some() {
                return None;
            }
            host = Some(server_name(data)?);
        }
    }
    host
}

/// The one host_name of a server_name extension's data.
fn server_name(data: &[u8]) -> Option<String> {
    let mut r = Reader { buf: data };
    let mut list = Reader { buf: r.vec16()? };
    if !r.done() {
        return None;
    }
    let mut host = None;
    while !list.done() {
        let (kind, name) = (list.u8()?, list.vec16()?);
        if kind == 0 {
            if host.is_some() || name.starts_with(b"[") {
                return None;
            }
            host = Some(host_name(name)?);
        }
    }
    host
}

/// The server name (SNI) of the TLS ClientHello at the start of `buf`, which may span several
/// handshake records (at most [`MAX_HEAD`] bytes in all). A ClientHello without one is invalid.
pub fn tls_sni(buf: &[u8]) -> Sniff {
    let buf = buf.get(..MAX_HEAD).unwrap_or(buf);
    match reassemble(buf) {
        Ok(Some(body)) => hello_server_name(&body).map_or(Sniff::Invalid, Sniff::Found),
        Ok(None) => undecided(buf.len()),
        Err(()) => Sniff::Invalid,
    }
}

/// Test helpers: a ClientHello built field by field.
#[cfg(test)]
pub(crate) mod build {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A ClientHello body with these extensions (type, data).
    pub(crate) fn hello_body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.extend_from_slice(&[32]);
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&vec16(&[0x13, 0x01, 0x13, 0x02]));
        b.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        for (kind, data) in extensions {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&vec16(data));
        }
        b.extend_from_slice(&vec16(&exts));
        b
    }

    /// A server_name extension's data naming `hosts` (type 0 each).
    pub(crate) fn sni(hosts: &[&str]) -> Vec<u8> {
        let list: Vec<u8> = hosts.iter().flat_map(|h| [vec![0], vec16(h.as_bytes())].concat()).collect();
        vec16(&list)
    }

    /// The handshake message of `body` cut into records of at most `record` bytes.
    pub(crate) fn records(body: &[u8], record: usize) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let handshake = [&[1u8, len[1], len[2], len[3]][..], body].concat();
        handshake
            .chunks(record)
            .flat_map(|c| [&[22u8, 3, 1][..], &u16::try_from(c.len()).unwrap().to_be_bytes(), c].concat())
            .collect()
    }

    /// A ClientHello for `host` in one record, with a few other extensions around its SNI.
    pub(crate) fn client_hello(host: &str) -> Vec<u8> {
        records(&hello_body(&[(10, vec![0, 2, 0, 29]), (0, sni(&[host])), (43, vec![2, 3, 4])]), 1 << 14)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn found(h: &str) -> Sniff {
        Sniff::Found(h.into())
    }

    #[test]
    fn http_hosts_are_found() {
        let req = b"GET /x?y HTTP/1.1\r\nUser-Agent: t\r\nHOST:  Example.COM.:8080 \r\nAccept: */*\r\n\r\nbody";
        assert_eq!(http_host(req), found("example.com"));
        assert_eq!(http_host(b"OPTIONS * HTTP/1.0\nHost: a.test\n\n"), found("a.test"));
        assert_eq!(http_host(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n"), found("[2001:db8::1]"));
        // Every prefix of a good request asks for more; never a wrong answer.
        for cut in 0..req.len() - 6 {
            assert_eq!(http_host(&req[..cut]), Sniff::NeedMore, "{cut}");
        }
    }

    #[test]
    fn odd_http_is_invalid() {
        for bad in [
            &b"\x16\x03\x01"[..],
            b"GET http://other.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a.test\r\n\r\n",
            b"GET /  HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: y\r\n Host: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:80x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a..test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET x",
        ] {
            assert_eq!(http_host(bad), Sniff::Invalid, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(http_host(&[b'G'; MAX_METHOD + 1]), Sniff::Invalid);
        let long = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; MAX_HEAD]].concat();
        assert_eq!(http_host(&long), Sniff::Invalid);
        assert_eq!(http_host(&long[..MAX_HEAD - 1]), Sniff::NeedMore);
    }

    #[test]
    fn tls_server_names_are_found() {
        let hello = client_hello("API.Example.com");
        assert_eq!(tls_sni(&hello), found("api.example.com"));
        // Trailing bytes (the rest of the handshake) do not matter.
        assert_eq!(tls_sni(&[&hello[..], b"\x17\x03\x03"].concat()), found("api.example.com"));
        for cut in 0..hello.len() {
            assert_eq!(tls_sni(&hello[..cut]), Sniff::NeedMore, "{cut}");
        }
        // Split over records of 1, 7 and 100 bytes: reassembled.
        let body = hello_body(&[(0, sni(&["split.test"]))]);
        for size in [1, 7, 100] {
            let split = records(&body, size);
            assert_eq!(tls_sni(&split), found("split.test"), "{size}");
            for cut in 0..split.len() {
                assert_eq!(tls_sni(&split[..cut]), Sniff::NeedMore, "{size} {cut}");
            }
        }
    }

    #[test]
    fn odd_tls_is_invalid() {
        let one = |exts: &[(u16, Vec<u8>)]| tls_sni(&records(&hello_body(exts), 1 << 14));
        assert_eq!(one(&[]), Sniff::Invalid);
        assert_eq!(one(&[(0, sni(&["a.test"])), (0, sni(&["b.test"]))]), Sniff::Invalid);
        assert_eq!(one(&[(0, sni(&["a.test", "b.test"]))]), Sniff::Invalid);
        assert_eq!(one(&[(0, sni(&["a b"]))]), Sniff::Invalid);
        assert_eq!(one(&[(0, sni(&["[::1]"]))]), Sniff::Invalid);
        assert_eq!(one(&[(0, [sni(&["a.test"]), vec![0]].concat())]), Sniff::Invalid);
        let hello = client_hello("a.test");
        for (at, value) in [(0, 23), (1, 2), (3, 0), (5, 2)] {
            let mut bad = hello.clone();
            bad[at] = value;
            if at == 3 {
                bad[4] = 0; // an empty record
            }
            assert_eq!(tls_sni(&bad), Sniff::Invalid, "{at}");
        }
        // A body over 16 KiB, and records that never finish one within MAX_HEAD bytes.
        assert_eq!(
            tls_sni(&records(&hello_body(&[(0, sni(&["a.test"])), (21, vec![0; 1 << 14])]), 1 << 14)),
            Sniff::Invalid
        );
        let tiny = records(&hello_body(&[(0, sni(&["a.test"])), (21, vec![0; 8000])]), 1);
        assert_eq!(tls_sni(&tiny), Sniff::Invalid);
        assert_eq!(tls_sni(b"GET / HTTP/1.1\r\n"), Sniff::Invalid);
    }

    #[test]
    fn truncations_never_panic() {
        let http = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let mut mangled = client_hello("a.test");
        mangled[60] ^= 0xFF;
        for input in [&http[..], &client_hello("a.test"), &mangled] {
            for cut in 0..=input.len() {
                let _ = (http_host(&input[..cut]), tls_sni(&input[..cut]));
                for at in 0..cut {
                    let mut m = input[..cut].to_vec();
                    m[at] = m[at].wrapping_add(0x41);
                    let _ = (http_host(&m), tls_sni(&m));
                }
            }
        }
    }
}
