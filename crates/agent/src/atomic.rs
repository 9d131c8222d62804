//! Replacing a file atomically: the new contents go to a temporary file in the same directory,
//! which is then renamed over the old one, so a reader (or an agent killed mid-write) sees the
//! old file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `bytes`, mode `mode` (whatever the umask). A symbolic link at `path` is
/// replaced, not followed. Callers serialise writes to the same path (the temporary file's name
/// is fixed, so that one left by a killed writer is reused rather than piling up).
///
/// There is no `fsync`: these are guest files whose page cache a pause or snapshot saves with the
/// guest's RAM, and a guest that crashes is discarded with its disk.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "path names no file"));
    };
    let tmp = dir.join(format!(".{}.ember-tmp", name.to_string_lossy()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // `mode` went through the umask at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_files_and_links_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        write(&path, b"one\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644);
        // A stale temporary file is reused; a link is replaced, its target left alone.
        std::fs::write(dir.path().join(".link.ember-tmp"), "stale").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        write(&link, b"two\n", 0o600).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(mode(&link), 0o600);
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(write(&dir.path().join("missing/file"), b"", 0o644).is_err());
    }
}
