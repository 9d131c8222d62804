//! Root filesystems. The Debian tree (debootstrap trixie plus the base packages and the
//! `user` account) is cached by the hash of its recipe; a template image (a tree plus the files
//! it carries, such as the agent as `/usr/local/bin/ember-agent`, as ext4) is cached by the hash
//! of the tree key and those files, so a new agent costs one `mkfs.ext4`, not a new debootstrap.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, Cache};
use crate::tools::{self, tool};
use crate::{io_err, private, step, ImageError};

pub(crate) const TREE_KIND: &str = "rootfs-tree";
const IMAGE_KIND: &str = "rootfs";
/// The template image's name in its entry.
const IMAGE_FILE: &str = "rootfs.ext4";
const SUITE: &str = "trixie";
/// Packages debootstrap installs (npm is added afterwards: debootstrap trips on its virtual dependencies).
const INCLUDE: &[&str] = &[
    "python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "git",
    "curl",
    "ca-certificates",
    "sudo",
    "iproute2",
    "procps",
    "less",
    "xz-utils",
];
/// Packages installed with apt-get inside the tree after debootstrap.
const APT_AFTER: &[&str] = &["npm"];
/// Template images kept in the cache (the most recently used): each agent build makes one per
/// built-in template (base and node-20 share theirs), so this keeps three builds' worth.
const KEEP_IMAGES: usize = 12;
/// Path of the agent inside the guest; the kernel starts it as init.
pub const AGENT_PATH: &str = "/usr/local/bin/ember-agent";

/// Files written into the tree after the packages, part of the recipe.
const SUDOERS: &str = "user ALL=(ALL:ALL) NOPASSWD: ALL\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n127.0.1.1\tember\n::1\tlocalhost ip6-localhost ip6-loopback\n";
const SETUP: &str = "set -e
useradd --create-home --uid 1000 --user-group --shell /bin/bash --groups sudo user
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
";

fn recipe(mirror: &str) -> String {
    format!(
        "ember-rootfs-v1\nsuite={SUITE}\nmirror={mirror}\ninclude={}\napt={}\nsetup={SETUP}\nsudoers={SUDOERS}\nhosts={HOSTS}",
        INCLUDE.join(","),
        APT_AFTER.join(",")
    )
}

/// Returns the cached Debian tree for template `base`, building it first if missing.
pub fn ensure_tree(cache: &Cache) -> Result<(PathBuf, String), ImageError> {
    let mirror = cache.debian_mirror().to_string();
    let key = cache::key(&[recipe(&mirror).as_bytes()]);
    let tree = cache.entry(TREE_KIND, &key);
    if tree.join("etc/os-release").exists() {
        return Ok((tree, key));
    }
    let _lock = cache.lock(TREE_KIND, &key)?;
    if !tree.join("etc/os-release").exists() {
        build_tree(cache, &key, &mirror)?;
        // Trees are only read to make images (which copy them) and derived trees: keep two.
        cache.prune(TREE_KIND, 2, &key);
    }
    Ok((tree, key))
}

fn build_tree(cache: &Cache, key: &str, mirror: &str) -> Result<(), ImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NotRoot);
    }
    tools::require(&[tool("debootstrap", "debootstrap"), tool("chroot", "coreutils")])?;
    eprintln!("==> building the Debian {SUITE} root filesystem for template base (key {key}); a few minutes once");
    let scratch = cache.scratch(TREE_KIND, key)?;
    let log = cache.root().join(TREE_KIND).join(format!("{key}.log"));
    let _ = std::fs::remove_file(&log);
    let root = scratch.join("root");
    step::run(
        "rootfs: debootstrap",
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={}", INCLUDE.join(",")), SUITE])
            .arg(&root)
            .arg(mirror),
        &log,
    )?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).map_err(io_err("copy resolv.conf"))?;
    {
        let _proc = ProcMount::new(&root)?;
        step::run(
            "rootfs: apt-get install npm",
            chroot(&root, "apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(APT_AFTER)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &log,
        )?;
        step::run("rootfs: user and clean-up", chroot(&root, "sh").args(["-c", SETUP]), &log)?;
    }
    // Modes are set explicitly: ember's own umask (0077) is not the guest's.
    let write = |rel: &str, text: &str, mode: u32| write_file(&root, rel, text, mode);
    write("etc/sudoers.d/user", SUDOERS, 0o440)?;
    write("etc/hosts", HOSTS, 0o644)?;
    write("etc/hostname", "ember\n", 0o644)?;
    write("etc/resolv.conf", "", 0o644)?;
    publish_tree(cache, TREE_KIND, key, &scratch)
}

/// Publishes the tree built at `scratch/root` as entry `key` of `kind`: the tree is moved up
/// first, so that the entry directory is the root itself.
pub(crate) fn publish_tree(cache: &Cache, kind: &str, key: &str, scratch: &Path) -> Result<(), ImageError> {
    let staged = cache.root().join(kind).join(format!("{key}.root"));
    cache::remove_any(&staged)?;
    std::fs::rename(scratch.join("root"), &staged).map_err(io_err("stage tree"))?;
    cache::remove_any(scratch)?;
    cache.publish(kind, key, &staged)?;
    Ok(())
}

/// A file a template image carries on top of its tree (the agent, the interpreter, settings).
#[derive(Debug, Clone)]
pub struct Install {
    /// Absolute path in the guest.
    pub path: &'static str,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// A cached tree: its kind, where it is and its key.
pub struct Tree<'a> {
    pub kind: &'a str,
    pub path: &'a Path,
    pub key: &'a str,
}

