//! Each sandbox's network as the runtime holds it: its slot's namespace (tap, uplink, nftables
//! rules made ahead of time), the egress policy in force, and the host-side services the guest
//! reaches at its gateway — the DNS service and, for domain rules, the egress proxy. The services
//! are tasks of this process on sockets bound inside the namespace; they stop when the sandbox
//! goes. A policy change replaces the namespace's rules in one nftables transaction and the
//! services' view of the policy at once; nothing in the guest restarts.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ember_net::dns::Resolver;
use ember_net::egress::{self, Egress};
use ember_net::nft::namespace_rules;
use ember_net::policy::{self, EgressPolicy, Guard, SharedPolicy};
use ember_net::{Netns, DNS_PORT, PROXY_HTTP_PORT, PROXY_TLS_PORT, TAP_IP};

use crate::RuntimeError;

/// Plain network settings of the runtime.
#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    /// What no sandbox may reach, with the operator's exceptions.
    pub guard: Guard,
    /// Resolvers the DNS service forwards to; empty: the host's (`/etc/resolv.conf`).
    pub dns: Vec<SocketAddr>,
    /// Extra CA certificates (PEM) every sandbox trusts, given to its agent at `/init`.
    pub ca_bundle: Option<String>,
}

/// The live form of [`NetworkConfig`]: one resolver and guard shared by every sandbox.
pub(crate) struct NetContext {
    guard: Arc<Guard>,
    resolver: Arc<Resolver>,
}

impl NetContext {
    pub(crate) fn new(config: &NetworkConfig) -> Self {
        let upstreams = if config.dns.is_empty() { ember_net::dns::host_resolvers() } else { config.dns.clone() };
        Self { guard: Arc::new(config.guard.clone()), resolver: Arc::new(Resolver::new(upstreams)) }
    }

    /// Installs the host's rules and turns forwarding on (idempotent).
    pub(crate) fn install_host(&self) -> Result<(), RuntimeError> {
        Ok(ember_net::host::install(&self.guard)?)
    }

    /// The namespace rules that put `policy` in force.
    pub(crate) fn rules(&self, policy: &EgressPolicy) -> String {
        namespace_rules(policy, &self.guard)
    }
}

/// Which rules a namespace handed to [`SandboxNet::start`] has in force.
pub(crate) enum Rules {
    /// The open policy's (a slot made ahead of time).
    Open,
    /// The policy's it is started with (made for it).
    Of,
    /// Whatever an earlier process left (an adopted sandbox).
    Unknown,
}

/// A sandbox's namespace with its policy and services. Dropping it stops the services, then
/// deletes the namespace (with its tap and uplink).
pub struct SandboxNet {
    tasks: Tasks,
    policy: SharedPolicy,
    netns: Netns,
}

/// Service tasks, aborted when dropped.
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl SandboxNet {
    /// Starts the services of `netns` with `policy` in force: its rules are applied first
    /// unless `netns` has them already (`Rules::Of(policy)`).
    pub(crate) fn start(
        netns: Netns,
        policy: EgressPolicy,
        ctx: &NetContext,
        has: Rules,
    ) -> Result<Self, RuntimeError> {
        let in_force = match has {
            Rules::Open => policy == EgressPolicy::allow_all(),
            Rules::Of => true,
            Rules::Unknown => false,
        };
        if !in_force {
            netns.apply_rules(&ctx.rules(&policy))?;
        }
        let shared = policy::shared(policy);
        let at = |port| SocketAddr::V4(SocketAddrV4::new(TAP_IP, port));
        let tokio_err = |what: &'static str| {
            move |source| RuntimeError::Io { context: format!("register the {what} socket"), source }
        };
        let udp = tokio::net::UdpSocket::from_std(netns.bind_udp(at(DNS_PORT))?).map_err(tokio_err("DNS"))?;
        let tcp = tokio::net::TcpListener::from_std(netns.bind_tcp(at(DNS_PORT))?).map_err(tokio_err("DNS"))?;
        let http =
            tokio::net::TcpListener::from_std(netns.bind_tcp(at(PROXY_HTTP_PORT))?).map_err(tokio_err("proxy"))?;
        let tls = tokio::net::TcpListener::from_std(netns.bind_tcp(at(PROXY_TLS_PORT))?).map_err(tokio_err("proxy"))?;
        let egress = Arc::new(Egress::new(Arc::clone(&shared), Arc::clone(&ctx.guard), Arc::clone(&ctx.resolver)));
        let tasks = Tasks(vec![
            tokio::spawn(ember_net::dns::serve(udp, tcp, Arc::clone(&ctx.resolver), Arc::clone(&shared)))
                .abort_handle(),
            tokio::spawn(egress::serve(http, egress::Kind::Http, Arc::clone(&egress))).abort_handle(),
            tokio::spawn(egress::serve(tls, egress::Kind::Tls, egress)).abort_handle(),
        ]);
        Ok(Self { tasks, policy: shared, netns })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Puts `policy` in force for new connections: the namespace's rules first (on failure the
    /// old policy stays whole), then the services' view.
    pub(crate) fn set_policy(&self, policy: EgressPolicy, ctx: &NetContext) -> Result<(), RuntimeError> {
        self.netns.apply_rules(&ctx.rules(&policy))?;
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        Ok(())
    }

    /// Stops the services and deletes the namespace.
    pub(crate) fn delete(self) -> Result<(), RuntimeError> {
        let SandboxNet { tasks, netns, .. } = self;
        drop(tasks);
        Ok(netns.delete()?)
    }

    /// Stops the services and forgets the namespace, which stays for a later adoption.
    pub(crate) fn detach(self) {
        let SandboxNet { tasks, netns, .. } = self;
        drop(tasks);
        netns.detach();
    }
}
