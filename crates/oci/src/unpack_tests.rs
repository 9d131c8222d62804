use super::*;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A tar written header by header, so that paths the `tar` crate would refuse can be made.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn raw(
        &mut self,
        path: &str,
        kind: EntryType,
        mode: u32,
        owner: (u64, u64),
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &str) -> &mut Self {
        self.raw(path, EntryType::Regular, 0o644, (0, 0), None, data.as_bytes())
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(path, EntryType::Directory, 0o755, (0, 0), None, b"")
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Symlink, 0o777, (0, 0), Some(target), b"")
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Link, 0o644, (0, 0), Some(target), b"")
    }

    fn bytes(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new())).into_inner().unwrap()
    }
}

fn unpacker(root: &Path) -> Unpacker {
    Unpacker::new(root, 1 << 30, 100_000)
}

fn apply(root: &Path, layer: &mut Layer) -> Result<(), UnpackError> {
    unpacker(root).apply_layer(&layer.bytes()[..], None)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn files_dirs_modes_owners_links() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut l = Layer::new();
    l.dir("./")
        .dir("usr/")
        .dir("usr/bin")
        .raw("usr/bin/su", EntryType::Regular, 0o4755, (0, 0), None, b"suid")
        .raw("usr/bin/wall", EntryType::Regular, 0o2755, (0, 5), None, b"sgid")
        .raw("tmp", EntryType::Directory, 0o1777, (0, 0), None, b"")
        .raw("home/user/notes", EntryType::Regular, 0o600, (1234, 5678), None, b"mine")
        .raw("srv", EntryType::Directory, 0o2750, (1234, 1234), None, b"")
        .symlink("usr/bin/sh", "dash")
        .raw("abs-link", EntryType::Symlink, 0o777, (1234, 1234), Some("/etc/passwd"), b"")
        .hardlink("usr/bin/su2", "usr/bin/su")
        .raw("run/fifo", EntryType::Fifo, 0o640, (0, 0), None, b"")
        .raw("dev/null", EntryType::Char, 0o666, (0, 0), None, b"");
    apply(r, &mut l).unwrap();

    let su = fs::metadata(r.join("usr/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1_600_000_000);
    assert_eq!(read(&r.join("usr/bin/su")), "suid");
    let wall = fs::metadata(r.join("usr/bin/wall")).unwrap();
    assert_eq!((wall.mode() & 0o7777, wall.gid()), (0o2755, 5));
    assert_eq!(fs::metadata(r.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    let notes = fs::metadata(r.join("home/user/notes")).unwrap();
    assert_eq!((notes.uid(), notes.gid(), notes.mode() & 0o7777), (1234, 5678, 0o600));
    // Parents not in the archive are made 0755.
    assert_eq!(fs::metadata(r.join("home/user")).unwrap().mode() & 0o7777, 0o755);
    let srv = fs::metadata(r.join("srv")).unwrap();
    assert_eq!((srv.uid(), srv.mode() & 0o7777), (1234, 0o2750));
    assert_eq!(fs::read_link(r.join("usr/bin/sh")).unwrap(), Path::new("dash"));
    assert_eq!(fs::read_link(r.join("abs-link")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(fs::symlink_metadata(r.join("abs-link")).unwrap().uid(), 1234);
    let su2 = fs::metadata(r.join("usr/bin/su2")).unwrap();
    assert_eq!(su2.ino(), su.ino());
    assert_eq!(su2.nlink(), 2);
    assert!(fs::symlink_metadata(r.join("run/fifo")).unwrap().file_type().is_fifo());
    assert_eq!(fs::metadata(r.join("run/fifo")).unwrap().mode() & 0o7777, 0o640);
    assert!(!r.join("dev/null").exists(), "device nodes are skipped");
}

#[test]
fn whiteouts_delete_lower_layer_entries() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut u = unpacker(r);
    let mut l1 = Layer::new();
    l1.file("a/b", "b").file("a/c", "c").file("d", "d").file("e/f/g", "g");
    u.apply_layer(&l1.bytes()[..], None).unwrap();
    let mut l2 = Layer::new();
    l2.file("a/.wh.b", "").file(".wh.d", "").file(".wh.e", "").file("a/.wh.missing", "").file("nodir/.wh.x", "");
    u.apply_layer(&l2.bytes()[..], None).unwrap();
    assert!(!r.join("a/b").exists());
    assert_eq!(read(&r.join("a/c")), "c");
    assert!(!r.join("d").exists());
    assert!(!r.join("e").exists(), "a whited-out directory goes with its content");
    assert!(!r.join("a/.wh.b").exists(), "whiteout markers are not written");
    assert!(!r.join("nodir").exists(), "a whiteout does not create its directory");
}

#[test]
fn opaque_directory_hides_lower_content_only() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut u = unpacker(r);
    let mut l1 = Layer::new();
    l1.file("x/old1", "1").file("x/sub/old2", "2").file("y/keep", "k");
    u.apply_layer(&l1.bytes()[..], None).unwrap();
    let mut l2 = Layer::new();
    // The layer's own entries come both before and after the marker.
    l2.dir("x").file("x/new", "n").file("x/.wh..wh..opq", "").file("x/sub/new2", "n2");
    u.apply_layer(&l2.bytes()[..], None).unwrap();
    let mut names: Vec<_> =
        fs::read_dir(r.join("x")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["new", "sub"]);
    assert_eq!(read(&r.join("x/sub/new2")), "n2");
    assert!(!r.join("x/sub/old2").exists());
    assert_eq!(read(&r.join("y/keep")), "k");
}

#[test]
fn refuses_parent_and_absolute_paths() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    for path in ["../x", "a/../../x", "/abs", "a/..", "./../x"] {
        let err = apply(&root, Layer::new().file(path, "evil")).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath(_)), "{path}: {err}");
    }
    assert!(!outer.path().join("x").exists());
    assert!(!Path::new("/abs").exists());
    for target in ["../outside", "/etc/passwd-nope", "a/../../x"] {
        let err = apply(&root, Layer::new().file("f", "f").hardlink("h", target)).unwrap_err();
        assert!(matches!(err, UnpackError::BadHardLink { .. }), "{target}: {err}");
    }
}

#[test]
fn symlinked_parents_stay_inside_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let outside = outer.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let outside_str = outside.to_str().unwrap();

    let mut l = Layer::new();
    l.symlink("evil", "/")
        .file("evil/etc/passwd", "pwned")
        .symlink("up", "../../../..")
        .file("up/escape", "x")
        .symlink("out", outside_str)
        .file("out/planted", "x")
        .symlink("rel", "../outside")
        .file("rel/planted2", "x");
    apply(&root, &mut l).unwrap();

    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
    assert_eq!(read(&root.join("etc/passwd")), "pwned", "evil -> / means the root itself");
    assert_eq!(read(&root.join("escape")), "x", "'..' stops at the root");
    assert_eq!(read(&root.join(outside.strip_prefix("/").unwrap()).join("planted")), "x");
    assert_eq!(read(&root.join("outside/planted2")), "x");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
}

