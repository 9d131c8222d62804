//! The code-interpreter template's tree: the `base` tree plus Jupyter kernels and the data
//! libraries (`guest/interpreter/`): ipykernel with pandas, numpy, matplotlib and E2B's chart
//! and data formatters (`e2b-charts`), bash_kernel, Deno (whose `deno jupyter` kernel serves
//! JavaScript and TypeScript, and gives sandboxes a Deno runtime), and R with IRkernel from
//! Debian. Every Python package is pinned and installed without dependency resolution; Deno is
//! pinned too, and R comes from the suite the base tree is built from. Cached by the hash of the base
//! tree's key and this recipe, like the base tree.
//!
//! The packages come from PyPI and the npm registry, fetched by the tree's own pip and npm inside
//! a chroot; they trust the host's CA bundle during the build (a host behind a TLS-inspecting
//! proxy needs its CA), which is removed again before the tree is published.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, Cache};
use crate::rootfs::{self, chroot, set_mode, ProcMount};
use crate::tools::{self, tool};
use crate::{io_err, step, ImageError};

pub(crate) const TREE_KIND: &str = "rootfs-interpreter";

/// Pinned Python packages (the full set, installed with `--no-deps`).
const REQUIREMENTS: &str = include_str!("../../../guest/interpreter/requirements.txt");
/// Kernelspecs installed under [`KERNELS_DIR`], by name.
const KERNELS: &[(&str, &str)] = &[
    ("python3", include_str!("../../../guest/interpreter/kernels/python3/kernel.json")),
    ("deno", include_str!("../../../guest/interpreter/kernels/deno/kernel.json")),
    ("bash", include_str!("../../../guest/interpreter/kernels/bash/kernel.json")),
    ("ir", include_str!("../../../guest/interpreter/kernels/ir/kernel.json")),
];
/// Debian packages for the R kernel (about 150 MB with their libraries).
const APT_PACKAGES: &[&str] = &["r-base-core", "r-cran-irkernel"];
/// IPython's start-up file and kernel settings for the user's profile.
const IPYTHON_STARTUP: &str = include_str!("../../../guest/interpreter/ipython_startup.py");
const IPYTHON_CONFIG: &str = include_str!("../../../guest/interpreter/ipython_kernel_config.py");
/// Deno's npm package for this platform (the binary itself; no install script runs).
const DENO_PACKAGE: &str = "@deno/linux-x64-glibc@2.9.6";
const DENO_BINARY: &str = "/usr/local/lib/node_modules/@deno/linux-x64-glibc/deno";

/// Where the server finds kernelspecs in the guest.
pub const KERNELS_DIR: &str = "/usr/local/share/jupyter/kernels";
/// The user's IPython profile (uid/gid 1000, made by the base tree).
const PROFILE: &str = "home/user/.ipython/profile_default";
const USER_ID: u32 = 1000;
/// The host's CA bundle, copied into the tree for the build only.
const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
const BUILD_CA: &str = "tmp/ember-build-ca.pem";
const BUILD_REQUIREMENTS: &str = "tmp/ember-requirements.txt";

fn recipe() -> String {
    let kernels: Vec<String> = KERNELS.iter().map(|(n, k)| format!("kernel {n}:\n{k}")).collect();
    format!(
        "ember-interpreter-tree-v1\nrequirements:\n{REQUIREMENTS}\n{}\nstartup:\n{IPYTHON_STARTUP}\nconfig:\n{IPYTHON_CONFIG}\ndeno={DENO_PACKAGE}\napt={}\n",
        kernels.join("\n"),
        APT_PACKAGES.join(",")
    )
}

/// Returns the cached code-interpreter tree, building it (and the base tree) first if missing.
pub fn ensure_tree(cache: &Cache) -> Result<(PathBuf, String), ImageError> {
    let (base, base_key) = rootfs::ensure_tree(cache)?;
    let key = cache::key(&[base_key.as_bytes(), recipe().as_bytes()]);
    let tree = cache.entry(TREE_KIND, &key);
    if tree.join("etc/os-release").exists() {
        return Ok((tree, key));
    }
    let _lock = cache.lock(TREE_KIND, &key)?;
    if !tree.join("etc/os-release").exists() {
        let _base_lock = cache.lock(rootfs::TREE_KIND, &base_key)?;
        build_tree(cache, &key, &base)?;
    }
    Ok((tree, key))
}

