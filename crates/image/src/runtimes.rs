//! The runtimes Ember ships as named templates, built on first use from the `base` tree (Debian
//! trixie): `python` (CPython 3.13), `node-20` (Node.js 20) and `deno` (Deno 2). Each is the
//! base tree plus what its recipe adds, cached by the base tree's key and that recipe; a runtime
//! that adds nothing is the base tree itself, so its image and snapshot are `base`'s.

use std::path::PathBuf;

use crate::cache::Cache;
use crate::{derive, interpreter, rootfs, ImageError};

pub(crate) const TREE_KIND: &str = "rootfs-runtime";

/// A runtime: a name and what it adds to the base tree.
#[derive(Debug)]
pub struct Runtime {
    pub name: &'static str,
    /// What it gives a sandbox, for listings and progress lines.
    pub about: &'static str,
    /// Debian packages (from the base tree's suite).
    apt: &'static [&'static str],
    /// npm packages installed globally, pinned, without install scripts.
    npm: &'static [&'static str],
    /// Files written into the tree: path, text, mode.
    files: &'static [(&'static str, &'static str, u32)],
    /// Symbolic links: target, link.
    links: &'static [(&'static str, &'static str)],
}

/// pip installs into the user's site (`~/.local`) or a venv without `--break-system-packages`,
/// as in a Python image: Debian marks its Python as externally managed.
const PIP_CONF: &str = "[global]\nbreak-system-packages = true\n";

pub const RUNTIMES: &[Runtime] = &[
    Runtime {
        name: "python",
        about: "Python 3.13 (Debian trixie) with pip and venv; `python` is python3",
        apt: &["python-is-python3"],
        npm: &[],
        files: &[("/etc/pip.conf", PIP_CONF, 0o644)],
        links: &[],
    },
    Runtime {
        name: "node-20",
        about: "Node.js 20 and npm (Debian trixie)",
        apt: &[],
        npm: &[],
        files: &[],
        links: &[],
    },
    Runtime {
        name: "deno",
        about: "Deno 2 (from its npm distribution)",
        apt: &[],
        npm: &[interpreter::DENO_PACKAGE],
        files: &[],
        links: &[(interpreter::DENO_BINARY, "/usr/local/bin/deno")],
    },
];

/// The runtime named `name` (aliases are resolved by [`crate::template::canonical`]).
pub fn find(name: &str) -> Option<&'static Runtime> {
    RUNTIMES.iter().find(|r| r.name == name)
}

impl Runtime {
    fn adds_nothing(&self) -> bool {
        self.apt.is_empty() && self.npm.is_empty() && self.files.is_empty() && self.links.is_empty()
    }

    fn recipe(&self) -> String {
        let files: Vec<String> = self.files.iter().map(|(p, t, m)| format!("file {p} {m:o}:\n{t}")).collect();
        let links: Vec<String> = self.links.iter().map(|(t, l)| format!("link {l} -> {t}")).collect();
        format!(
            "ember-runtime-tree-v1\nname={}\napt={}\nnpm={}\n{}\n{}\n",
            self.name,
            self.apt.join(","),
            self.npm.join(","),
            files.join("\n"),
            links.join("\n")
        )
    }

    /// The runtime's tree (its kind, path and key), built from the base tree first if missing.
    pub(crate) fn ensure_tree(&self, cache: &Cache) -> Result<(&'static str, PathBuf, String), ImageError> {
        if self.adds_nothing() {
            let (tree, key) = rootfs::ensure_tree(cache)?;
            return Ok((rootfs::TREE_KIND, tree, key));
        }
        let about = format!("{} runtime ({})", self.name, self.about);
        let (tree, key) = derive::ensure(cache, TREE_KIND, &self.recipe(), &about, |b| {
            if !self.apt.is_empty() {
                b.apt_install(self.apt)?;
            }
            if !self.npm.is_empty() {
                b.npm_install_global(self.npm)?;
            }
            for (path, text, mode) in self.files {
                rootfs::write_file(&b.root, path, text, *mode)?;
            }
            for (target, link) in self.links {
                derive::symlink(&b.root, target, link)?;
            }
            Ok(())
        })?;
        Ok((TREE_KIND, tree, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recipe_is_its_own() {
        let recipes: std::collections::HashSet<String> = RUNTIMES.iter().map(Runtime::recipe).collect();
        assert_eq!(recipes.len(), RUNTIMES.len());
        let python = find("python").map(Runtime::recipe).unwrap_or_default();
        assert!(python.contains("python-is-python3") && python.contains(PIP_CONF));
        assert!(find("deno").is_some_and(|r| r.recipe().contains(interpreter::DENO_PACKAGE)));
    }
}