#[test]
fn an_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let victim = outer.path().join("victim");
    fs::write(&victim, "safe").unwrap();
    let mut u = unpacker(&root);
    let mut l1 = Layer::new();
    l1.symlink("link", victim.to_str().unwrap()).symlink("dirlink", outer.path().to_str().unwrap());
    u.apply_layer(&l1.bytes()[..], None).unwrap();
    let mut l2 = Layer::new();
    l2.file("link", "overwritten").dir("dirlink").hardlink("hl", "link");
    u.apply_layer(&l2.bytes()[..], None).unwrap();
    assert_eq!(read(&victim), "safe");
    assert_eq!(read(&root.join("link")), "overwritten");
    assert!(fs::symlink_metadata(root.join("dirlink")).unwrap().is_dir());
    assert_eq!(fs::metadata(root.join("hl")).unwrap().ino(), fs::metadata(root.join("link")).unwrap().ino());
}

#[test]
fn hard_link_through_symlink_to_outside_is_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let secret = outer.path().join("secret");
    fs::write(&secret, "s").unwrap();
    let mut l = Layer::new();
    l.symlink("o", outer.path().to_str().unwrap()).hardlink("stolen", "o/secret");
    let err = apply(&root, &mut l).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn types_replace_each_other_across_layers() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut u = unpacker(r);
    let mut l1 = Layer::new();
    l1.file("p/q", "file").file("f", "was a file");
    u.apply_layer(&l1.bytes()[..], None).unwrap();
    let mut l2 = Layer::new();
    l2.file("p", "now a file").dir("f").file("f/inner", "i");
    u.apply_layer(&l2.bytes()[..], None).unwrap();
    assert_eq!(read(&r.join("p")), "now a file");
    assert_eq!(read(&r.join("f/inner")), "i");
    let err = apply(r, Layer::new().file("p/under-a-file", "x")).unwrap_err();
    assert!(matches!(err, UnpackError::NotADirectory(_)), "{err}");
}

