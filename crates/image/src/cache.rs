//! The artefact cache outside the checkout: one directory per artefact kind, one entry per
//! input hash, published atomically by renaming a finished build into place, and guarded by a
//! lock file so that two builds of the same entry do not race.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::{io_err, ImageError};

/// File whose modification time says when an entry was last used.
const USED_FILE: &str = "last-used";

/// Default cache root when `EMBER_CACHE_DIR` is not set.
pub const DEFAULT_ROOT: &str = "/var/cache/ember";

/// The cache root.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Hashes the inputs of an artefact into its cache key (16 hex digits of SHA-256).
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// An exclusive lock on one cache entry, released on drop.
pub struct EntryLock(#[allow(dead_code)] Flock<File>);

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache named by `EMBER_CACHE_DIR`, or the default.
    pub fn from_env() -> Self {
        Self::new(std::env::var_os("EMBER_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_ROOT.into()))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the entry `kind/key`.
    pub fn entry(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// Takes the build lock of `kind/key`, waiting for another builder to finish.
    pub fn lock(&self, kind: &str, key: &str) -> Result<EntryLock, ImageError> {
        let dir = self.root.join(kind);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join(format!("{key}.lock"));
        let file = File::create(&path).map_err(io_err(format!("create {}", path.display())))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::Io { context: format!("lock {}", path.display()), source: e.into() })?;
        Ok(EntryLock(lock))
    }

    /// Marks entry `kind/key` as used now, for [`Cache::prune`].
    pub fn touch(&self, kind: &str, key: &str) {
        let _ = std::fs::write(self.entry(kind, key).join(USED_FILE), b"");
    }

    /// Removes all but the `keep` most recently used entries of `kind`, never `current`.
    /// Entries being built (locked) are skipped.
    pub fn prune(&self, kind: &str, keep: usize, current: &str) {
        let Ok(dir) = std::fs::read_dir(self.root.join(kind)) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, String)> = dir
            .flatten()
            .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().contains('.'))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                // An entry never marked (made before marking existed) counts as the oldest.
                let used =
                    e.path().join(USED_FILE).metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                Some((used, name))
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, key) in entries.into_iter().skip(keep).filter(|(_, k)| k != current) {
            let lock_path = self.root.join(kind).join(format!("{key}.lock"));
            let Ok(file) = File::create(&lock_path) else {
                continue;
            };
            if let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                tracing::info!(kind, key, "pruning old cache entry");
                let _ = remove_any(&self.entry(kind, &key));
                let _ = std::fs::remove_file(&lock_path);
            }
        }
    }

    /// A fresh scratch directory beside the entry, for building it.
    pub fn scratch(&self, kind: &str, key: &str) -> Result<PathBuf, ImageError> {
        let dir = self.root.join(kind).join(format!("{key}.tmp"));
        remove_any(&dir)?;
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Moves a finished scratch directory into place as the entry.
    pub fn publish(&self, kind: &str, key: &str, scratch: &Path) -> Result<PathBuf, ImageError> {
        let dest = self.entry(kind, key);
        remove_any(&dest)?;
        std::fs::rename(scratch, &dest).map_err(io_err(format!("publish {}", dest.display())))?;
        Ok(dest)
    }
}

/// Removes a file or directory tree if it exists.
pub fn remove_any(path: &Path) -> Result<(), ImageError> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    result.map_err(io_err(format!("remove {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_input() {
        assert_eq!(key(&[b"a", b"b"]), key(&[b"a", b"b"]));
        assert_ne!(key(&[b"a", b"b"]), key(&[b"a", b"c"]));
        assert_eq!(key(&[b"x"]).len(), 16);
    }

    #[test]
    fn publish_replaces_entry_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let _lock = cache.lock("k", "abc").unwrap();
        let scratch = cache.scratch("k", "abc").unwrap();
        std::fs::write(scratch.join("f"), "1").unwrap();
        let entry = cache.publish("k", "abc", &scratch).unwrap();
        assert_eq!(std::fs::read_to_string(entry.join("f")).unwrap(), "1");
        assert!(!scratch.exists());
    }

    #[test]
    fn prune_keeps_the_most_recently_used_and_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        std::fs::create_dir_all(cache.entry("k", "unmarked")).unwrap();
        std::fs::create_dir_all(cache.entry("k", "building.tmp")).unwrap();
        for key in ["a", "b", "c", "d"] {
            std::fs::create_dir_all(cache.entry("k", key)).unwrap();
            cache.touch("k", key);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        cache.prune("k", 2, "a");
        let left: Vec<bool> =
            ["a", "b", "c", "d", "unmarked", "building.tmp"].iter().map(|k| cache.entry("k", k).exists()).collect();
        assert_eq!(left, [true, false, true, true, false, true]);
    }
}
