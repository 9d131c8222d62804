//! Templates: a name resolved to the kernel and root disk a sandbox boots from, and what in the
//! guest must answer before the template's snapshot is taken.

use std::path::{Path, PathBuf};

use crate::rootfs::{Install, Tree, AGENT_PATH};
use crate::{interpreter, kernel, rootfs, runtimes, Cache, ImageError};

/// Template names Ember can build: `base`, the code interpreter's, and the runtimes
/// ([`runtimes::RUNTIMES`]).
pub const KNOWN_TEMPLATES: &[&str] = &["base", "code-interpreter", "python", "node-20", "deno"];
/// Other names of built-in templates: E2B's and the runtimes' seed names.
pub const ALIASES: &[(&str, &str)] = &[
    ("code-interpreter-v1", "code-interpreter"),
    ("python-3.13", "python"),
    ("nodejs-20", "node-20"),
    ("deno-2", "deno"),
];

/// Path of the code-interpreter server inside the guest.
pub const INTERPRETER_PATH: &str = "/usr/local/bin/ember-interpreter";
/// The services the agent starts at boot and keeps running (read by the agent's init).
pub const SERVICES_PATH: &str = "/etc/ember/services.json";
/// The code-interpreter server's port.
pub const INTERPRETER_PORT: u16 = 49999;

/// The guest binaries Ember installs into template images.
#[derive(Debug, Clone)]
pub struct GuestBinaries {
    pub agent: PathBuf,
    /// The code-interpreter server; needed only by the `code-interpreter` template.
    pub interpreter: PathBuf,
}

impl GuestBinaries {
    /// The agent at `agent` and the interpreter beside it (`ember-interpreter`).
    pub fn beside(agent: PathBuf) -> Self {
        let interpreter = agent.with_file_name("ember-interpreter");
        Self { agent, interpreter }
    }
}

/// The vCPUs and memory a template's sandboxes get unless the operator sets others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The size of built-in template `name`'s sandboxes: `base` is the smallest (1 vCPU, 256 MiB);
/// the runtimes get 512 MiB for package managers and the code interpreter 2 vCPUs and 512 MiB
/// for its kernels and data libraries. Other names get `base`'s.
pub fn default_size(name: &str) -> Size {
    match canonical(name) {
        Some("code-interpreter") => Size { vcpus: 2, memory_mib: 512 },
        Some("python" | "node-20" | "deno") => Size { vcpus: 1, memory_mib: 512 },
        _ => Size { vcpus: 1, memory_mib: 256 },
    }
}

/// An HTTP endpoint in the guest that answers 200 once the template's services are ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub port: u16,
    pub path: &'static str,
}

/// A built template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub kernel: PathBuf,
    /// Raw ext4 image; read-only, used as the backing file of each sandbox's overlay.
    pub rootfs: PathBuf,
    /// Hash of everything in the template.
    pub key: String,
    /// What must answer before a snapshot of the template is taken (besides the agent).
    pub ready: Option<Ready>,
}

/// The built-in template `name` names (itself, or the one it is an alias of), if any.
pub fn canonical(name: &str) -> Option<&'static str> {
    let name = ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, to)| *to);
    KNOWN_TEMPLATES.iter().find(|known| **known == name).copied()
}

/// Checks that `name` is a template Ember knows (or an alias of one), without building anything.
pub fn check_name(name: &str) -> Result<&'static str, ImageError> {
    canonical(name).ok_or_else(|| ImageError::UnknownTemplate { name: name.to_string() })
}

