//! Who may read the runtime's host files. The data directory holds access tokens (the database),
//! guests' RAM (`pause.state`, snapshots' `state`), their disks and consoles: all of it is root's
//! alone, except the paths QEMU reopens after it has dropped to its unprivileged user. Those are
//! a sandbox's overlay (owned by the uid its QEMU runs as) and the backing images under it (0440, QEMU's
//! group), and the directories on the way (0710, QEMU's group: passed through, never listed).
//! The primitives are [`ember_image::private`]'s; this module knows the data directory's layout.
//!
//! ```text
//! DATA/                 0710 root:QEMU   (0700 root without a QEMU user)
//!   ember.db{,-wal,-shm} 0600 root        (ember-store)
//!   sandboxes/          0710 root:QEMU
//!     ID/               0710 root:QEMU
//!       rootfs.qcow2    0600 UID:QEMU     (UID its QEMU's own, `limits`) every other file 0600 root (pause.state, serial.log, ...)
//!   snapshots/          0710 root:QEMU
//!     ID/               0710 root:QEMU
//!       disk.qcow2      0440 root:QEMU    state 0400 root, shape.json 0600 root
//!   templates/ layers/  0710 root:QEMU   built templates and build layers, laid out and sealed
//!                                         like snapshots (ember-builder)
//!   slots/              0700 root
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

pub use ember_image::private::{
    backing_image, private_dir, private_file, private_subdir, sealed_file, set_private_umask, DIR_MODE, QEMU_DIR_MODE,
    QEMU_IMAGE_MODE, SEALED_MODE,
};
pub use nix::unistd::{Gid, Uid};

use crate::{io_err, RuntimeError};

/// Where sandboxes' directories live in the data directory.
pub const SANDBOXES: &str = "sandboxes";
/// Where snapshots of sandboxes live in the data directory.
pub const SNAPSHOTS: &str = "snapshots";
/// Where built templates live in the data directory (each a saved sandbox, like a snapshot).
pub const TEMPLATES: &str = "templates";
/// Where template builds keep their cached layers (each a saved sandbox, like a snapshot).
pub const LAYERS: &str = "layers";
/// Where network slots' markers live in the data directory.
pub const SLOTS: &str = "slots";
/// A snapshot's disk in its directory (a backing image of the overlays made from it).
pub const SNAPSHOT_DISK: &str = "disk.qcow2";

/// uid and gid of user `user`.
pub fn qemu_ids(user: &str) -> Result<(Uid, Gid), RuntimeError> {
    match nix::unistd::User::from_name(user).ok().flatten() {
        Some(u) => Ok((u.uid, u.gid)),
        None => Err(RuntimeError::Io {
            context: format!("QEMU user '{user}'"),
            source: std::io::Error::other(
                "no such user; create it (scripts/setup-host.sh does) or set EMBER_QEMU_USER=",
            ),
        }),
    }
}

/// The group of QEMU user `user` (none when QEMU runs as root).
pub fn qemu_group(user: Option<&str>) -> Result<Option<Gid>, RuntimeError> {
    user.map(|u| qemu_ids(u).map(|(_, gid)| gid)).transpose()
}

/// Creates the data directory `data_dir` and its parts if missing, and sets who may read what,
/// tightening what an older Ember left looser (see the module's table). `qemu_group` is the
/// group of the user QEMU runs as, `None` if it runs as root.
pub fn prepare_data_dir(data_dir: &Path, qemu_group: Option<Gid>) -> Result<(), RuntimeError> {
    let ctx = |p: &Path| format!("set the access of {}", p.display());
    private_dir(data_dir, qemu_group).map_err(io_err(ctx(data_dir)))?;
    for file in ember_files(data_dir)? {
        private_file(&file).map_err(io_err(ctx(&file)))?;
    }
    let slots = data_dir.join(SLOTS);
    private_dir(&slots, None).map_err(io_err(ctx(&slots)))?;
    let sandboxes = data_dir.join(SANDBOXES);
    private_subdir(&sandboxes).map_err(io_err(ctx(&sandboxes)))?;
    for dir in subdirs(&sandboxes)? {
        private_subdir(&dir).map_err(io_err(ctx(&dir)))?;
        // The overlay stays its QEMU's; everything else is root's alone.
        for file in ember_files(&dir)? {
            private_file(&file).map_err(io_err(ctx(&file)))?;
        }
    }
    for saved in [SNAPSHOTS, TEMPLATES, LAYERS] {
        let saved = data_dir.join(saved);
        private_subdir(&saved).map_err(io_err(ctx(&saved)))?;
        for dir in subdirs(&saved)? {
            private_subdir(&dir).map_err(io_err(ctx(&dir)))?;
            seal_snapshot(&dir)?;
        }
    }
    Ok(())
}

/// Makes a snapshot's files (in directory `dir`) read-only and private: its disk a backing
/// image QEMU may reopen (0440 with the directory's QEMU group), its RAM and device state
/// (`ram`, `state`) 0400, anything else owner-only.
pub fn seal_snapshot(dir: &Path) -> Result<(), RuntimeError> {
    for file in ember_files(dir)? {
        let sealed = match file.file_name().and_then(|n| n.to_str()) {
            Some(SNAPSHOT_DISK) => backing_image(&file),
            Some("ram" | "state") => sealed_file(&file),
            _ => private_file(&file),
        };
        sealed.map_err(io_err(format!("set the access of {}", file.display())))?;
    }
    Ok(())
}

