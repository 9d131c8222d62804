//! Applies image layers (tar archives, gzip-compressed or not) to a root filesystem directory.
//!
//! Layer content is hostile. Every entry path is checked: absolute paths and `..` components are
//! refused. Parent directories are resolved inside the root the way the guest will see them
//! (a symlink's absolute target is taken relative to the root, `..` stops at the root), so a
//! symlink planted by a layer can never make a later entry write outside the root. The entry's
//! own last component is never followed: whatever is there is replaced.
//!
//! OCI whiteouts are applied: `.wh.NAME` deletes `NAME` from the lower layers and
//! `.wh..wh..opq` empties its directory of lower-layer content. Modes (setuid, setgid, sticky
//! included), numeric owners (when running as root), symlinks, hard links, FIFOs, mtimes of
//! regular files and `SCHILY.xattr.*` extended attributes are kept; character and block devices
//! are skipped with a warning.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tar::EntryType;

/// How many symlinks one path may go through before it is refused (Linux's limit).
const MAX_SYMLINKS: usize = 40;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// What one entry's headers (long names, pax records) may take in the archive.
const METADATA_ALLOWANCE: u64 = 4 << 20;

/// Errors applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the archive or writing the tree failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An entry's path (or hard link target) is absolute or has a `..` component.
    #[error("layer entry has an unsafe path (absolute or with '..'): {0:?}")]
    UnsafePath(String),
    /// A path went through too many symlinks.
    #[error("too many levels of symbolic links resolving {0:?}")]
    SymlinkLoop(String),
    /// A parent of an entry exists and is not a directory.
    #[error("parent of layer entry {0:?} is not a directory")]
    NotADirectory(String),
    /// A hard link points at something missing or at a directory.
    #[error("hard link {path:?} has an invalid target {target:?}")]
    BadHardLink { path: String, target: String },
    /// The unpacked image is larger than the configured maximum.
    #[error("unpacked image exceeds the maximum of {max} bytes")]
    TooLarge { max: u64 },
    /// The image has more files than the configured maximum.
    #[error("image has more than {max} entries")]
    TooManyEntries { max: u64 },
    /// The pull was abandoned (timed out or dropped) while unpacking.
    #[error("unpacking cancelled")]
    Cancelled,
    /// The uncompressed layer does not hash to the diff ID in the image config.
    #[error("layer diff ID mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: String, actual: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let context = context.into();
    move |source| UnpackError::Io { context, source }
}

/// Limits and running totals across all layers of one image.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    max_unpacked_bytes: u64,
    max_entries: u64,
    unpacked_bytes: u64,
    entries: u64,
    /// Whether to set owners (needs root; otherwise files belong to the caller).
    chown: bool,
    /// Set by the owner to stop between two entries.
    cancel: Arc<AtomicBool>,
}

impl Unpacker {
    /// An unpacker writing into `root`, which must exist.
    pub fn new(root: &Path, max_unpacked_bytes: u64, max_entries: u64) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            max_unpacked_bytes,
            max_entries,
            unpacked_bytes: 0,
            entries: 0,
            chown: nix::unistd::geteuid().is_root(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that, once set, makes the unpacking stop with [`UnpackError::Cancelled`] before
    /// its next entry.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Bytes of regular file content written so far.
    pub fn unpacked_bytes(&self) -> u64 {
        self.unpacked_bytes
    }

    /// Applies one layer read from `path`, gzip-compressed or a plain tar (told apart by the
    /// gzip magic bytes). With `diff_id`, the uncompressed stream must hash to it.
    pub fn apply_layer_file(&mut self, path: &Path, diff_id: Option<&str>) -> Result<(), UnpackError> {
        let file = File::open(path).map_err(io_err(format!("open layer {}", path.display())))?;
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 2];
        let n = read_up_to(&mut reader, &mut magic).map_err(io_err("read layer"))?;
        let head = io::Cursor::new(magic[..n].to_vec());
        let stream = head.chain(reader);
        if magic[..n] == [0x1f, 0x8b] {
            self.apply_layer(flate2::read::MultiGzDecoder::new(stream), diff_id)
        } else {
            self.apply_layer(stream, diff_id)
        }
    }

