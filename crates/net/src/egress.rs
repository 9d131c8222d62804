//! The transparent egress proxy behind domain rules. A guest's connections to ports 80 and 443
//! that only a domain rule could allow are redirected (nftables, inside the sandbox's namespace)
//! to [`PROXY_HTTP_PORT`](crate::PROXY_HTTP_PORT) and [`PROXY_TLS_PORT`](crate::PROXY_TLS_PORT)
//! at the gateway, where [`serve`] takes them: it reads the host the connection names (HTTP
//! `Host`, TLS SNI: [`crate::sniff`]), checks it against the sandbox's domain rules, resolves it,
//! dials the first address the [`Guard`] lets sandboxes reach, and relays both ways.
//!
//! What is refused is told plainly over HTTP (403 naming the host) and closed over TLS. The
//! guest is hostile: the first bytes are bounded in size and time, the connections in number,
//! and internal and host addresses are never dialled whatever a name resolves to.

#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::debug;

use crate::dns::{DnsError, Resolver};
use crate::policy::{self, host_addresses, Guard, SharedPolicy};
use crate::sniff::{self, Sniff, MAX_HEAD};

/// Most connections one [`serve`] relays at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest a connection may take to name its host.
pub const SNIFF_DEADLINE: Duration = Duration::from_secs(10);
/// Longest a dial of the upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a refusal may take to write, and to drain what the guest still sends.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of the guest's request read and dropped after a refusal, so that closing does
/// not reset the connection before the guest reads the answer.
const MAX_DRAIN: u64 = 64 * 1024;

/// Which redirected port a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 80: the host is the request's `Host` header.
    Http,
    /// Port 443: the host is the ClientHello's server name.
    Tls,
}

impl Kind {
    fn sniff(self, buf: &[u8]) -> Sniff {
        match self {
            Kind::Http => sniff::http_host(buf),
            Kind::Tls => sniff::tls_sni(buf),
        }
    }
}

/// What every connection of a sandbox's proxy needs.
#[derive(Debug)]
pub struct Egress {
    pub policy: SharedPolicy,
    pub guard: Arc<Guard>,
    pub resolver: Arc<Resolver>,
    /// The ports dialled for [`Kind::Http`] and [`Kind::Tls`]: 80 and 443 (other values in tests).
    pub ports: (u16, u16),
}

impl Egress {
    /// A proxy dialling ports 80 and 443.
    pub fn new(policy: SharedPolicy, guard: Arc<Guard>, resolver: Arc<Resolver>) -> Self {
        Self { policy, guard, resolver, ports: (80, 443) }
    }

    fn port(&self, kind: Kind) -> u16 {
        match kind {
            Kind::Http => self.ports.0,
            Kind::Tls => self.ports.1,
        }
    }
}

/// Why a connection was not relayed, or how relaying ended (logged at debug level).
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("reading the guest's first bytes: {0}")]
    Read(io::Error),
    #[error("no host named within {SNIFF_DEADLINE:?}")]
    Timeout,
    #[error("the connection names no host")]
    NoHost,
    #[error("the sandbox's policy does not allow {0}")]
    Denied(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: DnsError },
    #[error("{0} has no IPv4 address")]
    NoAddress(String),
    #[error("{0} resolves to no address sandboxes may reach")]
    Unreachable(String),
    #[error("cannot connect to {host} at {addr}: {source}")]
    Connect { host: String, addr: SocketAddr, source: io::Error },
    #[error("relaying to {host}: {source}")]
    Relay { host: String, source: io::Error },
}

/// Relays the guest's connections accepted on `listener` (redirected from port 80 or 443, per
/// `kind`) until the task is aborted; every connection's task ends with it.
pub async fn serve(listener: TcpListener, kind: Kind, egress: Arc<Egress>) {
    crate::accept::bounded(listener, MAX_CONNECTIONS, "egress", |stream| {
        let egress = Arc::clone(&egress);
        async move {
            match relay(stream, kind, &egress).await {
                Ok((out, back)) => debug!(?kind, out, back, "egress: connection done"),
                Err(e) => debug!(?kind, "egress: {e}"),
            }
        }
    })
    .await
}

