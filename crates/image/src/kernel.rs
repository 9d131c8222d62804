//! The guest kernel: Debian's `linux-source-6.1`, `allnoconfig` plus the fragment in
//! `guest/kernel/ember.config`, no modules, built as `vmlinux` (booted by QEMU's PVH entry).
//! Cached under the hash of the source package version and the fragment.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, Cache};
use crate::tools::{self, tool};
use crate::{io_err, step, ImageError};

/// The configuration fragment, compiled into the binary so that it is self-contained.
pub const FRAGMENT: &str = include_str!("../../../guest/kernel/ember.config");
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
const KIND: &str = "kernel";

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinux: PathBuf,
    /// The cache key; templates built on this kernel include it in their own key.
    pub key: String,
}

/// Returns the cached kernel, building it first if it is missing.
pub fn ensure(cache: &Cache) -> Result<Kernel, ImageError> {
    tools::require(&[tool("dpkg-query", "dpkg")])?;
    let version = source_version()?;
    let key = cache::key(&[b"ember-kernel-v1\n", version.as_bytes(), b"\n", FRAGMENT.as_bytes()]);
    let vmlinux = cache.entry(KIND, &key).join("vmlinux");
    if vmlinux.is_file() {
        return Ok(Kernel { vmlinux, key });
    }
    let _lock = cache.lock(KIND, &key)?;
    if vmlinux.is_file() {
        return Ok(Kernel { vmlinux, key });
    }
    build(cache, &key, &version)?;
    Ok(Kernel { vmlinux, key })
}

fn source_version() -> Result<String, ImageError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .map_err(io_err("run dpkg-query"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() || !Path::new(SOURCE_TARBALL).is_file() {
        return Err(ImageError::MissingPackage(SOURCE_PACKAGE));
    }
    Ok(version)
}

fn build(cache: &Cache, key: &str, version: &str) -> Result<(), ImageError> {
    tools::require(&[
        tool("make", "make"),
        tool("gcc", "gcc"),
        tool("flex", "flex"),
        tool("bison", "bison"),
        tool("bc", "bc"),
        tool("xz", "xz-utils"),
        tool("tar", "tar"),
        tool("perl", "perl"),
    ])?;
    if !Path::new("/usr/include/libelf.h").is_file() {
        return Err(ImageError::MissingPackage("libelf-dev"));
    }
    eprintln!("==> building guest kernel {SOURCE_PACKAGE} {version} (key {key}); this takes about 10 minutes once");
    let scratch = cache.scratch(KIND, key)?;
    let log = scratch.join("build.log");
    step::run(
        "guest kernel: unpack source",
        Command::new("tar").arg("-xf").arg(SOURCE_TARBALL).arg("-C").arg(&scratch),
        &log,
    )?;
    let src = scratch.join("linux-source-6.1");
    let fragment = scratch.join("ember.config");
    std::fs::write(&fragment, FRAGMENT).map_err(io_err("write kernel config fragment"))?;
    step::run(
        "guest kernel: configure",
        Command::new("scripts/kconfig/merge_config.sh").arg("-n").arg(&fragment).current_dir(&src),
        &log,
    )?;
    let config = std::fs::read_to_string(src.join(".config")).map_err(io_err("read kernel .config"))?;
    let missing = missing_options(FRAGMENT, &config);
    if !missing.is_empty() {
        return Err(ImageError::KernelConfig(missing.join(", ")));
    }
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    step::run(
        "guest kernel: make vmlinux",
        Command::new("make").arg(format!("-j{jobs}")).arg("vmlinux").current_dir(&src),
        &log,
    )?;
    std::fs::rename(src.join("vmlinux"), scratch.join("vmlinux")).map_err(io_err("move vmlinux"))?;
    std::fs::rename(src.join(".config"), scratch.join("config")).map_err(io_err("move .config"))?;
    cache::remove_any(&src)?;
    cache.publish(KIND, key, &scratch)?;
    Ok(())
}

/// Fragment lines `CONFIG_X=v` that the final `.config` does not contain.
pub fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|l| !config.lines().any(|c| c.trim() == *l))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_options_that_did_not_stick() {
        let fragment = "# c\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n";
        assert_eq!(missing_options(fragment, "CONFIG_A=y\n# CONFIG_B is not set\n"), ["CONFIG_B=y"]);
        assert!(missing_options(fragment, "CONFIG_B=y\nCONFIG_A=y\n").is_empty());
    }

    #[test]
    fn fragment_disables_modules() {
        assert!(FRAGMENT.contains("# CONFIG_MODULES is not set"));
        assert!(FRAGMENT.contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y"));
    }
}
