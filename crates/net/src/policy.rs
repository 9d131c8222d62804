//! A sandbox's egress policy, typed and validated: E2B's `allowOut` (IPs, CIDRs, domains),
//! `denyOut` (IPs, CIDRs) and `dnsServers`, with `allow_internet_access=false` read as a deny of
//! everything. Allow beats deny; with no rules everything is allowed. Whatever the policy says,
//! the ranges of [`ALWAYS_DENIED`] (private, link-local, CGNAT, loopback, multicast, reserved,
//! the slots' own links) and every IPv6 destination are refused, unless the operator named an
//! exception ([`Guard`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// Most rules (allow, deny and DNS servers together) one policy may hold.
pub const MAX_RULES: usize = 1000;
/// Longest domain name (RFC 1035).
const MAX_DOMAIN: usize = 253;
/// Most DNS servers (E2B's limit).
const MAX_DNS_SERVERS: usize = 10;

/// An IPv4 network, `addr/len` with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// `addr/len`, host bits cleared; `len` above 32 is refused.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Self { addr: Ipv4Addr::from(u32::from(addr) & mask(len)), len })
    }

    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = PolicyError;

    /// `A.B.C.D` (a /32) or `A.B.C.D/N`.
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::BadCidr(s.chars().take(64).collect());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) if !l.is_empty() && l.len() <= 2 && l.bytes().all(|b| b.is_ascii_digit()) => {
                (a, l.parse::<u8>().map_err(|_| bad())?)
            }
            Some(_) => return Err(bad()),
            None => (s, 32),
        };
        let addr = addr.parse::<Ipv4Addr>().map_err(|_| bad())?;
        Cidr::new(addr, len).ok_or_else(bad)
    }
}

/// Destinations no sandbox may reach, whatever its policy: the operator's own networks and
/// everything that is not the public internet.
pub const ALWAYS_DENIED: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),      // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),     // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),  // CGNAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),    // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local: metadata services
    (Ipv4Addr::new(172, 16, 0, 0), 12),  // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),   // IETF protocol assignments
    (Ipv4Addr::new(192, 168, 0, 0), 16), // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),  // benchmarking: the slots' own links
    (Ipv4Addr::new(224, 0, 0, 0), 4),    // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),    // reserved and broadcast
];

/// [`ALWAYS_DENIED`] as networks.
pub fn always_denied() -> Vec<Cidr> {
    ALWAYS_DENIED.iter().filter_map(|(a, l)| Cidr::new(*a, *l)).collect()
}

/// A domain rule: `example.com` matches that name, `*.example.com` its subdomains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainRule {
    /// Lower case, no trailing dot, without the `*.`.
    name: String,
    wildcard: bool,
}

impl DomainRule {
    pub fn matches(&self, host: &str) -> bool {
        let host = normalise(host);
        if self.wildcard {
            host.len() > self.name.len()
                && host.ends_with(self.name.as_str())
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }
}

impl fmt::Display for DomainRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Lower case without a trailing dot.
fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `s` is a domain name: dot-separated labels of letters, digits, `-` and `_`, each 1
/// to 63 long, not starting or ending with `-`, 253 characters at most, not all digits.
fn valid_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !s.split('.').next_back().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

/// A bad rule, with the text the API answers (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid CIDR or IP address '{0}'")]
    BadCidr(String),
    #[error("invalid domain '{0}': a name like example.com or *.example.com")]
    BadDomain(String),
    #[error("an empty rule in {0}")]
    Empty(&'static str),
    #[error("denyOut takes IP addresses and CIDRs only, not the domain '{0}'")]
    DomainDenied(String),
    #[error("IPv6 rules cannot allow anything: sandboxes have no IPv6 egress ('{0}')")]
    Ipv6Allow(String),
    #[error("invalid DNS server '{0}': an IPv4 address")]
    BadDnsServer(String),
    #[error("at most {MAX_DNS_SERVERS} DNS servers")]
    TooManyDnsServers,
    #[error("at most {MAX_RULES} network rules, got {0}")]
    TooMany(usize),
}

/// One sandbox's egress rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    domains: Vec<DomainRule>,
    dns_servers: Vec<Ipv4Addr>,
}

/// One rule of `allowOut` or `denyOut` as written.
enum Rule {
    Net(Cidr),
    V6,
    Domain(DomainRule),
}

