//! Template images from OCI images: a tree unpacked from a registry (by `ember-oci`) is made
//! bootable by Ember with file edits only, never by running anything of the image on the host:
//! the directories the agent mounts on, `/etc/hosts` if missing, the account `user` (uid 1000,
//! as in Ember's base) if the image has none, and the agent as `/usr/local/bin/ember-agent`.
//! The ext4 image is cached by the image's digest and the agent, in its own cache kind.

use std::io::Write;
use std::path::Path;

use crate::cache::Cache;
use crate::rootfs::{self, set_mode, Install, Tree, AGENT_PATH};
use crate::template::{GuestBinaries, Template};
use crate::{io_err, kernel, ImageError};

/// Cache kind of unpacked OCI trees (keyed by the manifest digest).
pub const TREE_KIND: &str = "oci-tree";
/// Cache kind of their ext4 images.
const IMAGE_KIND: &str = "rootfs-oci";
/// Images of OCI trees kept (the most recently used).
const KEEP_IMAGES: usize = 16;

/// The account sandboxes run as by default in Ember's base; made if the image has no `user`.
const USER_LINE: &str = "user:x:1000:1000:user:/home/user:/bin/sh\n";
const GROUP_LINE: &str = "user:x:1000:\n";

/// Makes the unpacked image in `tree` (a cache entry of [`TREE_KIND`] with key `key`) a
/// template: the edits above, then the ext4 image and the kernel.
pub fn template(cache: &Cache, tree: &Path, key: &str, bins: &GuestBinaries) -> Result<Template, ImageError> {
    prepare_tree(tree)?;
    no_symlinks(tree, AGENT_PATH.trim_start_matches('/'))?;
    let agent = std::fs::read(&bins.agent).map_err(|_| ImageError::AgentMissing(bins.agent.clone()))?;
    let installs = [Install { path: AGENT_PATH, bytes: agent, mode: 0o755 }];
    let (rootfs, rootfs_key) =
        rootfs::ensure_image_in(cache, IMAGE_KIND, KEEP_IMAGES, Tree { kind: TREE_KIND, path: tree, key }, &installs)?;
    let kernel = kernel::ensure(cache)?;
    let key = crate::cache::key(&[kernel.key.as_bytes(), rootfs_key.as_bytes()]);
    Ok(Template { name: format!("oci-{}", &key[..12]), kernel: kernel.vmlinux, rootfs, key, ready: None })
}

/// The file edits that let Ember's agent boot the tree as init. Every path written is checked
/// to have no symlink on the way (an image's `/etc -> /etc` would otherwise lead to the host's).
pub fn prepare_tree(tree: &Path) -> Result<(), ImageError> {
    for rel in ["etc/passwd", "etc/group", "etc/hosts", "home/user", "proc", "sys", "dev", "run", "tmp"] {
        no_symlinks(tree, rel)?;
    }
    for (dir, mode) in
        [("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("tmp", 0o1777), ("etc", 0o755)]
    {
        let path = tree.join(dir);
        if path.symlink_metadata().is_err() {
            std::fs::create_dir(&path).map_err(io_err(format!("create /{dir}")))?;
            set_mode(&path, mode)?;
        }
    }
    let hosts = tree.join("etc/hosts");
    if hosts.symlink_metadata().is_err() {
        std::fs::write(&hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
            .map_err(io_err("write /etc/hosts"))?;
        set_mode(&hosts, 0o644)?;
    }
    let passwd = tree.join("etc/passwd");
    let has_user = std::fs::read_to_string(&passwd).is_ok_and(|p| p.lines().any(|l| l.starts_with("user:")));
    if !has_user {
        append(&passwd, USER_LINE, 0o644)?;
        append(&tree.join("etc/group"), GROUP_LINE, 0o644)?;
        let home = tree.join("home/user");
        std::fs::create_dir_all(&home).map_err(io_err("create /home/user"))?;
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).map_err(io_err("chown /home/user"))?;
        set_mode(&home, 0o755)?;
    }
    Ok(())
}

/// Refuses `rel` (relative to `tree`) if any directory on its way is a symlink (the last
/// component may be one: it is never written through).
fn no_symlinks(tree: &Path, rel: &str) -> Result<(), ImageError> {
    let mut path = tree.to_path_buf();
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        path.push(part);
        if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ImageError::Io {
                context: format!("/{rel} in the image"),
                source: std::io::Error::other(format!("{} is a symlink", path.display())),
            });
        }
    }
    Ok(())
}

/// Appends `line` to the regular file `path` (made with `mode` if missing). A symlink there is
/// refused: the tree came from a registry.
fn append(path: &Path, line: &str, mode: u32) -> Result<(), ImageError> {
    if path.symlink_metadata().is_ok_and(|m| !m.file_type().is_file()) {
        return Err(ImageError::Io {
            context: format!("{} in the image", path.display()),
            source: std::io::Error::other("not a regular file"),
        });
    }
    let existed = path.exists();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let ends_in_newline = std::fs::read(path).map(|b| b.last().is_none_or(|c| *c == b'\n')).unwrap_or(true);
    if !ends_in_newline {
        f.write_all(b"\n").map_err(io_err(format!("write {}", path.display())))?;
    }
    f.write_all(line.as_bytes()).map_err(io_err(format!("write {}", path.display())))?;
    if !existed {
        set_mode(path, mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_tree_gets_what_the_agent_needs_and_a_user() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        std::fs::create_dir(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh").unwrap();
        prepare_tree(tree).unwrap();
        for d in ["proc", "sys", "dev", "run", "tmp", "home/user"] {
            assert!(tree.join(d).is_dir(), "{d}");
        }
        let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap();
        assert_eq!(passwd, format!("root:x:0:0:root:/root:/bin/sh\n{USER_LINE}"));
        assert!(std::fs::read_to_string(tree.join("etc/hosts")).unwrap().contains("localhost"));
        // Again: nothing is added twice.
        prepare_tree(tree).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("etc/passwd")).unwrap(), passwd);
    }

    #[test]
    fn a_symlinked_etc_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        assert!(prepare_tree(dir.path()).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr")).unwrap();
        std::os::unix::fs::symlink("/usr/local", dir.path().join("usr/local")).unwrap();
        assert!(no_symlinks(dir.path(), "usr/local/bin/ember-agent").is_err());
        assert!(no_symlinks(dir.path(), "usr/bin/x").is_ok());
    }

    #[test]
    fn a_symlinked_passwd_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        std::fs::create_dir(tree.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.join("etc/passwd")).unwrap();
        assert!(prepare_tree(tree).is_err());
    }
}
