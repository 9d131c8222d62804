//! Servers that listen on the guest's loopback only, made reachable from outside, as envd does:
//! the host's proxy connects to `GUEST_IP:PORT`, which reaches nothing when a server inside
//! listens on `127.0.0.1:PORT` or `[::1]:PORT` alone (a dev server's default).
//!
//! Every [`SCAN_INTERVAL`], [`run`] reads the kernel's TCP tables and, for each port with a
//! listener on `127.0.0.1`, `::1` or `::ffff:127.0.0.1` and none on a wildcard address or on
//! the guest's own address, listens on `GUEST_IP:PORT` and splices each connection to the
//! loopback listener ([`plan`] decides, [`Forwards::apply`] acts). A forward stops (its listener
//! is closed) at the first scan that no longer finds the loopback listener; connections already
//! spliced run on. Bounded: [`MAX_PORTS`] ports, [`MAX_CONNECTIONS`] connections at once (more
//! are closed on accept), [`CONNECT_TIMEOUT`] to reach the loopback server.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Time between two scans of the TCP tables.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the tables are read while the guest is idle: no process started through the agent
/// for [`ACTIVE_WINDOW`] and nothing forwarded. Every read costs the guest kernel a walk of its
/// TCP hash tables (several milliseconds a second under TCG, in every pooled sandbox too).
pub const IDLE_SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// How long after a process start the tables are read every [`SCAN_INTERVAL`].
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(60);

/// Milliseconds from [`epoch`] to the last process start, plus one (0: none yet).
static LAST_START: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Tells the scanner a process was started (it may open a listener soon): scans go back to
/// every [`SCAN_INTERVAL`] for [`ACTIVE_WINDOW`].
pub fn note_process_start() {
    let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    LAST_START.store(ms + 1, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a process was started within [`ACTIVE_WINDOW`].
fn recently_started() -> bool {
    match LAST_START.load(std::sync::atomic::Ordering::Relaxed) {
        0 => false,
        at => epoch().elapsed().saturating_sub(Duration::from_millis(at - 1)) < ACTIVE_WINDOW,
    }
}
/// Most ports forwarded at once.
pub const MAX_PORTS: usize = 256;
/// Most spliced connections open at once, over every port.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest wait to connect to the loopback server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's TCP tables: IPv4, then IPv6 (absent without IPv6).
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// `st` of a listening socket (`TCP_LISTEN`).
const LISTEN_STATE: &str = "0A";

/// A listening TCP socket's local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
}

/// The listening sockets in the text of `/proc/net/tcp` or `/proc/net/tcp6`. Lines that do not
/// parse (the header among them) are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<Listener> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != LISTEN_STATE {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some(Listener { addr: parse_addr(addr)?, port: u16::from_str_radix(port, 16).ok()? })
        })
        .collect()
}