    /// Applies one uncompressed tar layer.
    pub fn apply_layer<R: Read>(&mut self, tar: R, diff_id: Option<&str>) -> Result<(), UnpackError> {
        // The tar crate reads long names and pax headers into memory whatever their size: the
        // reader refuses to give it more than an entry's data plus METADATA_ALLOWANCE at a time.
        let allowance = Rc::new(Cell::new(METADATA_ALLOWANCE));
        let mut hashing = HashingReader { inner: tar, hasher: Sha256::new(), allowance: allowance.clone() };
        let mut written = HashSet::new();
        {
            let mut archive = tar::Archive::new(&mut hashing);
            let entries = archive.entries().map_err(io_err("read layer"))?;
            for entry in entries {
                let mut entry = entry.map_err(io_err("read layer entry"))?;
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(UnpackError::Cancelled);
                }
                self.entries += 1;
                if self.entries > self.max_entries {
                    return Err(UnpackError::TooManyEntries { max: self.max_entries });
                }
                // Every entry's data counts, also what is skipped (devices, links with data).
                let size = entry.size();
                self.unpacked_bytes = self.unpacked_bytes.saturating_add(size);
                if self.unpacked_bytes > self.max_unpacked_bytes {
                    return Err(UnpackError::TooLarge { max: self.max_unpacked_bytes });
                }
                allowance.set(size.div_ceil(512).saturating_mul(512).saturating_add(METADATA_ALLOWANCE));
                self.apply_entry(&mut entry, &mut written)?;
            }
        }
        if let Some(expected) = diff_id {
            // Hash what follows the end-of-archive blocks too, but not without bound.
            let budget = self.max_unpacked_bytes.saturating_sub(self.unpacked_bytes);
            allowance.set(u64::MAX);
            let drained =
                io::copy(&mut (&mut hashing).take(budget + 1), &mut io::sink()).map_err(io_err("read layer"))?;
            if drained > budget {
                return Err(UnpackError::TooLarge { max: self.max_unpacked_bytes });
            }
            let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
            if actual != expected {
                return Err(UnpackError::DiffIdMismatch { expected: expected.to_string(), actual });
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        written: &mut HashSet<Vec<OsString>>,
    ) -> Result<(), UnpackError> {
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let components =
            safe_components(&entry.path_bytes()).ok_or_else(|| UnpackError::UnsafePath(raw_path.clone()))?;
        let kind = entry.header().entry_type();

        let Some((name, parents)) = components.split_last() else {
            // The root itself ("./"): take its metadata if it is a directory entry.
            if kind == EntryType::Directory {
                let meta = EntryMeta::read(entry)?;
                self.set_dir_meta(&self.root.clone(), &meta, &raw_path)?;
            }
            return Ok(());
        };
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE_WHITEOUT {
            if let Some(dir) = self.resolve_dir(parents, false, &raw_path)? {
                prune_opaque(&dir, parents, written).map_err(io_err(format!("opaque whiteout {raw_path}")))?;
            }
            return Ok(());
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::UnsafePath(raw_path));
            }
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                tracing::debug!(path = %raw_path, "skipping aufs metadata entry");
                return Ok(());
            }
            if let Some(dir) = self.resolve_dir(parents, false, &raw_path)? {
                remove_any(&dir.join(OsStr::from_bytes(hidden))).map_err(io_err(format!("whiteout {raw_path}")))?;
            }
            return Ok(());
        }

        let dir =
            self.resolve_dir(parents, true, &raw_path)?.ok_or_else(|| UnpackError::NotADirectory(raw_path.clone()))?;
        let target = dir.join(name);
        written.insert(components.clone());
        let meta = EntryMeta::read(entry)?;
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target).map_err(io_err(format!("replace {raw_path}")))?;
                        mkdir(&target, &raw_path)?;
                    }
                    Err(_) => mkdir(&target, &raw_path)?,
                }
                self.set_dir_meta(&target, &meta, &raw_path)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                replace(&target, &raw_path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc_o_nofollow())
                    .open(&target)
                    .map_err(io_err(format!("create {raw_path}")))?;
                let copied = io::copy(&mut entry.take(size), &mut file).map_err(io_err(format!("write {raw_path}")))?;
                if copied != size {
                    return Err(UnpackError::Io {
                        context: format!("write {raw_path}"),
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, "layer truncated"),
                    });
                }
                if self.chown {
                    std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                        .map_err(io_err(format!("chown {raw_path}")))?;
                }
                file.set_permissions(fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err(format!("chmod {raw_path}")))?;
                if let Some(mtime) = meta.mtime {
                    file.set_modified(mtime).map_err(io_err(format!("set mtime of {raw_path}")))?;
                }
                set_xattrs(&target, &meta, &raw_path);
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| PathBuf::from(OsStr::from_bytes(&l)))
                    .ok_or_else(|| UnpackError::UnsafePath(format!("{raw_path} (symlink without a target)")))?;
                replace(&target, &raw_path)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_err(format!("symlink {raw_path}")))?;
                if self.chown {
                    std::os::unix::fs::lchown(&target, Some(meta.uid), Some(meta.gid))
                        .map_err(io_err(format!("chown {raw_path}")))?;
                }
                set_xattrs(&target, &meta, &raw_path);
            }
            EntryType::Link => {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                let link_str = String::from_utf8_lossy(&link).into_owned();
                let bad = || UnpackError::BadHardLink { path: raw_path.clone(), target: link_str.clone() };
                let link_components = safe_components(&link).ok_or_else(bad)?;
                let (link_name, link_parents) = link_components.split_last().ok_or_else(bad)?;
                let link_dir = self.resolve_dir(link_parents, false, &link_str)?.ok_or_else(bad)?;
                let source = link_dir.join(link_name);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                if source == target {
                    return Ok(());
                }
                replace(&target, &raw_path)?;
                // link(2) does not follow a symlink at `source`: it links the symlink itself.
                fs::hard_link(&source, &target).map_err(io_err(format!("hard link {raw_path}")))?;
            }
            EntryType::Fifo => {
                replace(&target, &raw_path)?;
                nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
                    UnpackError::Io { context: format!("mkfifo {raw_path}"), source: io::Error::from(e) }
                })?;
                if self.chown {
                    std::os::unix::fs::lchown(&target, Some(meta.uid), Some(meta.gid))
                        .map_err(io_err(format!("chown {raw_path}")))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode))
                    .map_err(io_err(format!("chmod {raw_path}")))?;
            }
            EntryType::Char | EntryType::Block => {
                tracing::warn!(path = %raw_path, "skipping device node in image layer");
            }
            other => {
                tracing::warn!(path = %raw_path, kind = ?other, "skipping unsupported tar entry type");
            }
        }
        Ok(())
    }

    fn set_dir_meta(&self, dir: &Path, meta: &EntryMeta, raw_path: &str) -> Result<(), UnpackError> {
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow() | libc_o_directory())
            .open(dir)
            .map_err(io_err(format!("open directory {raw_path}")))?;
        if self.chown {
            std::os::unix::fs::fchown(&handle, Some(meta.uid), Some(meta.gid))
                .map_err(io_err(format!("chown {raw_path}")))?;
        }
        handle.set_permissions(fs::Permissions::from_mode(meta.mode)).map_err(io_err(format!("chmod {raw_path}")))?;
        set_xattrs(dir, meta, raw_path);
        Ok(())
    }

    /// Resolves the directory `components` inside the root, following symlinks as the guest
    /// would but never leaving the root. Missing directories are created (mode 0755) when
    /// `create`, else `None` is returned.
    fn resolve_dir(
        &self,
        components: &[OsString],
        create: bool,
        raw_path: &str,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: Vec<OsString> = components.iter().rev().cloned().collect();
        let mut links = 0;
        while let Some(component) = pending.pop() {
            if component == ".." {
                resolved.pop();
                continue;
            }
            if component == "." || component.is_empty() {
                continue;
            }
            let mut candidate = self.root.clone();
            candidate.extend(&resolved);
            candidate.push(&component);
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(UnpackError::SymlinkLoop(raw_path.to_string()));
                    }
                    let target = fs::read_link(&candidate).map_err(io_err(format!("read link in {raw_path}")))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(p) => pending.push(p.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Ok(m) if m.is_dir() => resolved.push(component),
                Ok(_) => return Err(UnpackError::NotADirectory(raw_path.to_string())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    mkdir(&candidate, raw_path)?;
                    resolved.push(component);
                }
                Err(e) => return Err(io_err(format!("stat parent of {raw_path}"))(e)),
            }
        }
        let mut dir = self.root.clone();
        dir.extend(&resolved);
        Ok(Some(dir))
    }
}

