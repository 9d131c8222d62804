//! nftables rule sets, rendered as `nft -f` scripts from typed inputs: the one in each sandbox's
//! namespace (its egress policy, NAT, and what the guest may reach of the namespace itself) and
//! the host's (no way in from a slot, forwarding and NAT for the slots' links). Each script
//! replaces its whole table in one transaction, so a policy change is atomic.

use std::fmt::Write as _;

use crate::policy::{always_denied, Cidr, EgressPolicy, Guard};
use crate::{DNS_PORT, PROXY_HTTP_PORT, PROXY_TLS_PORT, TAP_IP, TAP_NAME, UPLINK_NAME};

/// The table Ember owns, in each namespace and on the host.
pub const TABLE: &str = "ember";
/// Prefix of the host side of every slot's veth pair (`emhN`).
pub const HOST_LINK_PREFIX: &str = "emh";
/// The network the slots' links are numbered from: slot `N` has `198.18.0.0 + 4N` as a /30,
/// the host side `.1`, the namespace side `.2`. It is always denied to guests.
pub const SLOT_NET: (std::net::Ipv4Addr, u8) = (std::net::Ipv4Addr::new(198, 18, 0, 0), 16);

fn set(out: &mut String, name: &str, nets: &[Cidr]) {
    let _ = write!(out, "  set {name} {{ type ipv4_addr; flags interval; auto-merge;");
    if !nets.is_empty() {
        let elems: Vec<String> = nets.iter().map(Cidr::to_string).collect();
        let _ = write!(out, " elements = {{ {} }};", elems.join(", "));
    }
    out.push_str(" }\n");
}