/// An address as the kernel prints it: 8 or 32 hex digits, each 32-bit word of the address in
/// network order printed as a host-order number (`0100007F` is 127.0.0.1 on x86).
fn parse_addr(hex: &str) -> Option<IpAddr> {
    if !hex.is_ascii() {
        return None;
    }
    let word = |i: usize| hex.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The ports to forward, each with the loopback address to splice to (`127.0.0.1` if something
/// listens there, else `::1`), given the listening sockets. A port is left alone if it is in
/// `skip`, or if something listens on it on a wildcard address or on `guest_ip`, unless that is
/// our own forward (a port in `forwarded`). Past [`MAX_PORTS`], ports already `forwarded` are
/// kept first; the second value says whether any port was left out.
pub fn plan(
    listeners: &[Listener],
    guest_ip: IpAddr,
    skip: &[u16],
    forwarded: &BTreeSet<u16>,
) -> (BTreeMap<u16, SocketAddr>, bool) {
    let guest_ip = guest_ip.to_canonical();
    let (mut v4, mut v6, mut blocked) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for l in listeners {
        match l.addr.to_canonical() {
            IpAddr::V4(Ipv4Addr::LOCALHOST) => {
                v4.insert(l.port);
            }
            IpAddr::V6(Ipv6Addr::LOCALHOST) => {
                v6.insert(l.port);
            }
            a if a.is_unspecified() => {
                blocked.insert(l.port);
            }
            a if a == guest_ip && !forwarded.contains(&l.port) => {
                blocked.insert(l.port);
            }
            _ => {}
        }
    }
    let target = |port: u16| {
        let ip = if v4.contains(&port) { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        SocketAddr::new(ip, port)
    };
    let candidates: BTreeSet<u16> =
        v4.union(&v6).copied().filter(|p| !blocked.contains(p) && !skip.contains(p)).collect();
    let limited = candidates.len() > MAX_PORTS;
    let kept = candidates.iter().filter(|p| forwarded.contains(p));
    let new = candidates.iter().filter(|p| !forwarded.contains(p));
    (kept.chain(new).take(MAX_PORTS).map(|&p| (p, target(p))).collect(), limited)
}

/// One forwarded port: its accept loop (aborted, which closes its listener, on drop) and where
/// it splices to.
struct Forward {
    target: watch::Sender<SocketAddr>,
    task: JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running forwards, kept in line with the TCP tables by [`Forwards::apply`].
pub struct Forwards {
    guest_ip: IpAddr,
    skip: Vec<u16>,
    active: HashMap<u16, Forward>,
    /// Ports whose listener could not be bound (logged once, tried again at every scan).
    failed: HashSet<u16>,
    limited: bool,
    connections: Arc<Semaphore>,
}

impl Forwards {
    /// Forwards to be made on `guest_ip`, never for ports in `skip` (the agent's own).
    pub fn new(guest_ip: IpAddr, skip: Vec<u16>) -> Self {
        Self {
            guest_ip,
            skip,
            active: HashMap::new(),
            failed: HashSet::new(),
            limited: false,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    /// The ports forwarded now.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.active.keys().copied().collect()
    }

    /// Starts and stops forwards to match `listeners` (the TCP tables' listening sockets).
    pub async fn apply(&mut self, listeners: &[Listener]) {
        let (wanted, limited) = plan(listeners, self.guest_ip, &self.skip, &self.ports());
        if limited && !self.limited {
            tracing::warn!(max = MAX_PORTS, "too many loopback-only listeners: forwarding only some");
        }
        self.limited = limited;
        self.active.retain(|port, _| {
            let keep = wanted.contains_key(port);
            if !keep {
                tracing::info!(port, "loopback listener gone: forward stopped");
            }
            keep
        });
        self.failed.retain(|port| wanted.contains_key(port));
        for (&port, &target) in &wanted {
            if let Some(forward) = self.active.get(&port) {
                forward.target.send_if_modified(|t| std::mem::replace(t, target) != target);
                continue;
            }
            match TcpListener::bind(SocketAddr::new(self.guest_ip, port)).await {
                Ok(listener) => {
                    self.failed.remove(&port);
                    let (tx, rx) = watch::channel(target);
                    let task = tokio::spawn(accept(listener, rx, Arc::clone(&self.connections)));
                    self.active.insert(port, Forward { target: tx, task });
                    tracing::info!(from = %SocketAddr::new(self.guest_ip, port), to = %target, "forwarding");
                }
                Err(e) => {
                    if self.failed.insert(port) {
                        tracing::warn!(port, error = %e, "cannot forward a loopback listener (trying again)");
                    }
                }
            }
        }
    }
}

/// Scans the TCP tables every [`SCAN_INTERVAL`] (every [`IDLE_SCAN_INTERVAL`] while idle) and
/// forwards `guest_ip`'s ports to loopback-only listeners, forever; ports in `skip` are never
/// forwarded.
pub async fn run(guest_ip: IpAddr, skip: Vec<u16>) {
    let mut forwards = Forwards::new(guest_ip, skip);
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable = false;
    let mut last_scan: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let idle = !recently_started() && forwards.active.is_empty();
        if idle && last_scan.is_some_and(|t| t.elapsed() < IDLE_SCAN_INTERVAL) {
            continue;
        }
        last_scan = Some(std::time::Instant::now());
        match read_tables().await {
            Ok(listeners) => {
                unreadable = false;
                forwards.apply(&listeners).await;
            }
            Err(e) => {
                // Forwards are left as they are until the tables can be read again.
                if !unreadable {
                    tracing::warn!(error = %e, "cannot read the TCP tables to forward loopback listeners");
                }
                unreadable = true;
            }
        }
    }
}

/// The listening sockets of [`TABLES`]; a missing IPv6 table counts as empty.
async fn read_tables() -> std::io::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for (i, table) in TABLES.iter().enumerate() {
        match tokio::fs::read_to_string(table).await {
            Ok(text) => listeners.extend(parse_tcp_table(&text)),
            Err(e) if i > 0 && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{table}: {e}"))),
        }
    }
    Ok(listeners)
}

/// Accepts connections until aborted, splicing each to the current target.
async fn accept(listener: TcpListener, target: watch::Receiver<SocketAddr>, connections: Arc<Semaphore>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: give what holds descriptors time to let go.
                tracing::debug!(error = %e, "accepting a forwarded connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(max = MAX_CONNECTIONS, "too many forwarded connections: closing a new one");
            continue;
        };
        let to = *target.borrow();
        tokio::spawn(async move {
            let _permit = permit;
            splice(inbound, to).await;
        });
    }
}

/// Connects to `to` and copies both ways until both sides are done.
async fn splice(mut inbound: TcpStream, to: SocketAddr) {
    let mut outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%to, error = %e, "connecting a forwarded connection");
            return;
        }
        Err(_) => {
            tracing::debug!(%to, "connecting a forwarded connection: timed out");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        tracing::debug!(%to, error = %e, "forwarded connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_makes_scans_frequent() {
        // The only test that touches LAST_START.
        LAST_START.store(0, std::sync::atomic::Ordering::Relaxed);
        assert!(!recently_started(), "no start yet: idle");
        note_process_start();
        assert!(recently_started());
        LAST_START.store(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let long_ago = epoch().elapsed() > ACTIVE_WINDOW;
        assert_eq!(recently_started(), !long_ago);
        LAST_START.store(0, std::sync::atomic::Ordering::Relaxed);
        assert!(!recently_started());
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const V4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 21871 1 0000000000000000 100 0 0 10 0
   1: 00000000:C2D3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17652 1 0000000000000000 100 0 0 10 0
   2: 1500FEA9:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17653 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F40 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 21999 1 0000000000000000 20 4 30 10 -1
   4: 1500FEA9:C2D3 1600FEA9:9C40 01 00000000:00000000 02:000A7F9B 00000000     0        0 17700 2 0000000000000000 20 4 1 10 -1
";
    const V6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F41 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 31 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F42 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 32 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 33 1 0000000000000000 100 0 0 10 0
   3: 00000000000000000000000001000000:1F41 00000000000000000000000001000000:B0B0 01 00000000:00000000 00:00000000 00000000  1000        0 34 1 0000000000000000 20 4 30 10 -1
";

    fn l(addr: &str, port: u16) -> Listener {
        Listener { addr: addr.parse().unwrap(), port }
    }

    const GUEST: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 0, 21));

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_listening_sockets_of_both_tables() {
        assert_eq!(parse_tcp_table(V4), [l("127.0.0.1", 8000), l("0.0.0.0", 49875), l("169.254.0.21", 3000)],);
        assert_eq!(parse_tcp_table(V6), [l("::1", 8001), l("::ffff:127.0.0.1", 8002), l("::", 22)]);
        assert_eq!(parse_tcp_table(""), []);
        assert_eq!(parse_tcp_table("   0: 0100007F:XYZW 00000000:0000 0A\n   1: 7F:1F40 00000000:0000 0A\n"), []);
    }

    #[test]
    fn plans_loopback_only_ports() {
        let none = BTreeSet::new();
        let listeners = [
            l("127.0.0.1", 8000),
            l("::1", 8001),
            l("::ffff:127.0.0.1", 8002),
            // Both loopbacks: 127.0.0.1 is preferred.
            l("::1", 8003),
            l("127.0.0.1", 8003),
            // Also on a wildcard, or on the guest's address: reachable already.
            l("127.0.0.1", 8004),
            l("0.0.0.0", 8004),
            l("::1", 8005),
            l("::", 8005),
            l("127.0.0.1", 8006),
            l("::ffff:169.254.0.21", 8006),
            // The agent's own port; other addresses are not loopback.
            l("127.0.0.1", 49983),
            l("127.0.0.2", 8007),
            l("127.0.0.1", 49999),
        ];
        let (plan, limited) = plan(&listeners, GUEST, &[49983], &none);
        let want: BTreeMap<u16, SocketAddr> = [
            (8000, "127.0.0.1:8000"),
            (8001, "[::1]:8001"),
            (8002, "127.0.0.1:8002"),
            (8003, "127.0.0.1:8003"),
            (49999, "127.0.0.1:49999"),
        ]
        .into_iter()
        .map(|(p, a)| (p, a.parse().unwrap()))
        .collect();
        assert_eq!(plan, want);
        assert!(!limited);
        // A listener on the guest's address is our own forward's when the port is forwarded.
        let ours = [l("127.0.0.1", 8006), l("169.254.0.21", 8006)];
        assert!(super::plan(&ours, GUEST, &[], &none).0.is_empty());
        assert_eq!(super::plan(&ours, GUEST, &[], &[8006].into()).0.keys().collect::<Vec<_>>(), [&8006]);
    }

    #[test]
    fn plan_is_bounded_and_keeps_what_it_forwards() {
        let listeners: Vec<Listener> = (1..=300).map(|p| l("127.0.0.1", p)).collect();
        let forwarded: BTreeSet<u16> = [290, 300].into();
        let (plan, limited) = plan(&listeners, GUEST, &[], &forwarded);
        assert!(limited);
        assert_eq!(plan.len(), MAX_PORTS);
        assert!(plan.contains_key(&290) && plan.contains_key(&300) && plan.contains_key(&1));
        assert!(!plan.contains_key(&255));
    }

    /// A server on 127.0.0.1 answering each connection with what it reads, upper-cased.
    async fn loopback_server() -> (TcpListener, u16) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        (server, port)
    }

    async fn serve_one(server: &TcpListener) {
        let (mut conn, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(&buf.to_ascii_uppercase()).await.unwrap();
    }

    /// Forwards on 127.0.0.2 (loopback too, so no guest is needed) to a server on 127.0.0.1.
    #[tokio::test]
    async fn forwards_while_the_loopback_listener_lives() {
        let guest = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let (server, port) = loopback_server().await;
        let mut forwards = Forwards::new(guest, vec![]);
        forwards.apply(&[l("127.0.0.1", port)]).await;
        assert_eq!(forwards.ports(), [port].into());
        let outside = SocketAddr::new(guest, port);
        let client = async {
            let mut conn = TcpStream::connect(outside).await.unwrap();
            conn.write_all(b"hello").await.unwrap();
            let mut back = String::new();
            conn.read_to_string(&mut back).await.unwrap();
            back
        };
        let (back, ()) = tokio::join!(client, serve_one(&server));
        assert_eq!(back, "HELLO");
        // The scan that no longer finds the listener closes the forward.
        forwards.apply(&[l("169.254.0.21", port)]).await;
        assert!(forwards.ports().is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(outside).await.is_err());
    }

    #[tokio::test]
    async fn bind_failures_are_retried() {
        let guest = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let (server, port) = loopback_server().await;
        // Something else holds the guest's address on the port (not in the scanned table).
        let squatter = TcpListener::bind(SocketAddr::new(guest, port)).await.unwrap();
        let mut forwards = Forwards::new(guest, vec![]);
        let table = [l("127.0.0.1", port)];
        forwards.apply(&table).await;
        forwards.apply(&table).await;
        assert!(forwards.ports().is_empty());
        assert_eq!(forwards.failed, [port].into());
        drop(squatter);
        forwards.apply(&table).await;
        assert_eq!(forwards.ports(), [port].into());
        assert!(forwards.failed.is_empty());
        drop(server);
    }

    #[tokio::test]
    async fn finds_a_real_loopback_listener() {
        let (_server, port) = loopback_server().await;
        let listeners = read_tables().await.unwrap();
        assert!(listeners.contains(&l("127.0.0.1", port)), "{port} not in {listeners:?}");
    }
}
