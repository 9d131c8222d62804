//! Ember's settings from the environment (the table in README.md). This is the one place that
//! reads them, besides `EMBER_LOG` and `EMBER_API_KEY` at their one use each; the library crates
//! take plain configuration ([`RuntimeConfig`], [`Cache`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ember_image::{Cache, GuestBinaries};
use ember_runtime::RuntimeConfig;
use ember_vmm::Accel;

/// The data directory when neither `--data-dir` nor `EMBER_DATA_DIR` names one.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ember";

/// The data directory: the flag, else `EMBER_DATA_DIR`, else `/var/lib/ember`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("EMBER_DATA_DIR").map(PathBuf::from)).unwrap_or_else(|| DEFAULT_DATA_DIR.into())
}

/// The image cache: `EMBER_CACHE_DIR` or `/var/cache/ember`, its Debian trees fetched from
/// `EMBER_DEBIAN_MIRROR` or the default mirror.
pub fn cache() -> Cache {
    let root = std::env::var_os("EMBER_CACHE_DIR").map(PathBuf::from);
    let cache = Cache::new(root.unwrap_or_else(|| ember_image::cache::DEFAULT_ROOT.into()));
    match std::env::var("EMBER_DEBIAN_MIRROR") {
        Ok(mirror) => cache.with_debian_mirror(mirror),
        Err(_) => cache,
    }
}

/// The QEMU binary: `EMBER_QEMU`, else `qemu-system-x86_64` on `PATH`.
pub fn qemu() -> PathBuf {
    std::env::var_os("EMBER_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// The user QEMU drops to: `EMBER_QEMU_USER` (empty for none: QEMU stays root), else
/// `ember-qemu` if it exists.
pub fn qemu_user() -> Option<String> {
    match std::env::var("EMBER_QEMU_USER") {
        Ok(u) if u.is_empty() => None,
        Ok(u) => Some(u),
        Err(_) => ember_runtime::default_qemu_user(),
    }
}

/// The accelerator `EMBER_ACCEL` forces (`kvm` or `tcg`), if any; other values are ignored.
pub fn accel() -> Option<Accel> {
    match std::env::var("EMBER_ACCEL").as_deref() {
        Ok("tcg") => Some(Accel::Tcg),
        Ok("kvm") => Some(Accel::Kvm),
        _ => None,
    }
}

/// Extra guest kernel arguments: `EMBER_KERNEL_ARGS`.
pub fn kernel_args() -> Option<String> {
    std::env::var("EMBER_KERNEL_ARGS").ok()
}

/// The guest binaries: the agent at `EMBER_AGENT_BIN`, else `ember-agent` beside this
/// executable; the code-interpreter server at `EMBER_INTERPRETER_BIN`, else `ember-interpreter`
/// beside the agent.
pub fn guest_binaries() -> anyhow::Result<GuestBinaries> {
    let agent = match std::env::var_os("EMBER_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().context("locate the ember executable")?.with_file_name("ember-agent"),
    };
    let mut bins = GuestBinaries::beside(agent);
    if let Some(p) = std::env::var_os("EMBER_INTERPRETER_BIN") {
        bins.interpreter = p.into();
    }
    Ok(bins)
}

/// Whether VMs get cgroups of their own: yes unless `EMBER_CGROUPS` is `0` or `off`.
pub fn cgroups() -> bool {
    !matches!(std::env::var("EMBER_CGROUPS").as_deref(), Ok("0" | "off"))
}

/// The runtime's settings from the environment, with state in `data_dir`.
pub fn runtime_config(data_dir: PathBuf, binaries: GuestBinaries) -> RuntimeConfig {
    RuntimeConfig {
        qemu: qemu(),
        qemu_user: qemu_user(),
        accel: accel(),
        kernel_args: kernel_args(),
        cgroups: cgroups(),
        ..RuntimeConfig::new(data_dir, cache(), binaries)
    }
}

/// Most bytes of extra CA certificates given to sandboxes.
const MAX_CA_BUNDLE: usize = 1 << 20;
/// Where Debian keeps the CA certificates an operator added (`update-ca-certificates`).
const HOST_CA_DIR: &str = "/usr/local/share/ca-certificates";

/// The runtime's network settings from `ember serve`'s flags: DNS upstreams (`ADDR` or
/// `ADDR:PORT`), the operator's exceptions to the always-denied ranges, and the extra CA
/// certificates sandboxes trust (`ca_file`, plus the host's own extra ones with `host_ca`).
pub fn network(
    dns: &[String],
    allow: &[String],
    ca_file: Option<&Path>,
    host_ca: bool,
) -> anyhow::Result<ember_runtime::NetworkConfig> {
    let dns = dns
        .iter()
        .map(|d| {
            d.parse::<std::net::SocketAddr>()
                .or_else(|_| d.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .map_err(|_| anyhow::anyhow!("--dns {d}: not an address (ADDR or ADDR:PORT)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let exceptions = allow
        .iter()
        .map(|c| c.parse::<ember_net::policy::Cidr>().map_err(|e| anyhow::anyhow!("--allow-host-cidr: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut pem = String::new();
    if host_ca {
        pem.push_str(&host_ca_certificates());
    }
    if let Some(file) = ca_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("read --ca-bundle {}", file.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            anyhow::bail!("--ca-bundle {}: no PEM certificate in it", file.display());
        }
        pem.push_str(&text);
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
    }
    if pem.len() > MAX_CA_BUNDLE {
        anyhow::bail!("the extra CA certificates come to {} bytes; at most {MAX_CA_BUNDLE}", pem.len());
    }
    Ok(ember_runtime::NetworkConfig {
        guard: ember_net::policy::Guard::new(exceptions),
        dns,
        ca_bundle: (!pem.is_empty()).then_some(pem),
    })
}

/// The PEM certificates in the host's extra CA directory (`*.crt`, recursively, sorted).
fn host_ca_certificates() -> String {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "crt") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(HOST_CA_DIR), &mut files);
    files.sort();
    let mut pem = String::new();
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            if text.contains("-----BEGIN CERTIFICATE-----") {
                pem.push_str(text.trim_end());
                pem.push('\n');
            }
        }
    }
    pem
}

/// `--domain`: a host name or address, optionally with a port.
pub fn check_domain(domain: &str) -> anyhow::Result<String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        && !domain.starts_with('.');
    if !ok {
        anyhow::bail!("--domain {domain}: not a host name (letters, digits, dots, dashes, an optional :PORT)");
    }
    Ok(domain.to_ascii_lowercase())
}

/// The domain of exposed ports when none is given: the listen address (loopback for an
/// unspecified one), so `{port}-{id}.127.0.0.1:3000` reaches the daemon with no DNS set up.
pub fn default_domain(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port()).to_string()
}