fn build_tree(cache: &Cache, key: &str, base: &Path) -> Result<(), ImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NotRoot);
    }
    tools::require(&[tool("cp", "coreutils"), tool("chroot", "coreutils")])?;
    eprintln!("==> building the code-interpreter root filesystem (Jupyter kernels, pandas, matplotlib, Deno, R; key {key}); a few minutes once");
    let scratch = cache.scratch(TREE_KIND, key)?;
    let log = cache.root().join(TREE_KIND).join(format!("{key}.log"));
    let _ = std::fs::remove_file(&log);
    let root = scratch.join("root");
    step::run(
        "interpreter: copy the base tree",
        Command::new("cp").args(["-a", "--reflink=auto"]).arg(base).arg(&root),
        &log,
    )?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).map_err(io_err("copy resolv.conf"))?;
    std::fs::copy(HOST_CA, root.join(BUILD_CA)).map_err(io_err(format!("copy {HOST_CA}")))?;
    std::fs::write(root.join(BUILD_REQUIREMENTS), REQUIREMENTS).map_err(io_err("write the requirements"))?;
    {
        let _proc = ProcMount::new(&root)?;
        step::run(
            "interpreter: apt-get install R and IRkernel",
            chroot(&root, "sh")
                .args(["-c", "set -e; apt-get update -q; apt-get install -y -q --no-install-recommends \"$@\"; apt-get clean; rm -rf /var/lib/apt/lists/*", "apt"])
                .args(APT_PACKAGES)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &log,
        )?;
        step::run(
            "interpreter: pip install (ipykernel, pandas, numpy, matplotlib, e2b-charts, bash_kernel)",
            fetching(chroot(&root, "python3"))
                .args(["-m", "pip", "install", "--no-deps", "--no-cache-dir", "--break-system-packages"])
                .args(["--disable-pip-version-check", "--no-input", "--cert"])
                .arg(format!("/{BUILD_CA}"))
                .arg("-r")
                .arg(format!("/{BUILD_REQUIREMENTS}")),
            &log,
        )?;
        step::run(
            "interpreter: npm install Deno",
            fetching(chroot(&root, "npm"))
                .args(["install", "--global", "--ignore-scripts", "--no-audit", "--no-fund", "--cafile"])
                .arg(format!("/{BUILD_CA}"))
                .arg(DENO_PACKAGE),
            &log,
        )?;
    }
    install_files(&root)?;
    for leftover in [BUILD_CA, BUILD_REQUIREMENTS] {
        std::fs::remove_file(root.join(leftover)).map_err(io_err(format!("remove /{leftover}")))?;
    }
    for cache_dir in ["root/.npm", "root/.cache"] {
        cache::remove_any(&root.join(cache_dir))?;
    }
    std::fs::write(root.join("etc/resolv.conf"), "").map_err(io_err("empty resolv.conf"))?;
    rootfs::publish_tree(cache, TREE_KIND, key, &scratch)
}

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

/// A chroot command that fetches from a registry: the host's environment is not passed on (its
/// CA and pip settings name host paths), except [`PASSED_THROUGH`]; the build's CA bundle is the
/// one trusted.
fn fetching(mut cmd: Command) -> Command {
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

/// Kernelspecs, Deno on `PATH`, and the user's IPython profile.
fn install_files(root: &Path) -> Result<(), ImageError> {
    let mkdir = |rel: &str| std::fs::create_dir_all(root.join(rel)).map_err(io_err(format!("create /{rel}")));
    let write = |rel: &str, text: &str, mode: u32| {
        std::fs::write(root.join(rel), text).map_err(io_err(format!("write /{rel}")))?;
        set_mode(&root.join(rel), mode)
    };
    for (name, spec) in KERNELS {
        let dir = format!("{}/{name}", KERNELS_DIR.trim_start_matches('/'));
        mkdir(&dir)?;
        set_mode(&root.join(&dir), 0o755)?;
        write(&format!("{dir}/kernel.json"), spec, 0o644)?;
    }
    let deno = root.join("usr/local/bin/deno");
    let _ = std::fs::remove_file(&deno);
    std::os::unix::fs::symlink(DENO_BINARY, &deno).map_err(io_err("link /usr/local/bin/deno"))?;
    mkdir(&format!("{PROFILE}/startup"))?;
    write(&format!("{PROFILE}/startup/00-ember.py"), IPYTHON_STARTUP, 0o644)?;
    write(&format!("{PROFILE}/ipython_kernel_config.py"), IPYTHON_CONFIG, 0o644)?;
    let ipython = root.join("home/user/.ipython");
    let chown = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(USER_ID), Some(USER_ID)).map_err(io_err(format!("chown {}", p.display())))
    };
    for dir in [ipython.clone(), ipython.join("profile_default"), ipython.join("profile_default/startup")] {
        chown(&dir)?;
        set_mode(&dir, 0o755)?;
    }
    chown(&ipython.join("profile_default/startup/00-ember.py"))?;
    chown(&ipython.join("profile_default/ipython_kernel_config.py"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_python_package_is_pinned() {
        let lines: Vec<&str> =
            REQUIREMENTS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        assert!(lines.len() > 10, "{lines:?}");
        for line in &lines {
            let (name, version) = line.split_once("==").unwrap_or_else(|| panic!("not pinned: {line}"));
            assert!(!name.is_empty() && version.chars().next().is_some_and(|c| c.is_ascii_digit()), "{line}");
        }
        for wanted in ["ipykernel", "pandas", "numpy", "matplotlib", "e2b-charts", "bash_kernel"] {
            assert!(lines.iter().any(|l| l.starts_with(&format!("{wanted}=="))), "{wanted} missing");
        }
    }

    #[test]
    fn kernelspecs_are_json_with_the_connection_file() {
        for (name, spec) in KERNELS {
            let v: serde_json::Value = serde_json::from_str(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            let argv = v["argv"].as_array().unwrap_or_else(|| panic!("{name}: no argv"));
            assert!(argv.iter().any(|a| a == "{connection_file}"), "{name}: {argv:?}");
            assert!(argv[0].as_str().is_some_and(|p| p.starts_with('/')), "{name}: argv[0] is not absolute");
        }
    }

    #[test]
    fn the_recipe_covers_every_input() {
        let r = recipe();
        for part in [REQUIREMENTS, IPYTHON_STARTUP, IPYTHON_CONFIG, DENO_PACKAGE] {
            assert!(r.contains(part));
        }
        assert!(KERNELS.iter().all(|(_, k)| r.contains(k)));
    }
}