#[test]
fn symlink_loops_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.symlink("a", "b").symlink("b", "a").file("a/x", "x");
    let err = apply(root.path(), &mut l).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkLoop(_)), "{err}");
}

#[test]
fn gzip_layers_and_diff_ids() {
    let root = tempfile::tempdir().unwrap();
    let tar = Layer::new().file("hello", "world").bytes();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let gz_path = root.path().join("layer.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(File::create(&gz_path).unwrap(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap();
    let plain_path = root.path().join("layer.tar");
    fs::write(&plain_path, &tar).unwrap();

    let dest = root.path().join("rootfs");
    fs::create_dir(&dest).unwrap();
    let mut u = unpacker(&dest);
    u.apply_layer_file(&gz_path, Some(&diff_id)).unwrap();
    assert_eq!(read(&dest.join("hello")), "world");
    u.apply_layer_file(&plain_path, Some(&diff_id)).unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = u.apply_layer_file(&gz_path, Some(&wrong)).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn size_and_entry_limits() {
    let root = tempfile::tempdir().unwrap();
    let mut u = Unpacker::new(root.path(), 10, 100);
    let err = u.apply_layer(&Layer::new().file("a", "123456").file("b", "123456").bytes()[..], None).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { max: 10 }), "{err}");
    assert!(!root.path().join("b").exists());
    let mut u = Unpacker::new(root.path(), 1 << 20, 2);
    let err = u.apply_layer(&Layer::new().dir("x").dir("y").dir("z").bytes()[..], None).unwrap_err();
    assert!(matches!(err, UnpackError::TooManyEntries { max: 2 }), "{err}");
}

#[test]
fn whiteouts_of_dot_and_dot_dot_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("sibling"), "keep").unwrap();
    for path in [".wh...", "a/.wh...", ".wh..", ".wh."] {
        let err = apply(&root, Layer::new().dir("a").file(path, "")).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath(_)), "{path}: {err}");
    }
    assert_eq!(read(&outer.path().join("sibling")), "keep");
    assert!(root.join("a").is_dir());
}

#[test]
fn huge_tar_metadata_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.raw("pax", EntryType::XHeader, 0o644, (0, 0), None, &vec![b'a'; 6 << 20]).file("f", "x");
    let err = apply(root.path(), &mut l).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    // A long name of normal size is fine.
    let long = format!("{}/{}/file", "d".repeat(150), "e".repeat(150));
    let mut l = Layer::new();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    l.0.append_data(&mut h, &long, &b"z"[..]).unwrap();
    apply(root.path(), &mut l).unwrap();
    assert_eq!(read(&root.path().join(&long)), "z");
}

#[test]
fn safe_components_rules() {
    assert_eq!(safe_components(b"./a//b/./c/").unwrap(), vec!["a", "b", "c"]);
    assert!(safe_components(b"./").unwrap().is_empty());
    assert!(safe_components(b"a/../b").is_none());
    assert!(safe_components(b"/a").is_none());
    assert_eq!(safe_components(b"a..b/..c").unwrap(), vec!["a..b", "..c"]);
}

#[test]
fn cancel_flag_stops_before_the_next_entry() {
    let root = tempfile::tempdir().unwrap();
    let mut u = unpacker(root.path());
    u.cancel_flag().store(true, std::sync::atomic::Ordering::Relaxed);
    let err = u.apply_layer(&Layer::new().file("a", "a").bytes()[..], None).unwrap_err();
    assert!(matches!(err, UnpackError::Cancelled), "{err}");
    assert!(!root.path().join("a").exists());
}