/// Hands a sandbox's disk overlay to the QEMU user `ids` (QEMU reopens it after a restore), for
/// it alone to read and write (0600). Without a QEMU user it stays root's, 0600 too.
pub fn give_to_qemu(overlay: &Path, ids: Option<(Uid, Gid)>) -> Result<(), RuntimeError> {
    if let Some((uid, gid)) = ids {
        nix::unistd::chown(overlay, Some(uid), Some(gid))
            .map_err(|e| RuntimeError::Io { context: format!("chown {}", overlay.display()), source: e.into() })?;
    }
    private_file(overlay).map_err(io_err(format!("chmod {}", overlay.display())))
}

/// Checks that QEMU, running as `uid`:`gid`, can pass through every directory above `dir` (the
/// ones Ember does not manage) to reopen disk images by path.
pub fn check_reachable(dir: &Path, uid: Uid, gid: Gid) -> Result<(), RuntimeError> {
    let dir = dir.canonicalize().map_err(io_err(format!("resolve {}", dir.display())))?;
    for d in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(d).map_err(io_err(format!("stat {}", d.display())))?;
        let mode = meta.permissions().mode();
        let searchable = mode & 0o001 != 0
            || (meta.gid() == gid.as_raw() && mode & 0o010 != 0)
            || (meta.uid() == uid.as_raw() && mode & 0o100 != 0);
        if !searchable {
            return Err(RuntimeError::Io {
                context: format!("directory {}", dir.display()),
                source: std::io::Error::other(format!(
                    "{} is not searchable by the unprivileged QEMU user, which reopens disk images under it (chmod o+x it, choose another directory, or set EMBER_QEMU_USER= to run QEMU as root)",
                    d.display()
                )),
            });
        }
    }
    Ok(())
}

/// Subdirectories of `dir` (not following symbolic links); none if it does not exist.
fn subdirs(dir: &Path) -> Result<Vec<std::path::PathBuf>, RuntimeError> {
    entries(dir, |t| t.is_dir())
}

/// Entries of `dir` that are neither directories nor symbolic links (files, sockets).
fn ember_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, RuntimeError> {
    entries(dir, |t| !t.is_dir() && !t.is_symlink())
}

fn entries(dir: &Path, keep: impl Fn(&std::fs::FileType) -> bool) -> Result<Vec<std::path::PathBuf>, RuntimeError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
    };
    Ok(read.flatten().filter(|e| e.file_type().is_ok_and(|t| keep(&t))).map(|e| e.path()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_old_data_directory_is_tightened() {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("data");
        let sandbox = data.join("sandboxes/abc");
        let snapshot = data.join("snapshots/def");
        for d in [&sandbox, &snapshot] {
            std::fs::create_dir_all(d).unwrap();
        }
        let loose = [
            data.join("ember.db"),
            sandbox.join("pause.state"),
            sandbox.join("rootfs.qcow2"),
            snapshot.join("state"),
            snapshot.join(SNAPSHOT_DISK),
        ];
        for f in &loose {
            std::fs::write(f, b"x").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        for d in [&data, &sandbox, &snapshot] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        prepare_data_dir(&data, None).unwrap();
        for d in [&data, &data.join("sandboxes"), &sandbox, &data.join("snapshots"), &snapshot, &data.join("slots")] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        let modes: Vec<u32> = loose.iter().map(|f| mode(f)).collect();
        assert_eq!(modes, [0o600, 0o600, 0o600, 0o400, 0o400]);
    }

    #[test]
    fn the_qemu_group_reaches_sandboxes_and_snapshot_disks() {
        let gid = Gid::effective();
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("data");
        prepare_data_dir(&data, Some(gid)).unwrap();
        let snapshot = data.join(SNAPSHOTS).join("def");
        private_subdir(&snapshot).unwrap();
        std::fs::write(snapshot.join(SNAPSHOT_DISK), b"x").unwrap();
        std::fs::write(snapshot.join("state"), b"x").unwrap();
        std::fs::write(snapshot.join("shape.json"), b"{}").unwrap();
        seal_snapshot(&snapshot).unwrap();
        assert_eq!(mode(&data), 0o710);
        assert_eq!(mode(&data.join(SANDBOXES)), 0o710);
        assert_eq!(mode(&data.join(SLOTS)), 0o700);
        assert_eq!(mode(&snapshot), 0o710);
        assert_eq!(mode(&snapshot.join(SNAPSHOT_DISK)), 0o440);
        assert_eq!(mode(&snapshot.join("state")), 0o400);
        assert_eq!(mode(&snapshot.join("shape.json")) & 0o077, 0);
    }

    #[test]
    fn unreachable_directories_are_named() {
        let base = tempfile::tempdir().unwrap();
        let data = base.path().join("closed/data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(base.path().join("closed"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = (Uid::from_raw(65534), Gid::from_raw(65534));
        let err = check_reachable(&data, nobody.0, nobody.1).unwrap_err().to_string();
        assert!(err.contains("closed is not searchable"), "{err}");
        std::fs::set_permissions(base.path().join("closed"), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        check_reachable(&data, nobody.0, nobody.1).unwrap();
    }
}
