//! Ember's DNS service for its guests, and the small DNS client behind it. Every guest names
//! its gateway ([`TAP_IP`](crate::TAP_IP)) as its nameserver; [`serve`] answers there, over UDP
//! and TCP, refusing names the sandbox's policy keeps in ([`EgressPolicy::allows_lookup`]) and
//! forwarding the rest through a [`Resolver`] to the host's resolvers (or the operator's).
//! The egress proxy resolves the hosts it dials with [`Resolver::lookup_v4`].
//!
//! The wire format is parsed by hand and only as far as needed (a header, one question, A and
//! CNAME records): every query comes from a hostile guest, so sizes, counts, name lengths,
//! compression pointers and time are all bounded.
//!
//! [`EgressPolicy::allows_lookup`]: crate::policy::EgressPolicy::allows_lookup

#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::debug;

use crate::policy::{self, SharedPolicy};

/// Largest UDP query read from the guest; longer datagrams are dropped.
pub const MAX_UDP: usize = 4096;
/// Most queries one service forwards at once (UDP and TCP together); UDP queries beyond are dropped.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most TCP connections one service holds; more are closed at once.
pub const MAX_TCP_CONNS: usize = 16;
/// Longest a TCP connection may take to deliver a whole query, or to take its answer.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most queries one TCP connection may ask.
pub const MAX_TCP_QUERIES: usize = 100;
/// Default time each upstream gets to answer one try.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Response codes Ember answers with itself.
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;

/// Longest name in wire form (RFC 1035), and longest label.
const MAX_NAME: usize = 255;
const MAX_LABEL: usize = 63;
/// Most compression pointers followed in one name.
const MAX_JUMPS: usize = 32;
/// Most CNAMEs followed from the question's name.
const MAX_CNAMES: usize = 16;
/// Nameservers used from resolv.conf (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
const QR: u16 = 0x8000;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// A DNS failure: a message that does not parse, a name that cannot be asked, or an upstream
/// that did not answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("malformed DNS message: {0}")]
    Malformed(&'static str),
    #[error("invalid DNS name '{0}'")]
    BadName(String),
    #[error("no upstream DNS server configured")]
    NoUpstream,
    #[error("DNS server {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("DNS server {0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("DNS server answered with response code {0}")]
    Rcode(u8),
}

/// The nameservers of the host's `/etc/resolv.conf` (port 53); none when it cannot be read.
/// Loopback resolvers (systemd-resolved's 127.0.0.53) are kept: the daemon that asks them runs
/// in the host's namespace.
pub fn host_resolvers() -> Vec<SocketAddr> {
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => parse_resolv_conf(&text),
        Err(e) => {
            debug!("cannot read /etc/resolv.conf: {e}");
            Vec::new()
        }
    }
}

/// The `nameserver` addresses of a resolv.conf text, at most three (as glibc), port 53.
/// Comments (`#`, `;`) and entries that are not plain IP addresses (scoped IPv6) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| SocketAddr::new(ip, crate::DNS_PORT))
        .take(MAX_NAMESERVERS)
        .collect()
}

/// A guest's query, as far as Ember reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// The question's name: lower case, no trailing dot (the root is empty); bytes other than
    /// letters, digits, `-` and `_` written `\DDD`, so that no odd label reads as a domain rule.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The name in uncompressed wire form, as asked (for answers built from the query).
    wire_name: Vec<u8>,
}

/// Why a guest's message is not a query Ember forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No answer: shorter than a header, or itself an answer.
    Drop,
    /// An answer with this response code and no question ([`FORMERR`], [`NOTIMP`]).
    Answer(u8),
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at.checked_add(1)?)?]))
}

