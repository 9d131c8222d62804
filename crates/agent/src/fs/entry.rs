//! `EntryInfo` for a path: type (of the target, for symlinks), size, Go-style permission
//! string, owner and group names, RFC 3339 modification time, symlink target, and the
//! `user.e2b.*` extended attributes as metadata.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use ember_envd_proto::filesystem::{EntryInfo, FileType};

/// Extended-attribute namespace of file metadata.
pub const XATTR_PREFIX: &str = "user.e2b.";
/// Most metadata entries read from one file.
const MAX_XATTRS: usize = 64;

/// uid and gid to name maps.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub users: HashMap<u32, String>,
    pub groups: HashMap<u32, String>,
}

impl Names {
    fn user(&self, uid: u32) -> String {
        self.users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }
    fn group(&self, gid: u32) -> String {
        self.groups.get(&gid).cloned().unwrap_or_else(|| gid.to_string())
    }
}

/// Describes `path` (not following a final symlink for `is_symlink`, following it for type).
pub fn entry_info(path: &Path, names: &Names) -> std::io::Result<EntryInfo> {
    let lmeta = std::fs::symlink_metadata(path)?;
    let is_symlink = lmeta.file_type().is_symlink();
    let (meta, target) = if is_symlink {
        let target = symlink_target(path).map(|t| t.to_string_lossy().into_owned());
        (std::fs::metadata(path).unwrap_or_else(|_| lmeta.clone()), target)
    } else {
        (lmeta.clone(), None)
    };
    let kind = if meta.is_dir() {
        FileType::Directory
    } else if meta.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::File
    };
    let modified = lmeta.modified().ok().map(ember_envd_proto::time::rfc3339);
    Ok(EntryInfo {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        kind,
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode: meta.mode() & 0o7777,
        permissions: mode_string(lmeta.mode()),
        owner: names.user(lmeta.uid()),
        group: names.group(lmeta.gid()),
        modified_time: modified,
        symlink_target: target,
        metadata: read_metadata(path),
        is_symlink,
    })
}

/// Where the link at `path` leads, as envd reports it: absolute, every link on the way
/// resolved. A dangling link gives its target made absolute against the link's directory and
/// cleaned; `None` only if the link cannot be read.
fn symlink_target(path: &Path) -> Option<PathBuf> {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return Some(resolved);
    }
    let target = std::fs::read_link(path).ok()?;
    let joined = path.parent().unwrap_or(Path::new("/")).join(target);
    let mut clean = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    Some(clean)
}

/// The file's `user.e2b.*` attributes, prefix stripped.
pub fn read_metadata(path: &Path) -> BTreeMap<String, String> {
    let Ok(names) = xattr::list(path) else {
        return BTreeMap::new();
    };
    names
        .filter_map(|n| n.into_string().ok())
        .filter_map(|n| {
            let key = n.strip_prefix(XATTR_PREFIX)?.to_string();
            Some((key, n))
        })
        .take(MAX_XATTRS)
        .filter_map(|(key, full)| {
            let value = xattr::get(path, &full).ok()??;
            Some((key, String::from_utf8_lossy(&value).into_owned()))
        })
        .collect()
}

/// Go's `os.FileMode.String()` for a Unix `st_mode`: e.g. `-rw-r--r--`, `drwxr-xr-x`, `dtrwxrwxrwx`.
pub fn mode_string(mode: u32) -> String {
    let mut s = String::new();
    match mode & libc::S_IFMT {
        libc::S_IFDIR => s.push('d'),
        libc::S_IFLNK => s.push('L'),
        libc::S_IFIFO => s.push('p'),
        libc::S_IFSOCK => s.push('S'),
        libc::S_IFBLK => s.push('D'),
        libc::S_IFCHR => s.push_str("Dc"),
        _ => {}
    }
    if mode & libc::S_ISUID != 0 {
        s.push('u');
    }
    if mode & libc::S_ISGID != 0 {
        s.push('g');
    }
    if mode & libc::S_ISVTX != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_go() {
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFDIR | libc::S_ISVTX | 0o777), "dtrwxrwxrwx");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
    }

    #[test]
    fn describes_files_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.txt");
        std::fs::write(&f, "hello").unwrap();
        std::os::unix::fs::symlink(&f, dir.path().join("link")).unwrap();
        let names = Names::default();
        let e = entry_info(&f, &names).unwrap();
        assert_eq!((e.kind, e.size, e.name.as_str(), e.is_symlink), (FileType::File, 5, "f.txt", false));
        let l = entry_info(&dir.path().join("link"), &names).unwrap();
        assert_eq!((l.kind, l.is_symlink), (FileType::File, true));
        assert_eq!(l.symlink_target.as_deref(), Some(f.to_str().unwrap()));
        assert_eq!(entry_info(dir.path(), &names).unwrap().kind, FileType::Directory);
    }

    #[test]
    fn symlink_targets_are_absolute_and_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("a"), "x").unwrap();
        std::os::unix::fs::symlink("a", root.join("b")).unwrap();
        std::os::unix::fs::symlink("b", root.join("c")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("../missing", root.join("sub/dangling")).unwrap();
        let names = Names::default();
        let target = |p: &str| entry_info(&root.join(p), &names).unwrap().symlink_target;
        let a = root.join("a").to_string_lossy().into_owned();
        assert_eq!(target("b"), Some(a.clone()));
        assert_eq!(target("c"), Some(a));
        assert_eq!(target("sub/dangling"), Some(root.join("missing").to_string_lossy().into_owned()));
        assert_eq!(target("a"), None);
    }
}
