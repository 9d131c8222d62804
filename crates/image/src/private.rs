//! Who may read Ember's host files. Everything under the data and cache directories belongs to
//! root and only root reads it (files 0600, directories 0700), except what QEMU reopens by path
//! after it has dropped to its unprivileged user: the disk images under a sandbox's overlay. The
//! directories on the way to those are 0710 with QEMU's group (it may pass through, not list),
//! and the images are 0440 with QEMU's group. The `ember` binary sets the umask to 0077 first
//! thing, so new files are private by default; these functions grant the rest explicitly, and
//! tighten what an older Ember left looser.
//!
//! Only the roots are told the QEMU group ([`private_dir`]); below them, directories and images
//! take it from their parent ([`private_subdir`], [`backing_image`]), so code deep in the tree
//! needs no settings to get it right.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid};

/// A directory only its owner (root) enters.
pub const DIR_MODE: u32 = 0o700;
/// A directory the QEMU group may pass through, without listing it.
pub const QEMU_DIR_MODE: u32 = 0o710;
/// A read-only image root and the QEMU group read.
pub const QEMU_IMAGE_MODE: u32 = 0o440;
/// A read-only file only its owner reads (saved state and RAM).
pub const SEALED_MODE: u32 = 0o400;

/// Makes new files and directories of this process private (umask 0077). The `ember` binary
/// calls this before anything else; children inherit it (build steps set their own, see
/// [`crate::step`]).
pub fn set_private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates directory `path` if missing (missing parents as `mkdir -p` would, 0755: they are not
/// Ember's) and makes it this process's user's (root's): 0700, or 0710 with group `qemu_group`
/// when QEMU must pass through it. An existing directory is tightened the same way.
pub fn private_dir(path: &Path, qemu_group: Option<Gid>) -> io::Result<()> {
    create(path)?;
    set_access(path, qemu_group, DIR_MODE, QEMU_DIR_MODE)
}

/// Creates directory `path` if missing and gives it the access of its parent: 0710 with the
/// parent's group when the parent is a QEMU directory (0710), 0700 otherwise.
pub fn private_subdir(path: &Path) -> io::Result<()> {
    create(path)?;
    set_access(path, parent_qemu_group(path)?, DIR_MODE, QEMU_DIR_MODE)
}

/// Makes file `path` a read-only disk image that QEMU may reopen: root's, 0440 with the group of
/// its directory when that is a QEMU directory (0710), else 0400.
pub fn backing_image(path: &Path) -> io::Result<()> {
    set_access(path, parent_qemu_group(path)?, SEALED_MODE, QEMU_IMAGE_MODE)
}

/// Makes file `path` read-only for its owner alone (0400).
pub fn sealed_file(path: &Path) -> io::Result<()> {
    chmod(path, SEALED_MODE)
}

/// Takes every permission of group and others away from `path`, keeping the owner's (a 0644
/// file becomes 0600, a 0444 one 0400). Its owner stays (a sandbox's overlay stays QEMU's).
pub fn private_file(path: &Path) -> io::Result<()> {
    let mode = std::fs::symlink_metadata(path)?.permissions().mode();
    match mode & 0o077 {
        0 => Ok(()),
        _ => chmod(path, mode & 0o700),
    }
}

/// The group of `path`'s parent directory if that is a QEMU directory (mode 0710).
fn parent_qemu_group(path: &Path) -> io::Result<Option<Gid>> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(parent)?;
    Ok((meta.permissions().mode() & 0o777 == QEMU_DIR_MODE).then(|| Gid::from_raw(meta.gid())))
}

/// Owner: this process's user; then the group and `qemu_mode` if `qemu_group` is given, else
/// `mode` (with the group left alone: nobody in it gets anything).
fn set_access(path: &Path, qemu_group: Option<Gid>, mode: u32, qemu_mode: u32) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let me = Uid::effective();
    let owner = (meta.uid() != me.as_raw()).then_some(me);
    let group = qemu_group.filter(|g| g.as_raw() != meta.gid());
    if owner.is_some() || group.is_some() {
        nix::unistd::chown(path, owner, group).map_err(io::Error::from)?;
    }
    let mode = if qemu_group.is_some() { qemu_mode } else { mode };
    if meta.permissions().mode() & 0o7777 != mode {
        chmod(path, mode)?;
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates `path` and its missing parents; the parents get 0755 whatever the umask, the
/// directory itself is left to the caller.
fn create(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            create(parent)?;
            chmod(parent, 0o755)?;
        }
    }
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_and_files_are_private_without_a_qemu_group() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/data");
        private_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.path().join("a/b")), 0o755, "parents as mkdir -p makes them");
        let sub = dir.join("sandboxes");
        private_subdir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        let image = sub.join("disk.qcow2");
        std::fs::write(&image, b"x").unwrap();
        backing_image(&image).unwrap();
        assert_eq!(mode(&image), 0o400);
        let log = sub.join("serial.log");
        std::fs::write(&log, b"x").unwrap();
        chmod(&log, 0o644).unwrap();
        private_file(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        chmod(&log, 0o444).unwrap();
        private_file(&log).unwrap();
        assert_eq!(mode(&log), 0o400, "read-only stays read-only");
    }

    #[test]
    fn an_existing_loose_directory_is_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755).unwrap();
        private_dir(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn the_qemu_group_is_passed_down_from_the_root() {
        // Our own primary group stands in for QEMU's (chown to it needs no privilege).
        let gid = Gid::effective();
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        private_dir(&dir, Some(gid)).unwrap();
        assert_eq!(mode(&dir), 0o710);
        let sub = dir.join("snapshots/abc");
        private_subdir(&dir.join("snapshots")).unwrap();
        private_subdir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o710);
        assert_eq!(std::fs::metadata(&sub).unwrap().gid(), gid.as_raw());
        let image = sub.join("disk.qcow2");
        std::fs::write(&image, b"x").unwrap();
        backing_image(&image).unwrap();
        assert_eq!(mode(&image), 0o440);
        let state = sub.join("state");
        std::fs::write(&state, b"x").unwrap();
        sealed_file(&state).unwrap();
        assert_eq!(mode(&state), 0o400);
    }
}