/// Reads the name at `start`, following compression pointers, each of which must point before
/// everything read so far (so there is no loop) and at most [`MAX_JUMPS`] of them. Returns the
/// uncompressed wire form (at most 255 bytes) and the offset just after the name in place.
fn read_name(msg: &[u8], start: usize) -> Result<(Vec<u8>, usize), DnsError> {
    let short = || DnsError::Malformed("truncated name");
    let (mut wire, mut pos, mut lowest, mut after, mut jumps) = (Vec::new(), start, start, None, 0);
    loop {
        let len = *msg.get(pos).ok_or_else(short)?;
        match len & 0xC0 {
            0 if len == 0 => {
                wire.push(0);
                return Ok((wire, after.unwrap_or(pos + 1)));
            }
            0 => {
                let n = usize::from(len);
                let label = msg.get(pos + 1..pos + 1 + n).ok_or_else(short)?;
                if wire.len() + 1 + n + 1 > MAX_NAME {
                    return Err(DnsError::Malformed("name longer than 255 bytes"));
                }
                wire.push(len);
                wire.extend_from_slice(label);
                pos += 1 + n;
            }
            0xC0 => {
                let low = *msg.get(pos + 1).ok_or_else(short)?;
                let target = usize::from(u16::from_be_bytes([len & 0x3F, low]));
                jumps += 1;
                if target >= lowest || jumps > MAX_JUMPS {
                    return Err(DnsError::Malformed("compression pointer loop"));
                }
                after.get_or_insert(pos + 2);
                lowest = target;
                pos = target;
            }
            _ => return Err(DnsError::Malformed("unknown label type")),
        }
    }
}

/// A wire name as text: lower case, dot-separated, no trailing dot, odd bytes as `\DDD`.
fn presentation(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos).filter(|&&l| l != 0) {
        if !out.is_empty() {
            out.push('.');
        }
        for &b in wire.get(pos + 1..pos + 1 + usize::from(len)).unwrap_or_default() {
            let b = b.to_ascii_lowercase();
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        pos += 1 + usize::from(len);
    }
    out
}

/// A host name in wire form: labels of letters, digits, `-` and `_`, 1 to 63 bytes, 255 bytes
/// in all; one trailing dot is allowed.
fn encode_name(name: &str) -> Result<Vec<u8>, DnsError> {
    let bad = || DnsError::BadName(name.chars().take(MAX_NAME).collect());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        let ok = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let len = u8::try_from(label.len()).ok().filter(|&l| l > 0 && usize::from(l) <= MAX_LABEL && ok);
        wire.push(len.ok_or_else(bad)?);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    if wire.len() > MAX_NAME {
        return Err(bad());
    }
    Ok(wire)
}

/// Reads a guest's message as a query: a 12-byte header with QR clear, opcode QUERY and
/// exactly one question whose name parses. Other sections are not read (they are forwarded as
/// they are).
pub fn parse_query(msg: &[u8]) -> Result<Query, Reject> {
    let (Some(id), Some(flags), Some(qdcount)) = (u16_at(msg, 0), u16_at(msg, 2), u16_at(msg, 4)) else {
        return Err(Reject::Drop);
    };
    if msg.len() < HEADER || flags & QR != 0 {
        return Err(Reject::Drop);
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(Reject::Answer(NOTIMP));
    }
    if qdcount != 1 {
        return Err(Reject::Answer(FORMERR));
    }
    let (wire_name, end) = read_name(msg, HEADER).map_err(|_| Reject::Answer(FORMERR))?;
    let (Some(qtype), Some(qclass)) = (u16_at(msg, end), u16_at(msg, end + 2)) else {
        return Err(Reject::Answer(FORMERR));
    };
    Ok(Query { id, flags, name: presentation(&wire_name), qtype, qclass, wire_name })
}

fn header(id: u16, flags: u16, qdcount: u16, ancount: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    for field in [id, flags, qdcount, ancount, 0, 0] {
        h.extend_from_slice(&field.to_be_bytes());
    }
    h
}