fn parse_rule(field: &'static str, raw: &str) -> Result<Rule, PolicyError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(PolicyError::Empty(field));
    }
    if s.contains(':') {
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        let len_ok = s.split_once('/').is_none_or(|(_, l)| l.parse::<u8>().is_ok_and(|l| l <= 128));
        return match (addr.parse::<std::net::Ipv6Addr>(), len_ok) {
            (Ok(_), true) => Ok(Rule::V6),
            _ => Err(PolicyError::BadCidr(s.chars().take(64).collect())),
        };
    }
    if s.contains('/') || s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s.parse().map(Rule::Net);
    }
    let (wildcard, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let name = normalise(name);
    if !valid_domain(&name) {
        return Err(PolicyError::BadDomain(s.chars().take(MAX_DOMAIN + 2).collect()));
    }
    Ok(Rule::Domain(DomainRule { name, wildcard }))
}

impl EgressPolicy {
    /// Everything allowed (E2B's default).
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Nothing allowed (`allow_internet_access=false` with no rules).
    pub fn deny_all() -> Self {
        Self { deny: Cidr::new(Ipv4Addr::UNSPECIFIED, 0).into_iter().collect(), ..Self::default() }
    }

    /// Reads E2B's rules. `internet == false` adds `0.0.0.0/0` to the denies (allowed entries
    /// still beat it). Every rule is checked; the first bad one is the error.
    pub fn from_rules(
        allow_out: &[String],
        deny_out: &[String],
        dns_servers: &[String],
        internet: bool,
    ) -> Result<Self, PolicyError> {
        let total = allow_out.len() + deny_out.len() + dns_servers.len();
        if total > MAX_RULES {
            return Err(PolicyError::TooMany(total));
        }
        let mut policy = if internet { Self::default() } else { Self::deny_all() };
        for raw in allow_out {
            match parse_rule("allowOut", raw)? {
                Rule::Net(c) => policy.allow.push(c),
                Rule::V6 => return Err(PolicyError::Ipv6Allow(raw.trim().into())),
                Rule::Domain(d) => policy.domains.push(d),
            }
        }
        for raw in deny_out {
            match parse_rule("denyOut", raw)? {
                Rule::Net(c) => policy.deny.push(c),
                // Every IPv6 destination is denied already.
                Rule::V6 => {}
                Rule::Domain(d) => return Err(PolicyError::DomainDenied(d.to_string())),
            }
        }
        if dns_servers.len() > MAX_DNS_SERVERS {
            return Err(PolicyError::TooManyDnsServers);
        }
        for raw in dns_servers {
            let ip = raw.trim().parse::<Ipv4Addr>().map_err(|_| PolicyError::BadDnsServer(raw.clone()))?;
            policy.dns_servers.push(ip);
        }
        dedup(&mut policy.allow);
        dedup(&mut policy.deny);
        dedup(&mut policy.domains);
        dedup(&mut policy.dns_servers);
        Ok(policy)
    }

    /// Allowed networks (IPs and CIDRs of `allowOut`, plus the DNS servers when domains are
    /// allowed, as E2B opens them).
    pub fn allowed_nets(&self) -> Vec<Cidr> {
        let mut nets = self.allow.clone();
        if !self.domains.is_empty() {
            nets.extend(self.dns_servers.iter().filter_map(|ip| Cidr::new(*ip, 32)));
        }
        dedup(&mut nets);
        nets
    }

    /// Denied networks (`denyOut`, and `0.0.0.0/0` when the internet is off).
    pub fn denied_nets(&self) -> &[Cidr] {
        &self.deny
    }

    pub fn domains(&self) -> &[DomainRule] {
        &self.domains
    }

    pub fn dns_servers(&self) -> &[Ipv4Addr] {
        &self.dns_servers
    }

    /// Whether `ip` passes the sandbox's own rules (allow beats deny; no rule allows).
    /// [`Guard::may_reach`] decides the always-denied ranges.
    pub fn allows_ip(&self, ip: Ipv4Addr) -> bool {
        self.allowed_nets().iter().any(|c| c.contains(ip)) || !self.deny.iter().any(|c| c.contains(ip))
    }

    /// Whether a connection naming `host` (HTTP `Host`, TLS SNI) is allowed by a domain rule.
    pub fn allows_domain(&self, host: &str) -> bool {
        self.domains.iter().any(|d| d.matches(host))
    }