/// Replaces `table inet ember` (the first two lines make the delete succeed when it is absent).
fn header(out: &mut String) {
    let _ = writeln!(out, "add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
}

/// The namespace's rule set for `policy`:
/// - input: the guest may reach only the DNS service and, when redirected there, the egress
///   proxy; nothing else of the namespace (its gateway included) answers;
/// - forward (guest → uplink, IPv4 only): the guard's exceptions, then always-denied ranges
///   refused, then allowed networks, then denied ones refused, then everything else allowed;
/// - prerouting: with domain rules, TCP to ports 80 and 443 of a denied address goes to the
///   egress proxy, which matches the HTTP `Host` or TLS SNI;
/// - postrouting: the guest's address is masqueraded onto the uplink's.
pub fn namespace_rules(policy: &EgressPolicy, guard: &Guard) -> String {
    let mut out = String::new();
    header(&mut out);
    set(&mut out, "except4", guard.exceptions());
    set(&mut out, "always4", &always_denied());
    set(&mut out, "allow4", &policy.allowed_nets());
    set(&mut out, "deny4", policy.denied_nets());
    let tap = TAP_NAME;
    let up = UPLINK_NAME;
    let _ = writeln!(out, "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;");
    if !policy.domains().is_empty() {
        out.push_str("    ip daddr @except4 return\n    ip daddr @always4 return\n    ip daddr @allow4 return\n");
        for (port, to) in [(80, PROXY_HTTP_PORT), (443, PROXY_TLS_PORT)] {
            let _ = writeln!(out, "    iifname \"{tap}\" ip daddr @deny4 tcp dport {port} dnat ip to {TAP_IP}:{to}");
        }
    }
    out.push_str("  }\n");
    let _ = writeln!(
        out,
        "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{up}\" masquerade\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain input {{ type filter hook input priority filter; policy drop;\n    ct state established,related accept\n    iifname \"lo\" accept\n    iifname \"{tap}\" ip daddr {TAP_IP} udp dport {DNS_PORT} accept\n    iifname \"{tap}\" ip daddr {TAP_IP} tcp dport {DNS_PORT} accept\n    iifname \"{tap}\" ip daddr {TAP_IP} tcp dport {{ {PROXY_HTTP_PORT}, {PROXY_TLS_PORT} }} ct status dnat accept\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain forward {{ type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    iifname \"{tap}\" oifname \"{up}\" meta nfproto ipv4 jump egress\n  }}"
    );
    out.push_str(
        "  chain egress {\n    ip daddr @except4 accept\n    ip daddr @always4 reject with icmpx type admin-prohibited\n    ip daddr @allow4 accept\n    ip daddr @deny4 reject with icmpx type admin-prohibited\n    accept\n  }\n}\n",
    );
    out
}

/// The host's rule set: nothing from a slot's link reaches the host itself (but the guard's
/// exceptions); slots do not reach each other; their traffic is forwarded and masqueraded onto
/// whatever interface it leaves by; replies come back. With `forward_only_slots` (the host did
/// not forward before Ember turned forwarding on) every other forwarded packet is dropped, so
/// the host forwards nothing it did not before.
pub fn host_rules(guard: &Guard, forward_only_slots: bool) -> String {
    let mut out = String::new();
    header(&mut out);
    set(&mut out, "except4", guard.exceptions());
    set(&mut out, "always4", &always_denied());
    let links = format!("{HOST_LINK_PREFIX}*");
    let (net, len) = SLOT_NET;
    let _ = writeln!(
        out,
        "  chain input {{ type filter hook input priority filter - 10; policy accept;\n    iifname \"{links}\" ip daddr @except4 accept\n    iifname \"{links}\" drop\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain forward {{ type filter hook forward priority filter - 10; policy accept;\n    iifname \"{links}\" oifname \"{links}\" drop\n    iifname \"{links}\" ip daddr @except4 accept\n    iifname \"{links}\" ip daddr @always4 drop\n    iifname \"{links}\" ip saddr {net}/{len} accept\n    iifname \"{links}\" drop\n    oifname \"{links}\" ct state established,related accept\n    oifname \"{links}\" drop"
    );
    if forward_only_slots {
        out.push_str("    drop\n");
    }
    out.push_str("  }\n");
    let _ = writeln!(
        out,
        "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {net}/{len} oifname != \"{links}\" masquerade\n  }}\n}}"
    );
    out
}

/// Runs `script` with `nft -f -` in the host's namespace (the calling thread's).
pub fn nft_host(script: &str) -> Result<(), crate::NetError> {
    crate::netns::nft(script)
}

/// Removes the table if it exists.
pub fn delete_rules() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_open_policy_has_no_redirect_and_empty_sets() {
        let rules = namespace_rules(&EgressPolicy::allow_all(), &Guard::default());
        assert!(rules.starts_with("add table inet ember\ndelete table inet ember\n"));
        assert!(!rules.contains("dnat ip to"), "{rules}");
        assert!(rules.contains("set allow4 { type ipv4_addr; flags interval; auto-merge; }"));
        assert!(rules.contains("10.0.0.0/8") && rules.contains("169.254.0.0/16") && rules.contains("100.64.0.0/10"));
        assert!(rules.contains("policy drop;\n    ct state established,related accept\n    iifname \"lo\" accept"));
    }

    #[test]
    fn domains_redirect_web_ports_of_denied_addresses() {
        let p =
            EgressPolicy::from_rules(&strings(&["example.com", "198.51.100.9"]), &strings(&["0.0.0.0/0"]), &[], true)
                .unwrap();
        let rules = namespace_rules(&p, &Guard::new(vec!["10.9.0.0/16".parse().unwrap()]));
        assert!(rules.contains("ip daddr @deny4 tcp dport 80 dnat ip to 169.254.0.22:15080"));
        assert!(rules.contains("ip daddr @deny4 tcp dport 443 dnat ip to 169.254.0.22:15443"));
        assert!(rules
            .contains("set allow4 { type ipv4_addr; flags interval; auto-merge; elements = { 198.51.100.9/32 }; }"));
        assert!(rules.contains("set deny4 { type ipv4_addr; flags interval; auto-merge; elements = { 0.0.0.0/0 }; }"));
        assert!(
            rules.contains("set except4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.9.0.0/16 }; }")
        );
        // The always-denied check comes before the allows in both chains.
        let egress = &rules[rules.find("chain egress").unwrap()..];
        assert!(egress.find("@always4").unwrap() < egress.find("@allow4").unwrap());
    }

    #[test]
    fn the_host_refuses_slots_and_forwards_only_theirs_when_it_did_not_forward() {
        let on = host_rules(&Guard::default(), false);
        assert!(on.contains("iifname \"emh*\" drop\n  }"));
        assert!(on.contains("ip saddr 198.18.0.0/16 oifname != \"emh*\" masquerade"));
        assert!(!on.contains("oifname \"emh*\" drop\n    drop"));
        let off = host_rules(&Guard::default(), true);
        assert!(off.contains("oifname \"emh*\" drop\n    drop\n  }"));
    }
}