/// Returns template `name`, building its kernel and root filesystem on first use.
pub fn ensure(cache: &Cache, name: &str, bins: &GuestBinaries) -> Result<Template, ImageError> {
    let name = check_name(name)?;
    let agent = read(&bins.agent).map_err(|_| ImageError::AgentMissing(bins.agent.clone()))?;
    let mut installs = vec![Install { path: AGENT_PATH, bytes: agent, mode: 0o755 }];
    let (rootfs, rootfs_key, ready) = if name == "code-interpreter" {
        let server = read(&bins.interpreter).map_err(|_| ImageError::InterpreterMissing(bins.interpreter.clone()))?;
        installs.push(Install { path: INTERPRETER_PATH, bytes: server, mode: 0o755 });
        installs.push(Install { path: SERVICES_PATH, bytes: interpreter_services().into_bytes(), mode: 0o644 });
        let (tree, key) = interpreter::ensure_tree(cache)?;
        let tree = Tree { kind: interpreter::TREE_KIND, path: &tree, key: &key };
        let (image, key) = rootfs::ensure_image(cache, tree, &installs)?;
        (image, key, Some(Ready { port: INTERPRETER_PORT, path: "/health" }))
    } else if let Some(runtime) = runtimes::find(name) {
        let (kind, tree, key) = runtime.ensure_tree(cache)?;
        let (image, key) = rootfs::ensure_image(cache, Tree { kind, path: &tree, key: &key }, &installs)?;
        (image, key, None)
    } else {
        let (tree, key) = rootfs::ensure_tree(cache)?;
        let tree = Tree { kind: rootfs::TREE_KIND, path: &tree, key: &key };
        let (image, key) = rootfs::ensure_image(cache, tree, &installs)?;
        (image, key, None)
    };
    let kernel = kernel::ensure(cache)?;
    let key = crate::cache::key(&[kernel.key.as_bytes(), rootfs_key.as_bytes()]);
    Ok(Template { name: name.to_string(), kernel: kernel.vmlinux, rootfs, key, ready })
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// The code-interpreter template's services: its server, run as root (it starts each kernel as
/// the sandbox's user).
fn interpreter_services() -> String {
    serde_json::json!([{
        "name": "interpreter",
        "cmd": [INTERPRETER_PATH, "--kernels", interpreter::KERNELS_DIR],
    }])
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_template_is_named_with_the_known_ones() {
        assert_eq!(check_name("base").ok(), Some("base"));
        assert_eq!(check_name("code-interpreter-v1").ok(), Some("code-interpreter"));
        assert_eq!(check_name("nodejs-20").ok(), Some("node-20"));
        let msg = check_name("nope").unwrap_err().to_string();
        assert!(msg.contains("'nope'") && msg.contains("base"), "{msg}");
    }

    #[test]
    fn every_runtime_is_a_known_template_and_aliases_agree() {
        for runtime in runtimes::RUNTIMES {
            assert_eq!(canonical(runtime.name), Some(runtime.name));
        }
        for (alias, to) in [("python-3.13", "python"), ("nodejs-20", "node-20"), ("deno-2", "deno")] {
            assert_eq!(canonical(alias), Some(to), "{alias}");
        }
        assert!(ALIASES.iter().all(|(alias, to)| !KNOWN_TEMPLATES.contains(alias) && KNOWN_TEMPLATES.contains(to)));
        assert!(canonical("python-3.12").is_none());
    }

    #[test]
    fn base_is_the_smallest_and_aliases_share_sizes() {
        assert_eq!(default_size("base"), Size { vcpus: 1, memory_mib: 256 });
        assert_eq!(default_size("code-interpreter-v1"), default_size("code-interpreter"));
        assert_eq!(default_size("nodejs-20"), Size { vcpus: 1, memory_mib: 512 });
        for name in KNOWN_TEMPLATES {
            let size = default_size(name);
            assert!(size.vcpus >= default_size("base").vcpus && size.memory_mib >= 256, "{name}");
        }
    }

    #[test]
    fn the_interpreter_is_found_beside_the_agent() {
        let bins = GuestBinaries::beside("/opt/ember/ember-agent".into());
        assert_eq!(bins.interpreter, Path::new("/opt/ember/ember-interpreter"));
    }

    #[test]
    fn the_interpreter_service_names_the_installed_server() {
        let v: serde_json::Value = serde_json::from_str(&interpreter_services()).expect("json");
        assert_eq!(v[0]["cmd"][0], INTERPRETER_PATH);
    }
}