    /// Whether name lookups for `name` may leave: always while some public address is
    /// reachable; otherwise only for names a domain rule allows (so a sandbox with no egress
    /// cannot tunnel data out through DNS).
    pub fn allows_lookup(&self, name: &str) -> bool {
        !self.denies_everything() || self.allows_domain(name)
    }

    /// Whether the denies cover every address (`0.0.0.0/0`), so only allowed rules get out.
    pub fn denies_everything(&self) -> bool {
        self.deny.iter().any(|c| c.prefix_len() == 0)
    }
}

fn dedup<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(v.len());
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}

/// A sandbox's policy, shared by its DNS service and egress proxy and replaced whole.
pub type SharedPolicy = Arc<RwLock<Arc<EgressPolicy>>>;

/// A new shared policy holding `policy`.
pub fn shared(policy: EgressPolicy) -> SharedPolicy {
    Arc::new(RwLock::new(Arc::new(policy)))
}

/// The current policy of `shared`.
pub fn current(shared: &SharedPolicy) -> Arc<EgressPolicy> {
    Arc::clone(&shared.read().unwrap_or_else(|e| e.into_inner()))
}

/// What no sandbox may reach, with the operator's exceptions (`ember serve --allow-host-cidr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    exceptions: Vec<Cidr>,
}

impl Guard {
    pub fn new(exceptions: Vec<Cidr>) -> Self {
        Self { exceptions }
    }

    pub fn exceptions(&self) -> &[Cidr] {
        &self.exceptions
    }

    /// Whether a sandbox may reach `ip` at all (before its own policy): not in an always-denied
    /// range and not an address of this host (`host_addrs`), unless an exception names it. Every
    /// IPv6 address is refused.
    pub fn may_reach(&self, ip: IpAddr, host_addrs: &[IpAddr]) -> bool {
        let IpAddr::V4(v4) = ip else {
            return match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| self.may_reach(IpAddr::V4(v4), host_addrs)),
                IpAddr::V4(_) => false,
            };
        };
        if self.exceptions.iter().any(|c| c.contains(v4)) {
            return true;
        }
        !always_denied().iter().any(|c| c.contains(v4)) && !host_addrs.contains(&ip)
    }
}

