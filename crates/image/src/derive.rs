//! Trees derived from the `base` tree (the code interpreter's, the runtimes'): a copy of the base
//! tree, changed in a chroot by Debian's and the registries' own clients, cleaned and published
//! under its own key.
//!
//! Registry fetches inside the chroot trust the host's CA bundle during the build (a host behind a
//! TLS-inspecting proxy needs its CA); it is removed again before the tree is published, and so
//! are the resolver settings and the package managers' caches.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, Cache};
use crate::rootfs::{self, chroot, ProcMount};
use crate::tools::{self, tool};
use crate::{io_err, step, ImageError};

/// The host's CA bundle, copied into the tree for the build only.
const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
const BUILD_CA: &str = "tmp/ember-build-ca.pem";

/// Host settings a registry fetch inside the chroot may need: proxies and mirrors.
const PASSED_THROUGH: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "PIP_INDEX_URL",
    "npm_config_registry",
];

/// Derived trees kept per kind (the most recently built): the runtimes' kind holds two
/// runtimes, so this is two builds of each.
const KEEP_TREES: usize = 4;

/// A derived tree being built: its root, its build log and the step labels' prefix.
pub(crate) struct Build<'a> {
    pub root: PathBuf,
    pub log: PathBuf,
    label: &'a str,
}

impl Build<'_> {
    /// Runs `cmd` as step `what` of this build.
    pub fn step(&self, what: &str, cmd: &mut Command) -> Result<(), ImageError> {
        step::run(&format!("{}: {what}", self.label), cmd, &self.log)
    }

    /// `apt-get install` of `packages` from the suite the base tree was made from.
    pub fn apt_install(&self, packages: &[&str]) -> Result<(), ImageError> {
        self.step(
            &format!("apt-get install {}", packages.join(" ")),
            chroot(&self.root, "sh")
                .args([
                    "-c",
                    "set -e; apt-get update -q; apt-get install -y -q --no-install-recommends \"$@\"; apt-get clean; rm -rf /var/lib/apt/lists/*",
                    "apt",
                ])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }

    /// `npm install --global` of `packages` (pinned `name@version`), without install scripts.
    pub fn npm_install_global(&self, packages: &[&str]) -> Result<(), ImageError> {
        self.step(
            &format!("npm install {}", packages.join(" ")),
            self.fetching("npm")
                .args(["install", "--global", "--ignore-scripts", "--no-audit", "--no-fund", "--cafile"])
                .arg(format!("/{BUILD_CA}"))
                .args(packages),
        )
    }

    /// A chroot command that fetches from a registry: the host's environment is not passed on
    /// (its CA and pip settings name host paths), except [`PASSED_THROUGH`]; the build's CA bundle
    /// is the one trusted.
    pub fn fetching(&self, program: &str) -> Command {
        let mut cmd = chroot(&self.root, program);
        let ca = format!("/{BUILD_CA}");
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS"] {
            cmd.env(var, &ca);
        }
        for var in PASSED_THROUGH {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        cmd
    }

    /// The build's CA bundle as the guest sees it during the build.
    pub fn ca_path(&self) -> String {
        format!("/{BUILD_CA}")
    }
}

/// Returns the tree of `kind` derived from the base tree by `recipe` (its key is the base
/// tree's and the recipe's), building it with `build` first if missing. `about` says what it
/// is in the build's progress line.
pub(crate) fn ensure(
    cache: &Cache,
    kind: &str,
    recipe: &str,
    about: &str,
    build: impl FnOnce(&Build<'_>) -> Result<(), ImageError>,
) -> Result<(PathBuf, String), ImageError> {
    let (base, base_key) = rootfs::ensure_tree(cache)?;
    let key = cache::key(&[base_key.as_bytes(), recipe.as_bytes()]);
    let tree = cache.entry(kind, &key);
    if tree.join("etc/os-release").exists() {
        return Ok((tree, key));
    }
    let _lock = cache.lock(kind, &key)?;
    if !tree.join("etc/os-release").exists() {
        let _base_lock = cache.lock(rootfs::TREE_KIND, &base_key)?;
        derive(cache, kind, &key, &base, about, build)?;
        // Trees are only read to make images (which copy them): old ones can go.
        cache.prune(kind, KEEP_TREES, &key);
    }
    Ok((tree, key))
}

fn derive(
    cache: &Cache,
    kind: &str,
    key: &str,
    base: &Path,
    about: &str,
    build: impl FnOnce(&Build<'_>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NotRoot);
    }
    tools::require(&[tool("cp", "coreutils"), tool("chroot", "coreutils")])?;
    eprintln!("==> building the {about} root filesystem (key {key}); a few minutes once");
    let scratch = cache.scratch(kind, key)?;
    let log = cache.root().join(kind).join(format!("{key}.log"));
    let _ = std::fs::remove_file(&log);
    let root = scratch.join("root");
    let b = Build { root, log, label: kind };
    b.step("copy the base tree", Command::new("cp").args(["-a", "--reflink=auto"]).arg(base).arg(&b.root))?;
    std::fs::copy("/etc/resolv.conf", b.root.join("etc/resolv.conf")).map_err(io_err("copy resolv.conf"))?;
    std::fs::copy(HOST_CA, b.root.join(BUILD_CA)).map_err(io_err(format!("copy {HOST_CA}")))?;
    {
        let _proc = ProcMount::new(&b.root)?;
        build(&b)?;
    }
    std::fs::remove_file(b.root.join(BUILD_CA)).map_err(io_err(format!("remove /{BUILD_CA}")))?;
    for cache_dir in ["root/.npm", "root/.cache"] {
        cache::remove_any(&b.root.join(cache_dir))?;
    }
    std::fs::write(b.root.join("etc/resolv.conf"), "").map_err(io_err("empty resolv.conf"))?;
    rootfs::publish_tree(cache, kind, key, &scratch)
}

/// Points `link` (absolute, in the guest) at `target`, replacing what was there.
pub(crate) fn symlink(root: &Path, target: &str, link: &str) -> Result<(), ImageError> {
    let path = root.join(link.trim_start_matches('/'));
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, &path).map_err(io_err(format!("link {link}")))
}
