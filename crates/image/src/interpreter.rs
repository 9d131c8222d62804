//! The code-interpreter template's tree: the `base` tree plus Jupyter kernels and the data
//! libraries (`guest/interpreter/`): ipykernel with pandas, numpy, matplotlib and E2B's chart
//! and data formatters (`e2b-charts`), bash_kernel, Deno (whose `deno jupyter` kernel serves
//! JavaScript and TypeScript, and gives sandboxes a Deno runtime), and R with IRkernel from
//! Debian. Every Python package is pinned and installed without dependency resolution; Deno is
//! pinned too, and R comes from the suite the base tree is built from. Cached by the hash of the base
//! tree's key and this recipe, like the base tree.
//!
//! The packages come from PyPI and the npm registry, fetched by the tree's own pip and npm inside
//! a chroot ([`derive`]).

use std::path::{Path, PathBuf};

use crate::cache::Cache;
use crate::rootfs::{set_mode, write_file};
use crate::{derive, io_err, ImageError};

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
pub(crate) const DENO_PACKAGE: &str = "@deno/linux-x64-glibc@2.9.6";
pub(crate) const DENO_BINARY: &str = "/usr/local/lib/node_modules/@deno/linux-x64-glibc/deno";

/// Where the server finds kernelspecs in the guest.
pub const KERNELS_DIR: &str = "/usr/local/share/jupyter/kernels";
/// The user's IPython profile (uid/gid 1000, made by the base tree).
const PROFILE: &str = "home/user/.ipython/profile_default";
const USER_ID: u32 = 1000;
const BUILD_REQUIREMENTS: &str = "tmp/ember-requirements.txt";

fn recipe() -> String {
    let kernels: Vec<String> = KERNELS.iter().map(|(n, k)| format!("kernel {n}:\n{k}")).collect();
    format!(
        "ember-interpreter-tree-v2\nrequirements:\n{REQUIREMENTS}\n{}\nstartup:\n{IPYTHON_STARTUP}\nconfig:\n{IPYTHON_CONFIG}\ndeno={DENO_PACKAGE}\napt={}\n",
        kernels.join("\n"),
        APT_PACKAGES.join(",")
    )
}

/// Returns the cached code-interpreter tree, building it (and the base tree) first if missing.
pub fn ensure_tree(cache: &Cache) -> Result<(PathBuf, String), ImageError> {
    derive::ensure(
        cache,
        TREE_KIND,
        &recipe(),
        "code-interpreter (Jupyter kernels, pandas, matplotlib, Deno, R)",
        |b| {
            b.apt_install(APT_PACKAGES)?;
            std::fs::write(b.root.join(BUILD_REQUIREMENTS), REQUIREMENTS).map_err(io_err("write the requirements"))?;
            b.step(
                "pip install (ipykernel, pandas, numpy, matplotlib, e2b-charts, bash_kernel)",
                b.fetching("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--no-deps",
                        "--no-cache-dir",
                        "--break-system-packages",
                        "--ignore-installed",
                    ])
                    .args(["--disable-pip-version-check", "--no-input", "--cert"])
                    .arg(b.ca_path())
                    .arg("-r")
                    .arg(format!("/{BUILD_REQUIREMENTS}")),
            )?;
            std::fs::remove_file(b.root.join(BUILD_REQUIREMENTS))
                .map_err(io_err(format!("remove /{BUILD_REQUIREMENTS}")))?;
            b.npm_install_global(&[DENO_PACKAGE])?;
            install_files(&b.root)
        },
    )
}

/// Kernelspecs, Deno on `PATH`, and the user's IPython profile.
fn install_files(root: &Path) -> Result<(), ImageError> {
    let mkdir = |rel: &str| std::fs::create_dir_all(root.join(rel)).map_err(io_err(format!("create /{rel}")));
    let write = |rel: &str, text: &str, mode: u32| write_file(root, rel, text, mode);
    for (name, spec) in KERNELS {
        let dir = format!("{}/{name}", KERNELS_DIR.trim_start_matches('/'));
        mkdir(&dir)?;
        set_mode(&root.join(&dir), 0o755)?;
        write(&format!("{dir}/kernel.json"), spec, 0o644)?;
    }
    derive::symlink(root, DENO_BINARY, "/usr/local/bin/deno")?;
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
