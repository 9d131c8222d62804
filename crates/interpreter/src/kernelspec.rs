//! Jupyter kernelspecs: `<dir>/<name>/kernel.json` with `argv` (containing
//! `{connection_file}`), `env` and `interrupt_mode`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest kernel.json read.
const MAX_SPEC_BYTES: u64 = 64 * 1024;

/// Why a kernelspec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// kernel.json unreadable
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// kernel.json too large
    #[error("{0} is larger than 64 KiB")]
    TooLarge(PathBuf),
    /// kernel.json is not a kernelspec
    #[error("parse {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    /// argv empty or without `{connection_file}`
    #[error("{0}: argv must be non-empty and contain {{connection_file}}")]
    BadArgv(PathBuf),
}

/// How a kernel is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InterruptMode {
    /// SIGINT to the kernel's process group.
    #[default]
    Signal,
    /// `interrupt_request` on the control channel.
    Message,
}

#[derive(Deserialize)]
struct RawSpec {
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    interrupt_mode: InterruptMode,
}

/// A usable kernelspec.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSpec {
    pub name: String,
    /// Its directory (`{resource_dir}`).
    pub dir: PathBuf,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub interrupt_mode: InterruptMode,
}

impl KernelSpec {
    /// Reads `<root>/<name>/kernel.json`.
    pub fn load(root: &Path, name: &str) -> Result<KernelSpec, SpecError> {
        let dir = root.join(name);
        let path = dir.join("kernel.json");
        let read = |source| SpecError::Read { path: path.clone(), source };
        let len = std::fs::metadata(&path).map_err(read)?.len();
        if len > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(path));
        }
        let bytes = std::fs::read(&path).map_err(read)?;
        let raw: RawSpec =
            serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse { path: path.clone(), source })?;
        if raw.argv.is_empty() || !raw.argv.iter().any(|a| a.contains("{connection_file}")) {
            return Err(SpecError::BadArgv(path));
        }
        Ok(KernelSpec { name: name.to_owned(), dir, argv: raw.argv, env: raw.env, interrupt_mode: raw.interrupt_mode })
    }

    /// The command line for a connection file.
    pub fn command_line(&self, connection_file: &Path) -> Vec<String> {
        let conn = connection_file.to_string_lossy();
        let res = self.dir.to_string_lossy();
        self.argv.iter().map(|a| a.replace("{connection_file}", &conn).replace("{resource_dir}", &res)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, name: &str, json: &str) {
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("kernel.json"), json).unwrap();
    }

    #[test]
    fn loads_and_substitutes() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            "python3",
            r#"{"argv":["/py","-m","ipykernel_launcher","-f","{connection_file}","--r={resource_dir}"],
               "display_name":"P","language":"python","env":{"A":"1"},"interrupt_mode":"message"}"#,
        );
        let spec = KernelSpec::load(t.path(), "python3").unwrap();
        assert_eq!(spec.interrupt_mode, InterruptMode::Message);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        let argv = spec.command_line(Path::new("/run/k.json"));
        assert_eq!(argv[4], "/run/k.json");
        assert_eq!(argv[5], format!("--r={}", t.path().join("python3").display()));
    }

    #[test]
    fn refuses_bad_specs() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "noconn", r#"{"argv":["/bin/true"]}"#);
        write(t.path(), "notjson", "{");
        write(t.path(), "empty", r#"{"argv":[]}"#);
        write(t.path(), "badmode", r#"{"argv":["{connection_file}"],"interrupt_mode":"x"}"#);
        assert!(matches!(KernelSpec::load(t.path(), "noconn"), Err(SpecError::BadArgv(_))));
        assert!(matches!(KernelSpec::load(t.path(), "notjson"), Err(SpecError::Parse { .. })));
        assert!(matches!(KernelSpec::load(t.path(), "empty"), Err(SpecError::BadArgv(_))));
        assert!(matches!(KernelSpec::load(t.path(), "badmode"), Err(SpecError::Parse { .. })));
        assert!(matches!(KernelSpec::load(t.path(), "missing"), Err(SpecError::Read { .. })));
        let spec = KernelSpec::load(t.path(), "badmode");
        assert!(spec.is_err());
    }
}
