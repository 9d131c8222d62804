//! The artefact cache outside the checkout: one directory per artefact kind, one entry per
//! input hash, published atomically by renaming a finished build into place, and guarded by a
//! lock file so that two builds of the same entry do not race. Everything in it is root's
//! ([`crate::private`]) except the kinds in [`QEMU_BACKING`], whose images QEMU reopens.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Gid;
use sha2::{Digest, Sha256};

use crate::{io_err, private, ImageError};

/// File whose modification time says when an entry was last used.
const USED_FILE: &str = "last-used";
/// Where the data directories whose disks may be backed by entries are registered, one file
/// each (named by the hash of its path, holding the path).
const USERS: &str = "users";

/// The default cache root.
pub const DEFAULT_ROOT: &str = "/var/cache/ember";

/// The default Debian mirror debootstrap fetches from.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Kinds whose entries hold a disk image that QEMU reopens by path after dropping privileges
/// (a backing file of sandboxes' overlays), and that image's name: the kind's directory and its
/// entries are 0710 with QEMU's group, the image 0440. The kinds are `rootfs` (template images)
/// and `snapshots` (template snapshots, made by `ember-runtime`).
pub const QEMU_BACKING: &[(&str, &str)] =
    &[("rootfs", "rootfs.ext4"), ("rootfs-oci", "rootfs.ext4"), ("snapshots", "disk.qcow2")];

/// The cache root, and the settings of what is built into it.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    debian_mirror: String,
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
    /// The cache at `root`, with Debian trees fetched from [`DEFAULT_MIRROR`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), debian_mirror: DEFAULT_MIRROR.into() }
    }

    /// The same cache, with Debian trees fetched from `mirror` (part of their cache key).
    pub fn with_debian_mirror(mut self, mirror: impl Into<String>) -> Self {
        self.debian_mirror = mirror.into();
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mirror debootstrap fetches from.
    pub fn debian_mirror(&self) -> &str {
        &self.debian_mirror
    }

    /// Creates the cache root if missing and sets who may read what in it, tightening what is
    /// looser: the root 0700, or 0710 with group `qemu_group`; the [`QEMU_BACKING`] kinds and
    /// their entries 0710 with that group, their images 0440, their other files owner-only;
    /// other kinds 0700 (their contents, Debian trees among them, are left as they are).
    /// Entries being built (`KEY.tmp`) are left to their builder.
    pub fn prepare(&self, qemu_group: Option<Gid>) -> Result<(), ImageError> {
        let ctx = |p: &Path| format!("set the access of {}", p.display());
        private::private_dir(&self.root, qemu_group).map_err(io_err(ctx(&self.root)))?;
        let entries = std::fs::read_dir(&self.root).map_err(io_err(format!("read {}", self.root.display())))?;
        for entry in entries.flatten() {
            let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
            let Ok(kind) = entry.file_type() else { continue };
            let set = if kind.is_dir() {
                match backing_image_of(&name) {
                    Some(image) => prepare_backing_kind(&path, image),
                    None => private::private_dir(&path, None),
                }
            } else if !kind.is_symlink() {
                private::private_file(&path)
            } else {
                Ok(())
            };
            set.map_err(io_err(ctx(&path)))?;
        }
        Ok(())
    }

    /// The directory of `kind`, created (with its access) if missing.
    fn kind_dir(&self, kind: &str) -> Result<PathBuf, ImageError> {
        let dir = self.root.join(kind);
        if !self.root.is_dir() {
            private::private_dir(&self.root, None).map_err(io_err(format!("create {}", self.root.display())))?;
        }
        let made = match backing_image_of(kind) {
            Some(_) => private::private_subdir(&dir),
            None => private::private_dir(&dir, None),
        };
        made.map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Directory of the entry `kind/key`.
    pub fn entry(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// Takes the build lock of `kind/key`, waiting for another builder to finish.
    pub fn lock(&self, kind: &str, key: &str) -> Result<EntryLock, ImageError> {
        let dir = self.kind_dir(kind)?;
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

    /// Registers `data_dir` as one whose disks (sandboxes, snapshots, templates, layers) may be
    /// backed by entries of this cache: [`Cache::prune`] keeps every entry they are backed by.
    pub fn register_user(&self, data_dir: &Path) -> Result<(), ImageError> {
        let dir = self.kind_dir(USERS)?;
        let path = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
        let file = dir.join(key(&[path.as_os_str().as_encoded_bytes()]));
        std::fs::write(&file, path.as_os_str().as_encoded_bytes()).map_err(io_err(format!("write {}", file.display())))
    }

    /// The entries some disk is backed by: disks in the registered data directories (whose
    /// registrations are dropped once the directory is gone) and in this cache's own entries
    /// (a template snapshot's disk is backed by a template image).
    fn entries_in_use(&self) -> std::collections::HashSet<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let mut images = std::collections::HashSet::new();
        for file in std::fs::read_dir(self.root.join(USERS)).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(file.path()) else { continue };
            let data_dir = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
            if data_dir.is_dir() {
                crate::qcow2::images_under(&data_dir, crate::qcow2::DATA_DIR_DEPTH, &[], &mut images);
            } else {
                let _ = std::fs::remove_file(file.path());
            }
        }
        for (kind, _) in QEMU_BACKING {
            crate::qcow2::images_under(&self.root.join(kind), 1, &[], &mut images);
        }
        images
            .iter()
            .filter_map(|image| {
                let mut parts = image.strip_prefix(&self.root).ok()?.components();
                let (kind, key) = (parts.next()?, parts.next()?);
                Some(self.root.join(kind).join(key))
            })
            .collect()
    }

    /// Removes all but the `keep` most recently used entries of `kind`, never `current` nor an
    /// entry some disk is still backed by ([`Cache::register_user`]). Entries being built
    /// (locked) are skipped.
    pub fn prune(&self, kind: &str, keep: usize, current: &str) {
        let Ok(dir) = std::fs::read_dir(self.root.join(kind)) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, String)> = dir
            .flatten()
            .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().contains('.'))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                // An entry never marked (a tree, whose directory is a guest's root and gets no
                // marker, or one made before marking existed) was last used when it was last
                // changed.
                let used = e
                    .path()
                    .join(USED_FILE)
                    .metadata()
                    .or_else(|_| e.metadata())
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                Some((used, name))
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        if entries.len() <= keep {
            return;
        }
        // Only the kinds whose images QEMU opens can be under a disk.
        let in_use = if backing_image_of(kind).is_some() { self.entries_in_use() } else { Default::default() };
        for (_, key) in entries.into_iter().skip(keep).filter(|(_, k)| k != current) {
            if in_use.contains(&self.entry(kind, &key)) {
                tracing::info!(kind, key, "an old cache entry is kept: disks are backed by it");
                continue;
            }
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

    /// A fresh scratch directory beside the entry, for building it (a QEMU directory in the
    /// [`QEMU_BACKING`] kinds, private in the others).
    pub fn scratch(&self, kind: &str, key: &str) -> Result<PathBuf, ImageError> {
        let dir = self.kind_dir(kind)?.join(format!("{key}.tmp"));
        remove_any(&dir)?;
        private::private_subdir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Moves a finished scratch directory into place as the entry. In the [`QEMU_BACKING`]
    /// kinds, the entry's files are made private first, except its image.
    pub fn publish(&self, kind: &str, key: &str, scratch: &Path) -> Result<PathBuf, ImageError> {
        if let Some(image) = backing_image_of(kind) {
            prepare_backing_entry(scratch, image)
                .map_err(io_err(format!("set the access of {}", scratch.display())))?;
        }
        let dest = self.entry(kind, key);
        remove_any(&dest)?;
        std::fs::rename(scratch, &dest).map_err(io_err(format!("publish {}", dest.display())))?;
        Ok(dest)
    }
}

/// The image QEMU reopens in entries of `kind`, if it is one of the [`QEMU_BACKING`] kinds.
pub fn backing_image_of(kind: &str) -> Option<&'static str> {
    QEMU_BACKING.iter().find(|(k, _)| *k == kind).map(|(_, image)| *image)
}

/// Access of a [`QEMU_BACKING`] kind's directory: it and its finished entries are QEMU
/// directories, their `image` is a backing image, every other file is the owner's alone.
fn prepare_backing_kind(dir: &Path, image: &str) -> std::io::Result<()> {
    private::private_subdir(dir)?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let (path, name) = (entry.path(), entry.file_name());
        let kind = entry.file_type()?;
        if !kind.is_dir() && !kind.is_symlink() {
            private::private_file(&path)?;
        } else if kind.is_dir() && !name.to_string_lossy().contains('.') {
            private::private_subdir(&path)?;
            prepare_backing_entry(&path, image)?;
        }
    }
    Ok(())
}

