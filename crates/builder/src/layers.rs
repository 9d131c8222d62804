//! The layer cache: after each step the build sandbox is saved (RAM, device state and its disk
//! overlay, as a snapshot is) under a key that hashes the step with the key of the layer before
//! it, back to where the build started. A rebuild restores the last layer whose key it already
//! has and runs only the steps after it. Layers are written whole into `KEY.partial` and renamed;
//! one that exists is never replaced (its disk may back later layers and templates).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{Defaults, Step};

/// A layer's own file beside the saved sandbox: what the steps so far set, and the token the
/// saved agent holds. Root's alone (0600).
const META: &str = "layer.json";

/// What a layer records besides the saved sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub defaults: Defaults,
    pub agent_token: Option<String>,
}

/// The key of where a build starts: `identity` names the source (a built-in template and its
/// shape, or another template's build).
pub fn start_key(identity: &str) -> String {
    hash(&["ember-layer-v1", identity])
}

/// The key of the layer after `step`, on top of layer `previous`.
pub fn step_key(previous: &str, step: &Step) -> String {
    let json = serde_json::to_string(step).unwrap_or_default();
    hash(&[previous, &json])
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The layers of one data directory.
#[derive(Debug, Clone)]
pub struct Layers {
    root: PathBuf,
}

impl Layers {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where layer `key` lives (whole or not).
    pub fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The layer `key` and its record, if it is whole.
    pub fn get(&self, key: &str) -> Option<(PathBuf, LayerMeta)> {
        let dir = self.dir(key);
        let meta = std::fs::read(dir.join(META)).ok()?;
        Some((dir, serde_json::from_slice(&meta).ok()?))
    }

    /// Where a new layer `key` is written before [`Layers::publish`].
    pub fn partial(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.partial"))
    }

    /// Adds `meta` to the saved sandbox in `partial` and publishes it as layer `key`, unless a
    /// whole layer `key` exists already (then `partial` is removed).
    pub fn publish(&self, key: &str, partial: &Path, meta: &LayerMeta) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(partial.join(META))?;
        f.write_all(&serde_json::to_vec(meta).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        if self.get(key).is_some() {
            return std::fs::remove_dir_all(partial);
        }
        let _ = std::fs::remove_dir_all(self.dir(key));
        std::fs::rename(partial, self.dir(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_and_differ_with_any_input() {
        let a = start_key("base 2x512");
        assert_ne!(a, start_key("base 2x1024"));
        let run = |c: &str| Step::Run { cmd: c.into(), user: None };
        let k1 = step_key(&a, &run("echo 1"));
        assert_eq!(k1, step_key(&a, &run("echo 1")), "stable");
        assert_ne!(k1, step_key(&a, &run("echo 2")));
        assert_ne!(step_key(&k1, &run("x")), step_key(&a, &run("x")), "depends on the layer below");
        let copy =
            |h: &str| Step::Copy { src: "a".into(), dest: "/b".into(), owner: None, mode: None, files_hash: h.into() };
        assert_ne!(step_key(&a, &copy(&"1".repeat(64))), step_key(&a, &copy(&"2".repeat(64))), "the files count");
        assert_eq!(k1.len(), 64);
    }

    #[test]
    fn a_layer_is_published_whole_once() {
        let root = tempfile::tempdir().unwrap();
        let layers = Layers::new(root.path().to_path_buf());
        let meta = LayerMeta { defaults: Defaults::base(), agent_token: Some("t".into()) };
        assert!(layers.get("k").is_none());
        let p = layers.partial("k");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("state"), "first").unwrap();
        layers.publish("k", &p, &meta).unwrap();
        let (dir, got) = layers.get("k").unwrap();
        assert_eq!(got, meta);
        // A second build of the same key keeps the first layer.
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("state"), "second").unwrap();
        layers.publish("k", &p, &meta).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("state")).unwrap(), "first");
        assert!(!p.exists());
    }
}
