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