/// Access of the files of a [`QEMU_BACKING`] entry: `image` a backing image, the others the
/// owner's alone.
fn prepare_backing_entry(entry: &Path, image: &str) -> std::io::Result<()> {
    for file in std::fs::read_dir(entry)?.flatten() {
        match file.file_type()? {
            t if t.is_file() && file.file_name() == image => private::backing_image(&file.path())?,
            t if !t.is_dir() && !t.is_symlink() => private::private_file(&file.path())?,
            _ => {}
        }
    }
    Ok(())
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

    #[test]
    fn prune_keeps_entries_that_disks_are_backed_by() {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        for key in ["old", "held", "new"] {
            std::fs::create_dir_all(cache.entry("rootfs", key)).unwrap();
            std::fs::write(cache.entry("rootfs", key).join("rootfs.ext4"), vec![0u8; 1 << 20]).unwrap();
            cache.touch("rootfs", key);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // A paused sandbox's disk in a registered data directory is backed by "held".
        let sandbox = data.path().join("sandboxes/abc");
        std::fs::create_dir_all(&sandbox).unwrap();
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(cache.entry("rootfs", "held").join("rootfs.ext4"))
            .arg(sandbox.join("disk.qcow2"))
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: qemu-img is missing");
            return;
        }
        cache.register_user(data.path()).unwrap();
        cache.register_user(&dir.path().join("gone")).unwrap();
        cache.prune("rootfs", 1, "new");
        let left: Vec<bool> = ["old", "held", "new"].iter().map(|k| cache.entry("rootfs", k).exists()).collect();
        assert_eq!(left, [false, true, true]);
        let users = std::fs::read_dir(cache.root().join(USERS)).unwrap().count();
        assert_eq!(users, 1, "the registration of a data directory that is gone is dropped");
        // Once the sandbox is gone, so is the hold.
        std::fs::remove_dir_all(&sandbox).unwrap();
        cache.prune("rootfs", 1, "new");
        assert!(!cache.entry("rootfs", "held").exists());
    }
}
