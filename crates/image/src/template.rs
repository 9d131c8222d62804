//! Templates: a name resolved to the kernel and root disk a sandbox boots from.

use std::path::{Path, PathBuf};

use crate::{kernel, rootfs, Cache, ImageError};

/// Template names Ember can build.
pub const KNOWN_TEMPLATES: &[&str] = &["base"];

/// A built template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub kernel: PathBuf,
    /// Raw ext4 image; read-only, used as the backing file of each sandbox's overlay.
    pub rootfs: PathBuf,
    /// Hash of everything in the template.
    pub key: String,
}

/// Checks that `name` is a template Ember knows, without building anything.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    if KNOWN_TEMPLATES.contains(&name) {
        Ok(())
    } else {
        Err(ImageError::UnknownTemplate { name: name.to_string() })
    }
}

/// Returns template `name`, building its kernel and root filesystem on first use.
pub fn ensure(cache: &Cache, name: &str, agent: &Path) -> Result<Template, ImageError> {
    check_name(name)?;
    let (rootfs, rootfs_key) = rootfs::ensure_image(cache, agent)?;
    let kernel = kernel::ensure(cache)?;
    let key = crate::cache::key(&[kernel.key.as_bytes(), rootfs_key.as_bytes()]);
    Ok(Template { name: name.to_string(), kernel: kernel.vmlinux, rootfs, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_template_is_named_with_the_known_ones() {
        assert!(check_name("base").is_ok());
        let msg = check_name("nope").unwrap_err().to_string();
        assert!(msg.contains("'nope'") && msg.contains("base"), "{msg}");
    }
}
