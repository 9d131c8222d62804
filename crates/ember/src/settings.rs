//! Ember's settings from the environment (the table in README.md). This is the one place that
//! reads them, besides `EMBER_LOG` and `EMBER_API_KEY` at their one use each; the library crates
//! take plain configuration ([`RuntimeConfig`], [`Cache`]).

use std::path::PathBuf;

use anyhow::Context;
use ember_image::Cache;
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

/// The guest agent binary: `EMBER_AGENT_BIN`, else `ember-agent` beside this executable.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locate the ember executable")?;
    Ok(exe.with_file_name("ember-agent"))
}

/// The runtime's settings from the environment, with state in `data_dir`.
pub fn runtime_config(data_dir: PathBuf, agent_bin: PathBuf) -> RuntimeConfig {
    RuntimeConfig {
        qemu: qemu(),
        qemu_user: qemu_user(),
        accel: accel(),
        kernel_args: kernel_args(),
        ..RuntimeConfig::new(data_dir, cache(), agent_bin)
    }
}