/// The answer to a rejected message: `None` for [`Reject::Drop`], else a bare header with the
/// message's ID, opcode and RD and the response code (no question: it could not be read).
pub fn reject_answer(msg: &[u8], reject: Reject) -> Option<Vec<u8>> {
    let Reject::Answer(rcode) = reject else { return None };
    let (id, flags) = (u16_at(msg, 0)?, u16_at(msg, 2)?);
    Some(header(id, QR | (flags & (0x7800 | RD)) | RA | u16::from(rcode & 0xF), 0, 0))
}

/// An answer to `query` with no records and response code `rcode` ([`REFUSED`], [`SERVFAIL`]):
/// the query's ID and RD, RA set, its question echoed.
pub fn error_answer(query: &Query, rcode: u8) -> Vec<u8> {
    let mut msg = header(query.id, QR | (query.flags & RD) | RA | u16::from(rcode & 0xF), 1, 0);
    msg.extend_from_slice(&query.wire_name);
    msg.extend_from_slice(&query.qtype.to_be_bytes());
    msg.extend_from_slice(&query.qclass.to_be_bytes());
    msg
}

/// A recursive query for the A records of `name` (a host name; see [`Resolver::lookup_v4`]).
pub fn build_a_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut msg = header(id, RD, 1, 0);
    msg.extend_from_slice(&encode_name(name)?);
    msg.extend_from_slice(&TYPE_A.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

/// The question of a message (one question only): ID, lower-case wire name, type and class.
fn question(msg: &[u8]) -> Option<(u16, Vec<u8>, u16, u16)> {
    if msg.len() < HEADER || u16_at(msg, 4)? != 1 {
        return None;
    }
    let (name, end) = read_name(msg, HEADER).ok()?;
    Some((u16_at(msg, 0)?, name.to_ascii_lowercase(), u16_at(msg, end)?, u16_at(msg, end + 2)?))
}

/// Whether `answer` answers `query`: QR set, same ID, same question (names compared without case).
fn answer_matches(query: &[u8], answer: &[u8]) -> bool {
    u16_at(answer, 2).is_some_and(|f| f & QR != 0) && question(query).is_some_and(|q| question(answer) == Some(q))
}

/// The IPv4 addresses an answer gives for `name`: its A records (class IN) for the name or
/// for the names its CNAME records lead to within the answer section (at most 16 of them).
/// An answer with a response code other than NOERROR is [`DnsError::Rcode`].
pub fn parse_a_answer(msg: &[u8], name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
    let short = DnsError::Malformed("truncated answer");
    let (Some(flags), Some(qdcount), Some(ancount)) = (u16_at(msg, 2), u16_at(msg, 4), u16_at(msg, 6)) else {
        return Err(short);
    };
    if flags & QR == 0 {
        return Err(DnsError::Malformed("not an answer"));
    }
    let rcode = u8::try_from(flags & 0xF).unwrap_or(0);
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let mut pos = HEADER;
    for _ in 0..qdcount {
        pos = read_name(msg, pos)?.1 + 4;
    }
    // (owner, type, class, rdata offset, rdata length); each record takes at least 11 bytes,
    // so the message's length bounds their number.
    let mut records = Vec::new();
    for _ in 0..ancount {
        let (owner, end) = read_name(msg, pos)?;
        let field = |at: usize| u16_at(msg, end + at).ok_or(DnsError::Malformed("truncated record"));
        let (rtype, class, rdlen) = (field(0)?, field(2)?, usize::from(field(8)?));
        let rdata = end + 10;
        if rdata + rdlen > msg.len() {
            return Err(DnsError::Malformed("truncated record"));
        }
        records.push((owner.to_ascii_lowercase(), rtype, class, rdata, rdlen));
        pos = rdata + rdlen;
    }
    let mut current = encode_name(name)?.to_ascii_lowercase();
    let mut addrs = Vec::new();
    for _ in 0..=MAX_CNAMES {
        let mut next = None;
        for (owner, rtype, class, rdata, rdlen) in &records {
            if *owner != current || *class != CLASS_IN {
                continue;
            }
            match (*rtype, *rdlen) {
                (TYPE_A, 4) => {
                    let b = msg.get(*rdata..*rdata + 4).ok_or(DnsError::Malformed("truncated record"))?;
                    addrs.push(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                }
                (TYPE_CNAME, _) if next.is_none() => next = Some(read_name(msg, *rdata)?.0.to_ascii_lowercase()),
                _ => {}
            }
        }
        match next {
            Some(target) if addrs.is_empty() => current = target,
            _ => break,
        }
    }
    Ok(addrs)
}

fn truncated(answer: &[u8]) -> bool {
    u16_at(answer, 2).is_some_and(|f| f & TC != 0)
}

/// Reads one length-framed DNS message (RFC 1035 4.2.2); `None` at a clean end of stream.
async fn read_framed<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    w.write_all(&framed).await
}

/// A DNS client of a few upstream resolvers, asked in turn.
#[derive(Debug, Clone)]
pub struct Resolver {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Resolver {
    /// A client of `upstreams` (`ember serve --dns`, or [`host_resolvers`]) with
    /// [`DEFAULT_TIMEOUT`] per try.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self::with_timeout(upstreams, DEFAULT_TIMEOUT)
    }

    /// The same with `timeout` per try (a UDP exchange, or a TCP connect, send and answer).
    pub fn with_timeout(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self { upstreams, timeout }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` to each upstream in turn until one answers it (same ID and question): over
    /// UDP from a fresh socket on a random port, then over TCP if the answer is truncated; over
    /// TCP only when `tcp`. The last upstream's error when none answers.
    pub async fn forward(&self, query: &[u8], tcp: bool) -> Result<Vec<u8>, DnsError> {
        self.exchange(query, tcp, true).await
    }

    /// The A records of `name` (a host name: letters, digits, `-`, `_`), CNAMEs followed.
    pub async fn lookup_v4(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        let query = build_a_query(rand::random(), name)?;
        let answer = self.forward(&query, false).await?;
        parse_a_answer(&answer, name)
    }

    /// [`Self::forward`], with the TCP retry of truncated UDP answers optional (the guest's
    /// UDP queries get the truncated answer and retry over TCP themselves).
    async fn exchange(&self, query: &[u8], tcp: bool, fallback: bool) -> Result<Vec<u8>, DnsError> {
        let mut last = DnsError::NoUpstream;
        for &upstream in &self.upstreams {
            let result = match self.ask(upstream, query, tcp).await {
                Ok(answer) if !tcp && fallback && truncated(&answer) => self.ask(upstream, query, true).await,
                other => other,
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    debug!("DNS upstream {upstream}: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// One exchange with `upstream` within the per-try timeout: over TCP, or over UDP from a
    /// fresh socket (answers that do not match the query are ignored).
    async fn ask(&self, upstream: SocketAddr, query: &[u8], tcp: bool) -> Result<Vec<u8>, DnsError> {
        let io = move |e| DnsError::Io(upstream, e);
        let exchange = async {
            if tcp {
                let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
                write_framed(&mut stream, query).await.map_err(io)?;
                return match read_framed(&mut stream).await.map_err(io)? {
                    Some(answer) if answer_matches(query, &answer) => Ok(answer),
                    _ => Err(DnsError::Malformed("no answer to the query")),
                };
            }
            let any =
                if upstream.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
            let local = SocketAddr::new(any, 0);
            let socket = UdpSocket::bind(local).await.map_err(io)?;
            socket.connect(upstream).await.map_err(io)?;
            socket.send(query).await.map_err(io)?;
            let mut buf = vec![0; usize::from(u16::MAX)];
            loop {
                let n = socket.recv(&mut buf).await.map_err(io)?;
                match buf.get(..n) {
                    Some(answer) if answer_matches(query, answer) => return Ok(answer.to_vec()),
                    _ => debug!("DNS upstream {upstream}: ignoring an answer that does not match the query"),
                }
            }
        };
        timeout(self.timeout, exchange).await.map_err(|_| DnsError::Timeout(upstream))?
    }
}

/// What a sandbox's DNS service shares between its UDP and TCP sides.
struct Service {
    resolver: Arc<Resolver>,
    policy: SharedPolicy,
    in_flight: Arc<Semaphore>,
}

/// Answers a sandbox's guest on `udp` and `tcp` (bound at the gateway inside its namespace)
/// until the task is aborted. Queries the policy refuses are answered REFUSED and never leave;
/// the rest go to `resolver` under a random ID, and the upstream's answer is relayed (SERVFAIL
/// when no upstream answers). Every task it starts ends with it.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, resolver: Arc<Resolver>, policy: SharedPolicy) {
    let service = Arc::new(Service { resolver, policy, in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) });
    tokio::join!(serve_udp(udp, Arc::clone(&service)), serve_tcp(tcp, service));
}

async fn serve_udp(socket: UdpSocket, service: Arc<Service>) {
    let socket = Arc::new(socket);
    let mut tasks = JoinSet::new();
    // One byte more than allowed, to tell a datagram that fits from one cut short.
    let mut buf = vec![0u8; MAX_UDP + 1];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        debug!("DNS service: receive: {e}");
                        tokio::time::sleep(crate::accept::BACKOFF).await;
                        continue;
                    }
                };
                let Some(msg) = buf.get(..n).filter(|m| m.len() <= MAX_UDP).map(<[u8]>::to_vec) else {
                    debug!("DNS service: dropped a datagram over {MAX_UDP} bytes");
                    continue;
                };
                let Ok(permit) = Arc::clone(&service.in_flight).try_acquire_owned() else {
                    debug!("DNS service: {MAX_IN_FLIGHT} queries in flight, dropped one");
                    continue;
                };
                let (socket, service) = (Arc::clone(&socket), Arc::clone(&service));
                tasks.spawn(async move {
                    let _permit = permit;
                    if let Some(answer) = service.answer(&msg, false).await {
                        if let Err(e) = socket.send_to(&answer, peer).await {
                            debug!("DNS service: send: {e}");
                        }
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, service: Arc<Service>) {
    crate::accept::bounded(listener, MAX_TCP_CONNS, "DNS service (TCP)", |stream| {
        let service = Arc::clone(&service);
        async move {
            if let Err(e) = service.connection(stream).await {
                debug!("DNS service: TCP connection: {e}");
            }
        }
    })
    .await
}

impl Service {
    /// The answer to one guest message, or `None` to send nothing.
    async fn answer(&self, msg: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let query = match parse_query(msg) {
            Ok(q) => q,
            Err(reject) => return reject_answer(msg, reject),
        };
        if !policy::current(&self.policy).allows_lookup(&query.name) {
            debug!(name = %query.name, "DNS lookup refused by the sandbox's policy");
            return Some(error_answer(&query, REFUSED));
        }
        // Upstream sees an ID of ours, whatever the guest chose.
        let mut upstream = msg.to_vec();
        upstream.get_mut(..2)?.copy_from_slice(&rand::random::<u16>().to_be_bytes());
        match self.resolver.exchange(&upstream, tcp, false).await {
            Ok(mut answer) => {
                answer.get_mut(..2)?.copy_from_slice(&query.id.to_be_bytes());
                Some(answer)
            }
            Err(e) => {
                debug!(name = %query.name, "DNS lookup failed: {e}");
                Some(error_answer(&query, SERVFAIL))
            }
        }
    }

    /// One guest TCP connection: up to [`MAX_TCP_QUERIES`] framed queries, answered in turn.
    async fn connection(&self, mut stream: TcpStream) -> io::Result<()> {
        let timed_out = |_| io::Error::new(io::ErrorKind::TimedOut, "idle");
        for _ in 0..MAX_TCP_QUERIES {
            let Some(msg) = timeout(TCP_IDLE, read_framed(&mut stream)).await.map_err(timed_out)?? else {
                return Ok(());
            };
            let answer = {
                let _permit = self.in_flight.acquire().await;
                self.answer(&msg, true).await
            };
            let Some(answer) = answer else { return Ok(()) };
            timeout(TCP_IDLE, write_framed(&mut stream, &answer)).await.map_err(timed_out)??;
        }
        Ok(())
    }
}

/// A fake upstream resolver on 127.0.0.1 for tests: answers A queries for one name over UDP and
/// TCP on the same port, NXDOMAIN otherwise; over UDP, names starting `tc.` get a truncated
/// empty answer (their TCP answer is whole).
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(crate) struct Upstream {
        pub addr: SocketAddr,
        pub queries: Arc<AtomicUsize>,
    }

    /// The answer to `query` giving `ips` for `name` (and for `tc.` + `name`).
    pub(crate) fn answer(query: &[u8], name: &str, ips: &[Ipv4Addr], udp: bool) -> Vec<u8> {
        let q = parse_query(query).unwrap();
        let known = q.name == name || q.name == format!("tc.{name}");
        if udp && q.name.starts_with("tc.") {
            let mut a = error_answer(&q, 0);
            a[2] |= 0x02; // TC
            return a;
        }
        let mut a = error_answer(&q, if known { 0 } else { NXDOMAIN });
        if known && q.qtype == TYPE_A {
            a[7] = u8::try_from(ips.len()).unwrap();
            for ip in ips {
                a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                a.extend_from_slice(&ip.octets());
            }
        }
        a
    }

    pub(crate) async fn upstream(name: &str, ip: Ipv4Addr) -> Upstream {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let (name, count) = (name.to_string(), Arc::clone(&queries));
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                tokio::select! {
                    Ok((n, peer)) = udp.recv_from(&mut buf) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        udp.send_to(&answer(&buf[..n], &name, &[ip], true), peer).await.unwrap();
                    }
                    Ok((mut stream, _)) = tcp.accept() => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let name = name.clone();
                        tokio::spawn(async move {
                            while let Ok(Some(q)) = read_framed(&mut stream).await {
                                write_framed(&mut stream, &answer(&q, &name, &[ip], false)).await.unwrap();
                            }
                        });
                    }
                }
            }
        });
        Upstream { addr, queries }
    }

    /// An address where nothing listens (UDP or TCP).
    pub(crate) async fn dead() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{shared, EgressPolicy};
    use std::sync::atomic::Ordering;

    fn query(name: &str) -> Vec<u8> {
        build_a_query(0x1234, name).unwrap()
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53 # systemd\n;nameserver 9.9.9.9\n\
                    nameserver   2001:db8::53\nnameserver fe80::1%eth0\nnameserver bogus\nnameserver 192.0.2.1\n\
                    nameserver 192.0.2.2\n";
        let want: Vec<SocketAddr> =
            ["127.0.0.53:53", "[2001:db8::53]:53", "192.0.2.1:53"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(parse_resolv_conf(text), want);
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn queries_parse_lowercased_without_trailing_dot() {
        let mut msg = query("WWW.Example.com.");
        assert_eq!(&msg[12..16], b"\x03WWW");
        let q = parse_query(&msg).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype, q.qclass), (0x1234, "www.example.com", TYPE_A, CLASS_IN));
        // Odd bytes are escaped, so "a.b" as one label is not the name a.b.
        msg = header(1, RD, 1, 0);
        msg.extend_from_slice(b"\x03a.b\x00\x00\x01\x00\x01");
        assert_eq!(parse_query(&msg).unwrap().name, "a\\046b");
        msg = header(1, 0, 1, 0);
        msg.extend_from_slice(b"\x00\x00\x01\x00\x01");
        assert_eq!(parse_query(&msg).unwrap().name, "");
    }

    #[test]
    fn bad_queries_are_rejected() {
        let good = query("example.com");
        assert_eq!(parse_query(&good[..11]), Err(Reject::Drop));
        let mut answer = good.clone();
        answer[2] |= 0x80;
        assert_eq!(parse_query(&answer), Err(Reject::Drop));
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify), Err(Reject::Answer(NOTIMP)));
        let reply = reject_answer(&notify, Reject::Answer(NOTIMP)).unwrap();
        assert_eq!(reply, [0x12, 0x34, 0xA1, 0x84, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(Reject::Answer(FORMERR)));
        assert_eq!(parse_query(&good[..good.len() - 1]), Err(Reject::Answer(FORMERR)));
        assert_eq!(reject_answer(&good, Reject::Drop), None);
        // A pointer to itself, a forward pointer, and a label type that does not exist.
        for name in [&b"\xC0\x0C"[..], b"\xC0\x20", b"\x40"] {
            let mut msg = header(1, 0, 1, 0);
            msg.extend_from_slice(name);
            msg.extend_from_slice(&[0; 20]);
            assert_eq!(parse_query(&msg), Err(Reject::Answer(FORMERR)), "{name:?}");
        }
        // Names over 255 bytes.
        let long = [header(1, 0, 1, 0), [&[63u8][..], &[b'a'; 63]].concat().repeat(5), vec![0, 0, 1, 0, 1]].concat();
        assert_eq!(parse_query(&long), Err(Reject::Answer(FORMERR)));
    }

    #[test]
    fn names_to_build_are_checked() {
        assert!(build_a_query(1, "a.example").is_ok());
        let label = "a".repeat(63);
        assert!(build_a_query(1, &[label.as_str(); 3].join(".")).is_ok());
        assert!(build_a_query(1, &[label.as_str(); 4].join(".")).is_err());
        for bad in ["", ".", "a..b", &"a".repeat(64), "a b.com", "é.com", "a.com.."] {
            assert!(matches!(build_a_query(1, bad), Err(DnsError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn refusals_echo_the_question() {
        let q = parse_query(&query("example.com")).unwrap();
        let refused = error_answer(&q, REFUSED);
        assert_eq!(&refused[..12], [0x12, 0x34, 0x81, 0x85, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(refused[12..], query("example.com")[12..]);
        assert!(answer_matches(&query("example.com"), &refused));
        assert!(!answer_matches(&query("example.org"), &refused));
        assert_eq!(error_answer(&q, SERVFAIL)[3], 0x82);
    }

    #[test]
    fn a_answers_follow_cnames_and_pointers() {
        let ips = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
        let q = query("Example.com");
        assert_eq!(parse_a_answer(&fake::answer(&q, "example.com", &ips, false), "example.com").unwrap(), ips);
        let nx = fake::answer(&q, "other.test", &ips, false);
        assert!(matches!(parse_a_answer(&nx, "example.com"), Err(DnsError::Rcode(NXDOMAIN))));
        assert!(matches!(parse_a_answer(&q, "example.com"), Err(DnsError::Malformed(_))));
        // www.example.com CNAME example.com (a pointer into the question), then its A record
        // named by a pointer into the CNAME's data, and an A record of an unrelated name.
        let mut msg = header(7, QR | RD | RA, 1, 3);
        msg.extend_from_slice(&query("www.example.com")[12..]); // name at 12, "example.com" at 16
        msg.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 16]);
        msg.extend_from_slice(&[0xC0, 16, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 9]);
        msg.extend_from_slice(&[1, b'x', 0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 1]);
        assert_eq!(parse_a_answer(&msg, "WWW.example.com").unwrap(), [Ipv4Addr::new(192, 0, 2, 9)]);
        for cut in 0..msg.len() {
            assert!(parse_a_answer(&msg[..cut], "www.example.com").is_err(), "{cut}");
        }
        // A CNAME loop ends.
        let mut looped = header(7, QR, 1, 1);
        looped.extend_from_slice(&query("a.test")[12..]);
        looped.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
        assert!(parse_a_answer(&looped, "a.test").unwrap().is_empty());
    }

    async fn udp_ask(server: SocketAddr, msg: &[u8]) -> Vec<u8> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(msg, server).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = timeout(Duration::from_secs(5), socket.recv(&mut buf)).await.unwrap().unwrap();
        buf[..n].to_vec()
    }

    /// A DNS service on 127.0.0.1 with `upstreams` and `policy`: its UDP and TCP addresses.
    async fn service(upstreams: Vec<SocketAddr>, policy: EgressPolicy) -> (SocketAddr, SocketAddr) {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let resolver = Arc::new(Resolver::with_timeout(upstreams, Duration::from_millis(500)));
        tokio::spawn(serve(udp, tcp, resolver, shared(policy)));
        addrs
    }

    #[tokio::test]
    async fn the_service_forwards_refuses_and_fails() {
        let ip = Ipv4Addr::new(192, 0, 2, 7);
        let up = fake::upstream("good.test", ip).await;
        let (udp, tcp) = service(vec![fake::dead().await, up.addr], EgressPolicy::allow_all()).await;
        let answer = udp_ask(udp, &query("good.test")).await;
        assert_eq!(&answer[..2], [0x12, 0x34]);
        assert_eq!(parse_a_answer(&answer, "good.test").unwrap(), [ip]);
        // Truncated upstream answers reach the guest as they are; over TCP it gets them whole.
        let tc = udp_ask(udp, &query("tc.good.test")).await;
        assert!(truncated(&tc));
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        for name in ["tc.good.test", "good.test"] {
            write_framed(&mut stream, &query(name)).await.unwrap();
            let answer = read_framed(&mut stream).await.unwrap().unwrap();
            assert_eq!(parse_a_answer(&answer, name).unwrap(), [ip]);
        }
        // Garbage over TCP closes the connection; a datagram shorter than a header gets nothing.
        write_framed(&mut stream, b"\x00\x01").await.unwrap();
        assert!(read_framed(&mut stream).await.unwrap().is_none());
        let nothing = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        nothing.send_to(b"\x00\x01", udp).await.unwrap();
        assert!(timeout(Duration::from_millis(200), nothing.recv(&mut [0u8; 64])).await.is_err());

        let before = up.queries.load(Ordering::SeqCst);
        let (denied, _) = service(vec![up.addr], EgressPolicy::deny_all()).await;
        let refused = udp_ask(denied, &query("good.test")).await;
        assert_eq!(refused, error_answer(&parse_query(&query("good.test")).unwrap(), REFUSED));
        assert_eq!(up.queries.load(Ordering::SeqCst), before, "a refused query never leaves");

        let (dead, _) = service(vec![fake::dead().await], EgressPolicy::allow_all()).await;
        assert_eq!(udp_ask(dead, &query("good.test")).await[3] & 0xF, SERVFAIL);
    }

    #[tokio::test]
    async fn the_client_looks_up_and_retries_truncated_answers_over_tcp() {
        let ip = Ipv4Addr::new(192, 0, 2, 8);
        let up = fake::upstream("host.test", ip).await;
        let resolver = Resolver::with_timeout(vec![up.addr], Duration::from_secs(2));
        assert_eq!(resolver.lookup_v4("HOST.test.").await.unwrap(), [ip]);
        assert_eq!(resolver.lookup_v4("tc.host.test").await.unwrap(), [ip]);
        assert!(matches!(resolver.lookup_v4("other.test").await, Err(DnsError::Rcode(NXDOMAIN))));
        assert!(matches!(Resolver::new(vec![]).lookup_v4("host.test").await, Err(DnsError::NoUpstream)));
    }
}
