//! Sandbox networking. Every sandbox gets a network namespace of its own holding a tap device
//! that QEMU attaches to; every guest has the same address and MAC (so a snapshot restores into
//! any namespace), and the host reaches the guest by opening sockets from inside the namespace.

#![forbid(unsafe_code)]

mod accept;
pub mod dns;
pub mod egress;
pub mod host;
mod netns;
pub mod nft;
pub mod policy;
pub mod sniff;

pub use netns::{connect_in, link_addrs, name_for, path_of, Netns, NAME_PREFIX};

use std::net::Ipv4Addr;

/// The guest's address on its virtio-net interface, the same in every sandbox.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The tap's address inside the namespace: the guest's gateway.
pub const TAP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Prefix length of the guest link.
pub const PREFIX_LEN: u8 = 30;
/// The guest's MAC address, the same in every sandbox.
pub const GUEST_MAC: &str = "02:fc:00:00:00:05";
/// Name of the tap device inside each namespace.
pub const TAP_NAME: &str = "tap0";
/// Name of the namespace's side of its veth pair to the host.
pub const UPLINK_NAME: &str = "up0";

/// Errors setting up or using a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespace name is not usable.
    #[error("invalid network namespace name '{0}'")]
    BadName(String),
    /// An `ip` command failed.
    #[error("ip {args}: {stderr}")]
    Ip { args: String, stderr: String },
    /// `ip` could not be run at all.
    #[error("cannot run ip (install iproute2): {0}")]
    NoIp(std::io::Error),
    /// `nft` could not be run at all.
    #[error("cannot run nft (install nftables): {0}")]
    NoNft(std::io::Error),
    /// `nft` refused a rule set.
    #[error("nft: {0}")]
    Nft(String),
    /// A system call on the namespace failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// Port of the DNS service each slot offers its guest at [`TAP_IP`].
pub const DNS_PORT: u16 = 53;
/// Port at [`TAP_IP`] where a slot's egress proxy takes the guest's port-80 connections that
/// only a domain rule can allow (nftables redirects them there).
pub const PROXY_HTTP_PORT: u16 = 15080;
/// The same for port 443 (TLS, matched by SNI).
pub const PROXY_TLS_PORT: u16 = 15443;