/// The metadata of an entry that is applied to what it creates.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<SystemTime>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<EntryMeta, UnpackError> {
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mut uid = header.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0);
        let mut gid = header.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
        let mtime = header.mtime().ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(io_err("read pax header"))? {
            for ext in pax.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value().ok().and_then(|v| v.parse::<u32>().ok());
                match key {
                    "uid" => uid = value.unwrap_or(uid),
                    "gid" => gid = value.unwrap_or(gid),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((OsString::from(name), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(EntryMeta { mode, uid, gid, mtime, xattrs })
    }
}

fn set_xattrs(path: &Path, meta: &EntryMeta, raw_path: &str) {
    for (name, value) in &meta.xattrs {
        // xattr::set does not follow symlinks (lsetxattr).
        if let Err(e) = xattr::set(path, name, value) {
            tracing::warn!(path = %raw_path, xattr = ?name, error = %e, "could not set extended attribute");
        }
    }
}

/// Splits a tar path into its normal components; `None` if it is absolute or has `..`.
/// `./` and `.` components are dropped; an empty result is the root itself.
pub(crate) fn safe_components(path: &[u8]) -> Option<Vec<OsString>> {
    if path.first() == Some(&b'/') {
        return None;
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Some(out)
}

fn mkdir(path: &Path, raw_path: &str) -> Result<(), UnpackError> {
    let mut builder = fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o755);
    match builder.create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(format!("mkdir for {raw_path}"))(e)),
    }
}

/// Removes whatever is at `path` (a symlink itself, never its target) so it can be recreated.
fn replace(path: &Path, raw_path: &str) -> Result<(), UnpackError> {
    remove_any(path).map_err(io_err(format!("replace {raw_path}")))
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        // remove_dir_all does not follow symlinks inside the tree.
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empties `dir` of everything this layer did not write itself (the opaque whiteout may come
/// before or after the layer's own entries in the directory).
fn prune_opaque(dir: &Path, prefix: &[OsString], written: &HashSet<Vec<OsString>>) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        let mut key = prefix.to_vec();
        key.push(child.file_name());
        let path = child.path();
        if written.contains(&key) {
            if child.file_type()?.is_dir() {
                prune_opaque(&path, &key, written)?;
            }
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Hashes what is read, and fails a read past the allowance left.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    allowance: Rc<Cell<u64>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.allowance.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "tar metadata (long name or pax header) too large"));
        }
        let max = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.allowance.set(left - n as u64);
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn libc_o_directory() -> i32 {
    nix::fcntl::OFlag::O_DIRECTORY.bits()
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
