//! A named network namespace (`/run/netns/NAME`, as `ip netns` makes them) with a tap device
//! configured as the guest's gateway. Deleting the namespace deletes the tap with it.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::{NetError, PREFIX_LEN, TAP_IP, TAP_NAME};

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
    /// Creates namespace `name` with loopback up and the tap device configured.
    pub fn create(name: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(NetError::BadName(name.to_string()));
        }
        ip(&["netns", "add", name], None)?;
        let ns = Self { name: name.to_string(), deleted: false };
        let script = format!(
            "link set lo up\ntuntap add dev {TAP_NAME} mode tap\naddr add {TAP_IP}/{PREFIX_LEN} dev {TAP_NAME}\nlink set {TAP_NAME} up\n"
        );
        // On failure `ns` is dropped here, which deletes the half-made namespace.
        ip(&["-n", name, "-batch", "-"], Some(&script))?;
        Ok(ns)
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
/// namespace and may be used from any thread; the connect runs on a thread of its own because
/// `setns` changes the calling thread for good.
pub fn connect_in(ns_path: &std::path::Path, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, NetError> {
    let ns = File::open(ns_path)
        .map_err(|source| NetError::Io { context: format!("open {}", ns_path.display()), source })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Io { context: "setns".into(), source: e.into() })?;
            TcpStream::connect_timeout(&addr, timeout)
                .map_err(|source| NetError::Io { context: format!("connect {addr}"), source })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Io { context: "connect thread".into(), source: std::io::Error::other("panicked") })
        })
    })
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