/// Every address of this host's interfaces (for [`Guard::may_reach`]).
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix_len(), 0);
        for bad in
            ["1.2.3.4/33", "1.2.3/24", "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/ 8", "a.b.c.d", "1.2.3.4/8/8", "256.1.1.1"]
        {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let c: Cidr = "198.51.100.0/24".parse().unwrap();
        assert!(c.contains(ip("198.51.100.7")) && !c.contains(ip("198.51.101.7")));
    }

    #[test]
    fn allow_beats_deny_and_no_rules_allow_everything() {
        let open = EgressPolicy::allow_all();
        assert!(open.allows_ip(ip("8.8.8.8")) && !open.denies_everything());
        let p = EgressPolicy::from_rules(&strings(&["198.51.100.7"]), &strings(&["0.0.0.0/0"]), &[], true).unwrap();
        assert!(p.allows_ip(ip("198.51.100.7")));
        assert!(!p.allows_ip(ip("198.51.100.8")));
        assert!(p.denies_everything());
        let q = EgressPolicy::from_rules(&[], &strings(&["198.51.100.0/24"]), &[], true).unwrap();
        assert!(!q.allows_ip(ip("198.51.100.8")) && q.allows_ip(ip("203.0.113.1")));
    }

    #[test]
    fn internet_off_denies_all_but_explicit_allows() {
        let off = EgressPolicy::from_rules(&[], &[], &[], false).unwrap();
        assert!(!off.allows_ip(ip("198.51.100.7")) && off.denies_everything());
        assert!(!off.allows_lookup("example.com"));
        let some = EgressPolicy::from_rules(&strings(&["example.com"]), &[], &[], false).unwrap();
        assert!(some.allows_lookup("EXAMPLE.com.") && !some.allows_lookup("other.com"));
        assert!(EgressPolicy::allow_all().allows_lookup("anything.test"));
    }

    #[test]
    fn domains_match_exactly_or_by_wildcard() {
        let p = EgressPolicy::from_rules(&strings(&["Example.com.", "*.api.test"]), &[], &[], true).unwrap();
        assert!(p.allows_domain("example.com") && p.allows_domain("EXAMPLE.COM."));
        assert!(!p.allows_domain("www.example.com") && !p.allows_domain("badexample.com"));
        assert!(p.allows_domain("v1.api.test") && p.allows_domain("a.b.api.test"));
        assert!(!p.allows_domain("api.test") && !p.allows_domain("xapi.test") && !p.allows_domain(""));
    }

    #[test]
    fn bad_rules_are_named() {
        let err = |a: &[&str], d: &[&str]| EgressPolicy::from_rules(&strings(a), &strings(d), &[], true).unwrap_err();
        assert_eq!(err(&["10.0.0.0/99"], &[]), PolicyError::BadCidr("10.0.0.0/99".into()));
        assert_eq!(err(&[""], &[]), PolicyError::Empty("allowOut"));
        assert_eq!(err(&[], &["  "]), PolicyError::Empty("denyOut"));
        assert!(matches!(err(&["*."], &[]), PolicyError::BadDomain(_)));
        assert!(matches!(err(&["exa mple.com"], &[]), PolicyError::BadDomain(_)));
        assert!(matches!(err(&["-a.com"], &[]), PolicyError::BadDomain(_)));
        assert!(matches!(err(&["a..com"], &[]), PolicyError::BadDomain(_)));
        assert!(matches!(err(&[&"a".repeat(64)], &[]), PolicyError::BadDomain(_)));
        assert!(matches!(err(&["1.2.3"], &[]), PolicyError::BadCidr(_)));
        assert!(matches!(err(&[], &["example.com"]), PolicyError::DomainDenied(_)));
        assert!(matches!(err(&["::/0"], &[]), PolicyError::Ipv6Allow(_)));
        assert!(matches!(err(&[], &["::1/200"]), PolicyError::BadCidr(_)));
        assert!(EgressPolicy::from_rules(&[], &strings(&["::/0"]), &[], true).is_ok());
        let many: Vec<String> = (0..1001).map(|i| format!("1.2.{}.{}", i / 256, i % 256)).collect();
        assert_eq!(EgressPolicy::from_rules(&many, &[], &[], true).unwrap_err(), PolicyError::TooMany(1001));
        assert!(EgressPolicy::from_rules(&many[..1000], &[], &[], true).is_ok());
        let dns = |d: &[&str]| EgressPolicy::from_rules(&[], &[], &strings(d), true);
        assert!(matches!(dns(&["dns.google"]), Err(PolicyError::BadDnsServer(_))));
        assert_eq!(dns(&["1.1.1.1"; 11]).unwrap_err(), PolicyError::TooManyDnsServers);
    }

    #[test]
    fn dns_servers_open_only_with_domains() {
        let p = EgressPolicy::from_rules(&[], &strings(&["0.0.0.0/0"]), &strings(&["198.51.100.53"]), true).unwrap();
        assert!(!p.allows_ip(ip("198.51.100.53")));
        let q = EgressPolicy::from_rules(
            &strings(&["a.test"]),
            &strings(&["0.0.0.0/0"]),
            &strings(&["198.51.100.53"]),
            true,
        )
        .unwrap();
        assert!(q.allows_ip(ip("198.51.100.53")));
    }

    #[test]
    fn the_guard_refuses_internal_and_host_addresses_unless_excepted() {
        let guard = Guard::default();
        let host = [IpAddr::V4(ip("192.0.2.2"))];
        for denied in [
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.100",
            "127.0.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "198.18.0.1",
            "0.0.0.0",
            "192.0.2.2",
        ] {
            assert!(!guard.may_reach(denied.parse().unwrap(), &host), "{denied}");
        }
        assert!(guard.may_reach("198.51.100.7".parse().unwrap(), &host));
        assert!(guard.may_reach("192.0.2.3".parse().unwrap(), &host));
        assert!(!guard.may_reach("2001:db8::1".parse().unwrap(), &host));
        assert!(!guard.may_reach("::ffff:10.0.0.1".parse().unwrap(), &host));
        assert!(guard.may_reach("::ffff:198.51.100.7".parse().unwrap(), &host));
        let open = Guard::new(vec!["10.9.0.0/16".parse().unwrap(), "192.0.2.2/32".parse().unwrap()]);
        assert!(open.may_reach("10.9.1.1".parse().unwrap(), &host));
        assert!(open.may_reach("192.0.2.2".parse().unwrap(), &host));
        assert!(!open.may_reach("10.8.1.1".parse().unwrap(), &host));
    }
}
