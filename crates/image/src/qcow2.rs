//! What a qcow2 disk is backed by, read from its header: the chains that tie sandboxes,
//! snapshots, templates and build layers to the images under them, so that nothing still under
//! a disk is deleted (by [`crate::Cache::prune`], or when a template goes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How deep disks sit in a data directory: `run/sandboxes/ID/disk.qcow2` is four down.
pub const DATA_DIR_DEPTH: usize = 4;

/// The backing file a qcow2 image names in its header, if it names one (read from the header,
/// at most 4 KiB of name). A raw image or a missing file has none.
pub fn backing_file(image: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::ffi::OsStrExt;
    let mut f = std::fs::File::open(image)?;
    let mut header = [0u8; 20];
    if f.read_exact(&mut header).is_err() || &header[..4] != b"QFI\xfb" {
        return Ok(None);
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
    let size = u32::from_be_bytes(header[16..20].try_into().unwrap_or_default());
    if offset == 0 || size == 0 || size > 4096 {
        return Ok(None);
    }
    let mut name = vec![0u8; size as usize];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut name)?;
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&name));
    // A relative name is relative to the image's directory.
    Ok(Some(match (path.is_relative(), image.parent()) {
        (true, Some(dir)) => dir.join(path),
        _ => path,
    }))
}

/// Every image under `image` in its chain of backing files (at most 64 deep).
pub fn backing_chain(image: &Path) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    let mut current = image.to_path_buf();
    while chain.len() < 64 {
        match backing_file(&current) {
            Ok(Some(next)) => {
                chain.push(next.clone());
                current = next;
            }
            _ => break,
        }
    }
    chain
}

/// Adds to `used` every image that a `*.qcow2` disk under `dir` (at most `depth` directories
/// down; symbolic links are not followed, directories in `except` are skipped) is backed by.
pub fn images_under(dir: &Path, depth: usize, except: &[PathBuf], used: &mut HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let (path, Ok(kind)) = (entry.path(), entry.file_type()) else { continue };
        if kind.is_dir() && depth > 0 && !except.contains(&path) {
            images_under(&path, depth - 1, except, used);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "qcow2") {
            used.extend(backing_chain(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(backing: &Path, overlay: &Path) -> bool {
        let format = if backing.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(backing)
            .arg(overlay)
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn chains_of_backing_files_are_read_from_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        if !overlay(&base, &a) {
            eprintln!("skipped: qemu-img is missing");
            return;
        }
        assert!(overlay(&a, &b));
        assert_eq!(backing_file(&base).unwrap(), None, "raw");
        assert_eq!(backing_file(&a).unwrap(), Some(base.clone()));
        assert_eq!(backing_chain(&b), vec![a.clone(), base.clone()]);
        assert_eq!(backing_chain(&dir.path().join("missing.qcow2")), Vec::<PathBuf>::new());
    }

    #[test]
    fn images_under_a_directory_are_found_to_the_depth_given() {
        let images = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let (near, far, skipped) =
            (images.path().join("near.raw"), images.path().join("far.raw"), images.path().join("skipped.raw"));
        for image in [&near, &far, &skipped] {
            std::fs::write(image, vec![0u8; 1 << 20]).unwrap();
        }
        let (sandbox, deep, except) =
            (data.path().join("sandboxes/a"), data.path().join("x/y/z/w"), data.path().join("sandboxes/b"));
        for d in [&sandbox, &deep, &except] {
            std::fs::create_dir_all(d).unwrap();
        }
        if !overlay(&near, &sandbox.join("disk.qcow2")) {
            eprintln!("skipped: qemu-img is missing");
            return;
        }
        assert!(overlay(&far, &deep.join("disk.qcow2")));
        assert!(overlay(&skipped, &except.join("disk.qcow2")));
        let mut used = HashSet::new();
        images_under(data.path(), 3, &[except], &mut used);
        assert_eq!(used, HashSet::from([near]), "depth 3 reaches sandboxes/a, not x/y/z/w; b is skipped");
    }
}