/// Reads the guest's first bytes until they name a host (at most [`MAX_HEAD`] bytes).
async fn read_head(guest: &mut TcpStream, kind: Kind) -> Result<(Vec<u8>, String), EgressError> {
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        match kind.sniff(&head) {
            Sniff::Found(host) => return Ok((head, host)),
            Sniff::Invalid => return Err(EgressError::NoHost),
            Sniff::NeedMore if head.len() >= MAX_HEAD => return Err(EgressError::NoHost),
            Sniff::NeedMore => {}
        }
        let want = chunk.len().min(MAX_HEAD - head.len());
        let n = guest.read(&mut chunk[..want]).await.map_err(EgressError::Read)?;
        if n == 0 {
            return Err(EgressError::NoHost);
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// One connection: name, check, resolve, dial, relay. Returns the bytes relayed each way.
async fn relay(mut guest: TcpStream, kind: Kind, egress: &Egress) -> Result<(u64, u64), EgressError> {
    let (head, host) =
        timeout(SNIFF_DEADLINE, read_head(&mut guest, kind)).await.map_err(|_| EgressError::Timeout)??;
    if !policy::current(&egress.policy).allows_domain(&host) {
        refuse(&mut guest, kind, Refusal::Policy, &host).await;
        return Err(EgressError::Denied(host));
    }
    let addrs = match egress.resolver.lookup_v4(&host).await {
        Ok(addrs) if !addrs.is_empty() => addrs,
        Ok(_) => {
            refuse(&mut guest, kind, Refusal::Unresolved, &host).await;
            return Err(EgressError::NoAddress(host));
        }
        Err(source) => {
            refuse(&mut guest, kind, Refusal::Unresolved, &host).await;
            return Err(EgressError::Resolve { host, source });
        }
    };
    let host_addrs = host_addresses();
    let Some(ip) = addrs.into_iter().find(|ip| egress.guard.may_reach(IpAddr::V4(*ip), &host_addrs)) else {
        refuse(&mut guest, kind, Refusal::Unreachable, &host).await;
        return Err(EgressError::Unreachable(host));
    };
    let addr = SocketAddr::new(IpAddr::V4(ip), egress.port(kind));
    let dialled = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
    let mut upstream = match dialled {
        Ok(s) => s,
        Err(source) => {
            refuse(&mut guest, kind, Refusal::Unconnected, &host).await;
            return Err(EgressError::Connect { host, addr, source });
        }
    };
    debug!(?kind, %host, %addr, "egress: relaying");
    let relayed = async {
        upstream.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut guest, &mut upstream).await
    };
    relayed.await.map_err(|source| EgressError::Relay { host, source })
}

/// Why a named host is not relayed.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Policy,
    Unresolved,
    Unreachable,
    Unconnected,
}

