//! A slot's namespace with its uplink and rules, for real (root: namespaces, veths, nftables).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use ember_net::nft::{namespace_rules, HOST_LINK_PREFIX};
use ember_net::policy::{EgressPolicy, Guard};
use ember_net::Netns;

fn skip() -> bool {
    let skip = !nix::unistd::geteuid().is_root() || Command::new("nft").arg("--version").output().is_err();
    if skip {
        eprintln!("skipped: needs root and nft");
    }
    skip
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(HOST_LINK_PREFIX))
        .collect()
}

#[test]
fn a_slot_has_an_uplink_rules_that_change_atomically_and_leaves_nothing() {
    if skip() {
        return;
    }
    let before = host_links();
    let name = format!("ember-nettest{}", std::process::id());
    let ns = Netns::create(&name, &namespace_rules(&EgressPolicy::allow_all(), &Guard::default())).unwrap();
    let links = host_links();
    assert_eq!(links.len(), before.len() + 1, "one new host link: {links:?}");
    let addrs = in_ns(&name, &["ip", "-br", "addr"]);
    assert!(addrs.contains("tap0") && addrs.contains("169.254.0.22/30"), "{addrs}");
    assert!(addrs.contains("up0") && addrs.contains("198.18."), "{addrs}");
    assert!(in_ns(&name, &["ip", "route"]).contains("default via 198.18."));
    assert_eq!(in_ns(&name, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    let table = in_ns(&name, &["nft", "list", "table", "inet", "ember"]);
    assert!(table.contains("chain egress") && !table.contains("dnat ip to"), "{table}");

    let strict = EgressPolicy::from_rules(&["example.test".into()], &["0.0.0.0/0".into()], &[], true).unwrap();
    ns.apply_rules(&namespace_rules(&strict, &Guard::default())).unwrap();
    let table = in_ns(&name, &["nft", "list", "table", "inet", "ember"]);
    assert!(table.contains("dnat ip to 169.254.0.22:15080"), "{table}");
    // A rule set nft refuses leaves the old one in force.
    assert!(ns.apply_rules("table inet ember { chain x { bogus } }").is_err());
    assert!(in_ns(&name, &["nft", "list", "table", "inet", "ember"]).contains("dnat ip to 169.254.0.22:15080"));

    ns.delete().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(host_links().len(), before.len(), "the host link went with the namespace");
}
