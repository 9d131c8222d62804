//! Ember's host state is root's: a data directory and a cache laid out and filled the way the
//! runtime does it (through the same functions, without QEMU), some of it left loose as an older
//! Ember did, then prepared as at start. Afterwards `nobody` can read nothing under them, and
//! the QEMU user exactly the disk images it reopens: sandboxes' overlays and the images behind
//! them. Needs root (chown, setpriv); skips otherwise. No guest is started.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ember_image::Cache;
use ember_runtime::private;

const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `path` with `mode` (as an older Ember, whose umask was 0022, would have left it).
fn loose(path: &Path, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"secret").unwrap();
    chmod(path, mode);
}

/// Every path under `root`, `root` included, as root sees them.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        let p = all[i].clone();
        if p.symlink_metadata().unwrap().is_dir() {
            all.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        i += 1;
    }
    all
}

/// The paths among `paths` that user `uid`:`gid` (no other groups) can open for reading.
fn readable_as(uid: u32, gid: u32, paths: &[PathBuf]) -> Vec<PathBuf> {
    let script = r#"for f do
        if [ -d "$f" ]; then ls -- "$f" >/dev/null 2>&1 && printf '%s\n' "$f"
        else head -c1 -- "$f" >/dev/null 2>&1 && printf '%s\n' "$f"; fi
    done; exit 0"#;
    let out = Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
        .args(["sh", "-c", script, "sh"])
        .args(paths)
        .output()
        .expect("run setpriv");
    assert!(out.status.success(), "setpriv: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect()
}

/// What `find DIRS -readable` prints as `nobody`.
fn find_readable_as_nobody(dirs: &[&Path]) -> String {
    let out = Command::new("setpriv")
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .arg("find")
        .args(dirs)
        .arg("-readable")
        .output()
        .expect("run setpriv find");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A finished cache entry made as the image and runtime code make theirs: `files` written in
/// the scratch directory by `fill`, then published.
fn entry(cache: &Cache, kind: &str, key: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let _lock = cache.lock(kind, key).unwrap();
    let scratch = cache.scratch(kind, key).unwrap();
    fill(&scratch);
    cache.publish(kind, key, &scratch).unwrap()
}

/// A sandbox directory with an overlay over `backing` and the files a running, then paused,
/// sandbox has.
fn sandbox(sandboxes: &Path, id: &str, backing: &Path, ids: Option<(private::Uid, private::Gid)>) -> PathBuf {
    let dir = sandboxes.join(id);
    private::private_subdir(&dir).unwrap();
    let overlay = dir.join("rootfs.qcow2");
    ember_vmm::disk::create_overlay(backing, &overlay).unwrap();
    private::give_to_qemu(&overlay, ids).unwrap();
    for f in ["owner", "qemu.pid", "shape.json", "serial.log", "serial.qemu.log", "pause.state"] {
        std::fs::write(dir.join(f), b"secret").unwrap();
    }
    dir
}

#[test]
fn host_state_is_readable_by_root_and_qemu_reads_only_its_images() {
    if common::skip_without_root("chown, setpriv") {
        return;
    }
    let base = tempfile::Builder::new().prefix("ember-host-files-").tempdir().unwrap();
    // Like /var/lib and /var/cache: others may pass through to what is below.
    chmod(base.path(), 0o755);
    let (data, cache_dir) = (base.path().join("data"), base.path().join("cache"));
    let qemu_user = ember_runtime::default_qemu_user();
    let ids = qemu_user.as_deref().map(|u| private::qemu_ids(u).unwrap());
    let group = ids.map(|(_, gid)| gid);
    if qemu_user.is_none() {
        eprintln!("no {} user: checking the files without a QEMU group", ember_runtime::QEMU_USER);
    }

    // What an older Ember left: everything world-readable.
    for d in [&data, &data.join("sandboxes/old"), &data.join("snapshots/olds"), &cache_dir.join("rootfs/oldimg")] {
        std::fs::create_dir_all(d).unwrap();
        chmod(d, 0o755);
    }
    drop(ember_store::Store::open(&data.join("ember.db")).unwrap());
    chmod(&data.join("ember.db"), 0o644);
    loose(&data.join("sandboxes/old/pause.state"), 0o644);
    loose(&data.join("sandboxes/old/serial.log"), 0o644);
    loose(&data.join("sandboxes/old/rootfs.qcow2"), 0o644);
    if let Some((uid, gid)) = ids {
        nix::unistd::chown(&data.join("sandboxes/old/rootfs.qcow2"), Some(uid), Some(gid)).unwrap();
    }
    loose(&data.join("snapshots/olds/state"), 0o444);
    loose(&data.join("snapshots/olds/disk.qcow2"), 0o444);
    loose(&cache_dir.join("rootfs/oldimg/rootfs.ext4"), 0o444);
    loose(&cache_dir.join("snapshots/oldsnap/ram"), 0o444);
    loose(&cache_dir.join("snapshots/oldsnap/disk.qcow2"), 0o444);
    loose(&cache_dir.join("snapshots/oldsnap/snapshot.json"), 0o644);
    loose(&cache_dir.join("kernel/oldk/vmlinux"), 0o755);
    loose(&cache_dir.join("rootfs-tree/oldt/etc/passwd"), 0o644);
    chmod(&cache_dir, 0o755);

    // From here on, as the `ember` binary runs.
    private::set_private_umask();
    // Start: the runtime prepares both (Runtime::new does exactly this).
    let cache = Cache::new(&cache_dir);
    cache.prepare(group).unwrap();
    private::prepare_data_dir(&data, group).unwrap();
    private::prepare_data_dir(&data.join("run"), group).unwrap();

    // The cache filled as the image and snapshot code fill it.
    entry(&cache, "kernel", "k1", |d| {
        std::fs::write(d.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(d.join("config"), b"CONFIG_X=y").unwrap();
    });
    let tree = cache.entry("rootfs-tree", "t1");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    loose(&tree.join("etc/hosts"), 0o644);
    chmod(&tree, 0o755);
    let image = entry(&cache, "rootfs", "img1", |d| {
        let f = std::fs::File::create(d.join("rootfs.ext4")).unwrap();
        f.set_len(1 << 20).unwrap();
        std::fs::write(d.join("mkfs.log"), b"log").unwrap();
        private::backing_image(&d.join("rootfs.ext4")).unwrap();
    })
    .join("rootfs.ext4");
    let snapshot = entry(&cache, "snapshots", "snap1", |d| {
        std::fs::File::create(d.join("ram")).unwrap().set_len(1 << 20).unwrap();
        ember_vmm::disk::create_overlay(&image, &d.join("disk.qcow2")).unwrap();
        private::give_to_qemu(&d.join("disk.qcow2"), ids).unwrap();
        for f in ["state", "serial.log", "serial.qemu.log"] {
            std::fs::write(d.join(f), b"secret").unwrap();
        }
        private::seal_snapshot(d).unwrap();
        // Written after sealing, as the runtime does; publishing makes it private.
        loose(&d.join("snapshot.json"), 0o644);
    });
    let snapshot_disk = snapshot.join("disk.qcow2");

    // The data directory: the database, sandboxes (one in `ember run`'s), a sandbox snapshot.
    let store = ember_store::Store::open(&data.join("ember.db")).unwrap();
    store.create_key("default", "test").unwrap();
    let restored = sandbox(&data.join("sandboxes"), "sbx1", &snapshot_disk, ids);
    let booted = sandbox(&data.join("run/sandboxes"), "sbx2", &image, ids);
    let saved = data.join("snapshots/s1");
    private::private_subdir(&saved).unwrap();
    std::fs::copy(restored.join("rootfs.qcow2"), saved.join("disk.qcow2")).unwrap();
    std::fs::write(saved.join("state"), b"secret").unwrap();
    std::fs::write(saved.join("shape.json"), b"{}").unwrap();
    private::seal_snapshot(&saved).unwrap();
    let from_saved = sandbox(&data.join("sandboxes"), "sbx3", &saved.join("disk.qcow2"), ids);

    // A second start changes nothing that works.
    cache.prepare(group).unwrap();
    private::prepare_data_dir(&data, group).unwrap();

    let mut all = walk(&data);
    all.extend(walk(&cache_dir));
    assert!(all.len() > 60, "{} paths", all.len());
    assert!(all.contains(&data.join("ember.db-wal")) && all.contains(&data.join("ember.db-shm")));

    let by_nobody = readable_as(NOBODY, NOBODY, &all);
    assert!(by_nobody.is_empty(), "readable by nobody: {by_nobody:#?}");
    let found = find_readable_as_nobody(&[&data, &cache_dir]);
    assert!(found.trim().is_empty(), "find -readable as nobody: {found}");

    let Some((uid, gid)) = ids else { return };
    let mut by_qemu = readable_as(uid.as_raw(), gid.as_raw(), &all);
    by_qemu.sort();
    let mut images = vec![
        image.clone(),
        snapshot_disk.clone(),
        cache_dir.join("rootfs/oldimg/rootfs.ext4"),
        cache_dir.join("snapshots/oldsnap/disk.qcow2"),
        restored.join("rootfs.qcow2"),
        booted.join("rootfs.qcow2"),
        from_saved.join("rootfs.qcow2"),
        saved.join("disk.qcow2"),
        data.join("sandboxes/old/rootfs.qcow2"),
        data.join("snapshots/olds/disk.qcow2"),
    ];
    images.sort();
    assert_eq!(by_qemu, images, "the QEMU user reads exactly the disk images");

    // QEMU, once unprivileged, reopens each overlay's whole chain by path.
    for overlay in [restored.join("rootfs.qcow2"), booted.join("rootfs.qcow2"), from_saved.join("rootfs.qcow2")] {
        let out = Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
            .args(["qemu-img", "info", "--backing-chain", "-U"])
            .arg(&overlay)
            .output()
            .expect("run qemu-img as the QEMU user");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "qemu-img info as the QEMU user on {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&image.display().to_string()), "the chain reaches the template image: {text}");
    }
    drop(store);
}