/// The HTTP answer to a refused request for `host` (a name [`sniff`] accepted: no markup or
/// line breaks).
fn refusal_response(why: Refusal, host: &str) -> String {
    let (status, text) = match why {
        Refusal::Policy => {
            ("403 Forbidden", format!("ember: the sandbox's network policy does not allow connections to {host}\n"))
        }
        Refusal::Unreachable => {
            ("403 Forbidden", format!("ember: {host} resolves only to addresses sandboxes may not reach\n"))
        }
        Refusal::Unresolved => ("502 Bad Gateway", format!("ember: cannot resolve {host}\n")),
        Refusal::Unconnected => ("502 Bad Gateway", format!("ember: cannot connect to {host}\n")),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
}

/// Tells an HTTP guest why (then drains a little of what it still sends, so that closing does
/// not reset the answer away); a TLS guest's connection is just closed.
async fn refuse(guest: &mut TcpStream, kind: Kind, why: Refusal, host: &str) {
    if kind == Kind::Tls {
        return;
    }
    let response = refusal_response(why, host);
    let answer = async {
        guest.write_all(response.as_bytes()).await?;
        guest.shutdown().await?;
        tokio::io::copy(&mut (&mut *guest).take(MAX_DRAIN), &mut tokio::io::sink()).await
    };
    if let Err(e) = timeout(REFUSAL_TIMEOUT, answer).await.unwrap_or(Ok(0)) {
        debug!("egress: answering a refusal: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::fake;
    use crate::policy::{shared, EgressPolicy};
    use crate::sniff::build::{client_hello, hello_body, records, sni};
    use std::net::Ipv4Addr;

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// A backend on 127.0.0.1 that reads what arrives and answers with `reply`, or echoes what it
    /// read when `reply` is empty; then closes.
    async fn backend(reply: &'static [u8], expect: usize) -> u16 {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = vec![0u8; expect];
                s.read_exact(&mut got).await.unwrap();
                s.write_all(if reply.is_empty() { &got } else { reply }).await.unwrap();
            }
        });
        port
    }

    /// A proxy of `kind` on 127.0.0.1 allowing the domain `allowed.test` (which the fake DNS
    /// resolves to 127.0.0.1), dialling `port`, with `guard`: its address.
    async fn proxy(kind: Kind, port: u16, guard: Guard) -> SocketAddr {
        let up = fake::upstream("allowed.test", LOOPBACK).await;
        let policy =
            EgressPolicy::from_rules(&["allowed.test".into(), "*.nowhere.test".into()], &[], &[], false).unwrap();
        let resolver = Arc::new(Resolver::with_timeout(vec![up.addr], Duration::from_secs(2)));
        let egress = Egress { ports: (port, port), ..Egress::new(shared(policy), Arc::new(guard), resolver) };
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, kind, Arc::new(egress)));
        addr
    }

    fn loopback_allowed() -> Guard {
        Guard::new(vec!["127.0.0.0/8".parse().unwrap()])
    }

    /// Sends `request` and reads until the proxy or backend closes.
    async fn exchange(proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let read = timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap();
        assert!(read.is_ok() || out.is_empty(), "{read:?}");
        out
    }

    fn get(host: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
    }

    #[tokio::test]
    async fn allowed_http_is_relayed_and_the_rest_refused() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let request = get("Allowed.test");
        let port = backend(OK, request.len()).await;
        let open = proxy(Kind::Http, port, loopback_allowed()).await;
        assert_eq!(exchange(open, &request).await, OK);

        let denied = String::from_utf8(exchange(open, &get("denied.test")).await).unwrap();
        assert!(denied.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{denied}");
        assert!(denied.ends_with("network policy does not allow connections to denied.test\n"), "{denied}");
        // Allowed by a rule but not resolvable: 502.
        let unresolved = String::from_utf8(exchange(open, &get("x.nowhere.test")).await).unwrap();
        assert!(unresolved.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{unresolved}");
        // A request body after the head does not turn the refusal into a reset.
        let with_body = [get("denied.test"), vec![b'x'; 100_000]].concat();
        assert!(exchange(open, &with_body).await.starts_with(b"HTTP/1.1 403"));

        let guarded = proxy(Kind::Http, port, Guard::default()).await;
        let internal = String::from_utf8(exchange(guarded, &request).await).unwrap();
        assert!(internal.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{internal}");
        assert!(internal.contains("allowed.test resolves only to addresses sandboxes may not reach"), "{internal}");

        assert!(exchange(open, b"\x16\x03\x01garbage\r\n\r\n").await.is_empty());
        assert!(exchange(open, b"GET / HTTP/1.1\r\n\r\n").await.is_empty());
    }

    #[tokio::test]
    async fn allowed_tls_is_relayed_from_its_first_byte() {
        let hello = client_hello("allowed.test");
        let open = proxy(Kind::Tls, backend(b"", hello.len()).await, loopback_allowed()).await;
        assert_eq!(exchange(open, &hello).await, hello, "the backend got the ClientHello as sent");
        let split = records(&hello_body(&[(0, sni(&["allowed.test"]))]), 50);
        let open_split = proxy(Kind::Tls, backend(b"", split.len()).await, loopback_allowed()).await;
        assert_eq!(exchange(open_split, &split).await, split);

        assert!(exchange(open, &client_hello("denied.test")).await.is_empty());
        let guarded = proxy(Kind::Tls, backend(b"", hello.len()).await, Guard::default()).await;
        assert!(exchange(guarded, &hello).await.is_empty());
        assert!(exchange(open, &get("allowed.test")).await.is_empty());
        assert!(exchange(open, &[0xFF; 64]).await.is_empty());
    }

    #[tokio::test]
    async fn connections_are_bounded() {
        let open = proxy(Kind::Http, 9, loopback_allowed()).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = TcpStream::connect(open).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            idle.push(s);
        }
        // Past the bound a connection is closed at once, without waiting for the deadline.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = timeout(Duration::from_secs(2), exchange(open, &get("denied.test"))).await.unwrap();
        assert!(refused.is_empty());
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(exchange(open, &get("denied.test")).await.starts_with(b"HTTP/1.1 403"));
    }
}
