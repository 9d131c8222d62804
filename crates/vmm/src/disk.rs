//! Disk images: the copy-on-write qcow2 overlay each sandbox writes to, over a template image
//! that is never written.

use std::path::Path;
use std::process::Command;

use crate::VmmError;

/// Creates `overlay` as a qcow2 image backed by `backing` (a raw image, or a qcow2 one: the
/// format is read from the name's extension).
pub fn create_overlay(backing: &Path, overlay: &Path) -> Result<(), VmmError> {
    let format = if backing.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(backing)
        .arg(overlay)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::QemuImgMissing,
            _ => VmmError::Io { context: "run qemu-img".into(), source: e },
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmmError::Overlay {
            path: overlay.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        })
    }
}

/// The backing file a qcow2 image names in its header, if it names one (read from the header,
/// at most 4 KiB of name). A raw image or a missing file has none.
pub fn backing_file(image: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
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
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&name));
    // A relative name is relative to the image's directory.
    Ok(Some(match (path.is_relative(), image.parent()) {
        (true, Some(dir)) => dir.join(path),
        _ => path,
    }))
}

/// Every image under `image` in its chain of backing files (at most 64 deep).
pub fn backing_chain(image: &Path) -> Vec<std::path::PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_of_backing_files_are_read_from_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        if create_overlay(&base, &a).is_err() {
            eprintln!("skipped: qemu-img is missing");
            return;
        }
        create_overlay(&a, &b).unwrap();
        assert_eq!(backing_file(&base).unwrap(), None, "raw");
        assert_eq!(backing_file(&a).unwrap(), Some(base.clone()));
        assert_eq!(backing_chain(&b), vec![a.clone(), base.clone()]);
        assert_eq!(backing_chain(&dir.path().join("missing.qcow2")), Vec::<std::path::PathBuf>::new());
    }
}