/// Returns the cached template image (`tree` plus `installs`, as ext4), building it if missing.
pub fn ensure_image(cache: &Cache, tree: Tree<'_>, installs: &[Install]) -> Result<(PathBuf, String), ImageError> {
    ensure_image_in(cache, IMAGE_KIND, KEEP_IMAGES, tree, installs)
}

/// [`ensure_image`] in cache kind `kind`, of which `keep` entries are kept.
pub(crate) fn ensure_image_in(
    cache: &Cache,
    kind: &str,
    keep: usize,
    tree: Tree<'_>,
    installs: &[Install],
) -> Result<(PathBuf, String), ImageError> {
    let mut parts: Vec<&[u8]> = vec![b"ember-image-v3\n", tree.key.as_bytes()];
    let size = crate::fit::FREE_MIB.to_le_bytes();
    parts.push(&size);
    let modes: Vec<[u8; 4]> = installs.iter().map(|i| i.mode.to_le_bytes()).collect();
    for (install, mode) in installs.iter().zip(&modes) {
        parts.extend([install.path.as_bytes(), &mode[..], &install.bytes[..]]);
    }
    let key = cache::key(&parts);
    let image = cache.entry(kind, &key).join(IMAGE_FILE);
    if image.is_file() {
        cache.touch(kind, &key);
        return Ok((image, key));
    }
    let _lock = cache.lock(kind, &key)?;
    if image.is_file() {
        cache.touch(kind, &key);
        return Ok((image, key));
    }
    let _tree_lock = cache.lock(tree.kind, tree.key)?;
    tools::require(&[tool("mkfs.ext4", "e2fsprogs")])?;
    for install in installs {
        let path = tree.path.join(install.path.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        std::fs::write(&path, &install.bytes).map_err(io_err(format!("install {}", path.display())))?;
        set_mode(&path, install.mode)?;
    }
    let scratch = cache.scratch(kind, &key)?;
    let out = scratch.join(IMAGE_FILE);
    // Sized for the tree plus FREE_MIB for the guest: a first guess, then corrected once by
    // what mkfs left free.
    let mut size_mib = crate::fit::first_guess_mib(crate::fit::tree_bytes(tree.path)?);
    for attempt in 0..3 {
        if size_mib > crate::fit::MAX_IMAGE_MIB {
            return Err(ImageError::Io {
                context: format!("size the image of {}", tree.path.display()),
                source: std::io::Error::other(format!(
                    "the tree needs {size_mib} MiB with {} MiB free, more than the {} MiB an image may have",
                    crate::fit::FREE_MIB,
                    crate::fit::MAX_IMAGE_MIB
                )),
            });
        }
        let _ = std::fs::remove_file(&out);
        step::run(
            "rootfs: mkfs.ext4",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "ember-root", "-i"])
                .arg(crate::fit::BYTES_PER_INODE.to_string())
                .arg("-d")
                .arg(tree.path)
                .arg(&out)
                .arg(format!("{size_mib}M")),
            &scratch.join("mkfs.log"),
        )?;
        let free = crate::fit::user_free_mib(&out)?;
        if free >= crate::fit::FREE_MIB || attempt == 2 {
            tracing::debug!(size_mib, free, "template image sized");
            break;
        }
        size_mib += crate::fit::FREE_MIB - free + 16;
    }
    // Sandboxes only ever read the template image through their copy-on-write overlays; QEMU
    // reopens it after dropping privileges, so its group may read it.
    private::backing_image(&out).map_err(io_err(format!("set the access of {}", out.display())))?;
    cache.publish(kind, &key, &scratch)?;
    cache.touch(kind, &key);
    // Each agent build makes a new image; keep a few (running sandboxes hold theirs open).
    cache.prune(kind, keep, &key);
    Ok((image, key))
}

pub(crate) fn chroot(root: &Path, program: &str) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root).arg(program).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// Writes `text` to `rel` (a path under the tree `root`, its directory made already) with `mode`.
pub(crate) fn write_file(root: &Path, rel: &str, text: &str, mode: u32) -> Result<(), ImageError> {
    let path = root.join(rel.trim_start_matches('/'));
    std::fs::write(&path, text).map_err(io_err(format!("write /{rel}")))?;
    set_mode(&path, mode)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// `/proc` mounted inside a chroot for as long as this lives.
pub(crate) struct ProcMount(PathBuf);

impl ProcMount {
    pub(crate) fn new(root: &Path) -> Result<Self, ImageError> {
        let target = root.join("proc");
        nix::mount::mount(Some("proc"), &target, Some("proc"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| ImageError::Io { context: format!("mount {}", target.display()), source: e.into() })?;
        Ok(Self(target))
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_image_is_one_qemu_reopens() {
        assert_eq!(cache::backing_image_of(IMAGE_KIND), Some(IMAGE_FILE));
        assert_eq!(cache::backing_image_of(TREE_KIND), None);
    }

    #[test]
    fn the_mirror_is_part_of_the_recipe() {
        let cache = Cache::new("/nonexistent");
        assert_eq!(cache.debian_mirror(), cache::DEFAULT_MIRROR);
        let other = cache.clone().with_debian_mirror("http://mirror.example/debian");
        assert_ne!(recipe(cache.debian_mirror()), recipe(other.debian_mirror()));
    }
}
