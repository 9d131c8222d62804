//! A named network namespace (`/run/netns/NAME`, as `ip netns` makes them) with a tap device
//! configured as the guest's gateway. Deleting the namespace deletes the tap with it.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::nft::{HOST_LINK_PREFIX, SLOT_NET};
use crate::{NetError, PREFIX_LEN, TAP_IP, TAP_NAME, UPLINK_NAME};

/// Prefix of every namespace Ember creates, so that leftovers can be found and removed.
pub const NAME_PREFIX: &str = "ember-";
const NETNS_DIR: &str = "/run/netns";

/// A live network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates namespace `name` with loopback up, the tap device configured as the guest's
    /// gateway, and an uplink to the host (a veth pair, the host side named `emhN`, numbered
    /// from [`SLOT_NET`]), forwarding on, and nftables `rules` (see [`crate::nft`]) in force
    /// before anything can pass.
    pub fn create(name: &str, rules: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(NetError::BadName(name.to_string()));
        }
        ip(&["netns", "add", name], None)?;
        // On failure `ns` is dropped, which deletes the half-made namespace (and the veth pair,
        // whose peer is inside it).
        let ns = Self { name: name.to_string(), deleted: false };
        let link = add_uplink(name)?;
        let (host_ip, ns_ip) = link_addrs(link);
        let script = format!(
            "link set lo up\ntuntap add dev {TAP_NAME} mode tap\naddr add {TAP_IP}/{PREFIX_LEN} dev {TAP_NAME}\nlink set {TAP_NAME} up\naddr add {ns_ip}/30 dev {UPLINK_NAME}\nlink set {UPLINK_NAME} up\nroute add default via {host_ip}\n"
        );
        ip(&["-n", name, "-batch", "-"], Some(&script))?;
        let path = ns.path();
        in_namespace(&path, || {
            // No IPv6 anywhere in the namespace: the guest gets none, and nothing reaches the host by it.
            // Sockets this process closed towards a guest that is gone (killed, paused) must not
            // keep the namespace, and its uplink, alive through minutes of retransmissions.
            for (key, value) in [
                ("ipv6/conf/all/disable_ipv6", "1"),
                ("ipv6/conf/default/disable_ipv6", "1"),
                ("ipv4/ip_forward", "1"),
                ("ipv4/tcp_orphan_retries", "3"),
                ("ipv4/tcp_fin_timeout", "5"),
            ] {
                write_sysctl(key, value)?;
            }
            nft(rules)
        })?;
        Ok(ns)
    }

    /// Replaces the namespace's nftables rules (atomically: the old ones stay on failure).
    pub fn apply_rules(&self, rules: &str) -> Result<(), NetError> {
        in_namespace(&self.path(), || nft(rules))
    }

    /// Binds a UDP socket at `addr` inside the namespace (non-blocking, for tokio).
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<UdpSocket, NetError> {
        in_namespace(&self.path(), || {
            let s =
                UdpSocket::bind(addr).map_err(|source| NetError::Io { context: format!("bind udp {addr}"), source })?;
            s.set_nonblocking(true).map_err(|source| NetError::Io { context: "set non-blocking".into(), source })?;
            Ok(s)
        })
    }

    /// Binds a listening TCP socket at `addr` inside the namespace (non-blocking, for tokio).
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<TcpListener, NetError> {
        in_namespace(&self.path(), || {
            let s = TcpListener::bind(addr)
                .map_err(|source| NetError::Io { context: format!("bind tcp {addr}"), source })?;
            s.set_nonblocking(true).map_err(|source| NetError::Io { context: "set non-blocking".into(), source })?;
            Ok(s)
        })
    }

    /// Takes over an existing namespace created by an earlier process.
    pub fn adopt(name: &str) -> Option<Self> {
        path_of(name).exists().then(|| Self { name: name.to_string(), deleted: false })
    }

    /// Forgets the namespace without deleting it (it stays for a later [`Netns::adopt`]).
    pub fn detach(mut self) {
        self.deleted = true;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Deletes the namespace (and its tap).
    pub fn delete(mut self) -> Result<(), NetError> {
        self.deleted = true;
        delete(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            if let Err(e) = delete(&self.name) {
                tracing::warn!(netns = %self.name, error = %e, "deleting network namespace");
            }
        }
    }
}

/// Connects a TCP socket from inside the namespace at `ns_path`. The socket stays in that
/// namespace and may be used from any thread.
pub fn connect_in(ns_path: &std::path::Path, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, NetError> {
    in_namespace(ns_path, || {
        TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| NetError::Io { context: format!("connect {addr}"), source })
    })
}

/// Runs `f` on a thread of its own that has entered the namespace at `ns_path` (`setns`
/// changes the calling thread for good). Sockets it makes, and processes it starts, belong to
/// that namespace.
fn in_namespace<T: Send>(
    ns_path: &std::path::Path,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    let ns = File::open(ns_path)
        .map_err(|source| NetError::Io { context: format!("open {}", ns_path.display()), source })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Io { context: "setns".into(), source: e.into() })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Io { context: "namespace thread".into(), source: std::io::Error::other("panicked") })
        })
    })
}

/// Writes `/proc/sys/net/KEY` (of the calling thread's namespace).
fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/net/{key}");
    std::fs::write(&path, value).map_err(|source| NetError::Io { context: format!("write {path}"), source })
}

/// Next uplink number to try; numbers are found free by the kernel refusing a name in use.
static NEXT_LINK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// How many uplinks [`SLOT_NET`] holds (a /30 each).
const LINKS: u32 = 1 << (32 - SLOT_NET.1 - 2);

/// Host and namespace addresses of uplink `n`.
pub fn link_addrs(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(SLOT_NET.0) + 4 * (n % LINKS);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Makes the veth pair of namespace `name`: the host side `emhN` (addressed, up, no IPv6), the
/// other side [`UPLINK_NAME`] inside the namespace. Returns `N`.
fn add_uplink(name: &str) -> Result<u32, NetError> {
    let mut last = None;
    for _ in 0..64 {
        let n = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % LINKS;
        let host = format!("{HOST_LINK_PREFIX}{n}");
        if std::path::Path::new("/sys/class/net").join(&host).exists() {
            continue;
        }
        let (host_ip, _) = link_addrs(n);
        // A name another process took meanwhile fails here, and the next number is tried.
        match ip(&["link", "add", &host, "type", "veth", "peer", "name", UPLINK_NAME, "netns", name], None) {
            Ok(()) => {}
            Err(e) => {
                last = Some(e);
                continue;
            }
        }
        let _ = write_sysctl(&format!("ipv6/conf/{host}/disable_ipv6"), "1");
        let script = format!("addr add {host_ip}/30 dev {host}\nlink set {host} up\n");
        if let Err(e) = ip(&["-batch", "-"], Some(&script)) {
            let _ = ip(&["link", "del", &host], None);
            return Err(e);
        }
        return Ok(n);
    }
    Err(last.unwrap_or_else(|| NetError::Io {
        context: "allocate an uplink".into(),
        source: std::io::Error::other("no free emhN name among 64 tries"),
    }))
}

/// Runs `nft -f -` with `script` (in the calling thread's namespace).
pub(crate) fn nft(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetError::NoNft)?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(script.as_bytes())
            .map_err(|source| NetError::Io { context: "write nft script".into(), source })?;
    }
    let out = child.wait_with_output().map_err(NetError::NoNft)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(String::from_utf8_lossy(&out.stderr).trim().chars().take(2000).collect()))
    }
}

/// Path of namespace `name`'s bind mount.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Name of the namespace of sandbox `id`.
pub fn name_for(id: &str) -> String {
    format!("{NAME_PREFIX}{id}")
}

/// Deletes namespace `name` if it exists.
fn delete(name: &str) -> Result<(), NetError> {
    if !path_of(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name], None)
}

impl Netns {
    /// Deletes namespace `name` if it exists (for reconciling leftovers).
    pub fn delete_by_name(name: &str) -> Result<(), NetError> {
        delete(name)
    }
}

fn ip(args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetError::NoIp)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|source| NetError::Io { context: "write ip batch".into(), source })?;
    }
    let out = child.wait_with_output().map_err(NetError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}
