//! The files of a COPY step: found in the build context directory, hashed (the server's cache
//! key for the upload) and packed into a gzipped tar with paths relative to the context, as
//! E2B's SDKs do. Sources are relative paths inside the context (a `*`/`?` pattern in their
//! last component matches files of that directory); symbolic links are archived as links.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The largest archive of one COPY step.
pub const MAX_ARCHIVE_BYTES: usize = 512 << 20;

/// One COPY step's upload.
pub struct Archive {
    /// SHA-256 (hex) over the step's source, destination and files.
    pub hash: String,
    /// The gzipped tar.
    pub data: Vec<u8>,
    /// How many entries it holds.
    pub entries: usize,
}

/// Packs what `src` names in `context` for a COPY to `dest`.
pub fn pack(context: &Path, src: &str, dest: &str) -> anyhow::Result<Archive> {
    let context = context.canonicalize().with_context(|| format!("the build context {}", context.display()))?;
    let relative = normalize(src)?;
    let mut entries = Vec::new();
    for top in matches(&context, &relative, src)? {
        collect(&context, &top, &mut entries)?;
    }
    entries.sort();
    entries.dedup();

    let mut hasher = Sha256::new();
    hasher.update(format!("COPY {src} {dest}"));
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(Bounded(Vec::new()), flate2::Compression::default()));
    builder.follow_symlinks(false);
    for rel in &entries {
        let path = context.join(rel);
        let meta = path.symlink_metadata().with_context(|| format!("read {}", path.display()))?;
        hasher.update(rel.as_os_str().as_encoded_bytes());
        hasher.update(meta.mode().to_string());
        if meta.file_type().is_symlink() {
            hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            hasher.update(meta.len().to_string());
            hash_file(&mut hasher, &path)?;
        } else if !meta.is_dir() {
            bail!("{}: only files, directories and symbolic links can be copied", path.display());
        }
        builder.append_path_with_name(&path, rel).map_err(|e| too_big_or(e, &path))?;
    }
    let data = builder.into_inner().and_then(|gz| gz.finish()).map_err(|e| too_big_or(e, &context))?.0;
    Ok(Archive { hash: hex::encode(hasher.finalize()), data, entries: entries.len() })
}

/// `src` as a path relative to the context, refusing anything that leaves it.
fn normalize(src: &str) -> anyhow::Result<PathBuf> {
    if src.starts_with('/') {
        bail!("COPY {src}: sources are paths relative to the build context, not absolute ones");
    }
    let mut path = PathBuf::new();
    for part in src.split('/') {
        match part {
            "" | "." => {}
            ".." => bail!("COPY {src}: the source is outside the build context (..)"),
            part => path.push(part),
        }
    }
    Ok(path)
}

/// The context's entries `relative` names: itself, or the matches of a pattern in its last
/// component.
fn matches(context: &Path, relative: &Path, src: &str) -> anyhow::Result<Vec<PathBuf>> {
    let is_pattern = |s: &str| s.contains(['*', '?', '[']);
    let parent = relative.parent().unwrap_or(Path::new(""));
    if is_pattern(&parent.to_string_lossy()) {
        bail!("COPY {src}: patterns are supported in the last path component only");
    }
    inside(context, parent, src)?;
    let Some(last) = relative.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(vec![PathBuf::new()]);
    };
    if !is_pattern(&last) {
        if context.join(relative).symlink_metadata().is_err() {
            bail!("COPY {src}: no such file or directory in the build context {}", context.display());
        }
        return Ok(vec![relative.to_path_buf()]);
    }
    if last.contains('[') {
        bail!("COPY {src}: [...] patterns are not supported (use * and ?)");
    }
    let dir = context.join(parent);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let name = entry?.file_name();
        if wildcard(&last, &name.to_string_lossy()) {
            found.push(parent.join(name));
        }
    }
    if found.is_empty() {
        bail!("COPY {src}: nothing matches in the build context {}", context.display());
    }
    Ok(found)
}

/// Checks that `parent` (relative) does not lead out of the context through a symbolic link.
fn inside(context: &Path, parent: &Path, src: &str) -> anyhow::Result<()> {
    let Ok(real) = context.join(parent).canonicalize() else {
        bail!("COPY {src}: no such directory in the build context {}", context.display());
    };
    if !real.starts_with(context) {
        bail!("COPY {src}: the source is outside the build context (through a symbolic link)");
    }
    Ok(())
}

/// `top` and, for a directory (not a link to one), everything under it.
fn collect(context: &Path, top: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let path = context.join(top);
    let meta = path.symlink_metadata().with_context(|| format!("read {}", path.display()))?;
    if !top.as_os_str().is_empty() {
        out.push(top.to_path_buf());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(&path).with_context(|| format!("list {}", path.display()))? {
            collect(context, &top.join(entry?.file_name()), out)?;
        }
    }
    Ok(())
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// `*` and `?` matching.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn too_big_or(e: std::io::Error, path: &Path) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        anyhow::anyhow!("the COPY archive would exceed {} MiB", MAX_ARCHIVE_BYTES >> 20)
    } else {
        anyhow::Error::new(e).context(format!("archive {}", path.display()))
    }
}

/// A buffer that refuses to grow past [`MAX_ARCHIVE_BYTES`].
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_ARCHIVE_BYTES {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &Archive) -> Vec<String> {
        let gz = flate2::read::GzDecoder::new(&archive.data[..]);
        let mut tar = tar::Archive::new(gz);
        let mut names: Vec<String> =
            tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn packs_files_dirs_and_patterns_relative_to_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::create_dir_all(ctx.join("app/sub")).unwrap();
        std::fs::write(ctx.join("app/main.py"), "print(1)").unwrap();
        std::fs::write(ctx.join("app/sub/x.txt"), "x").unwrap();
        std::fs::write(ctx.join("a.txt"), "a").unwrap();
        std::fs::write(ctx.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();

        let one = pack(ctx, "./a.txt", "/x").unwrap();
        assert_eq!(names(&one), ["a.txt"]);
        assert_eq!(one.hash.len(), 64);
        assert_eq!(names(&pack(ctx, "app", "/x").unwrap()), ["app", "app/main.py", "app/sub", "app/sub/x.txt"]);
        assert_eq!(names(&pack(ctx, "*.txt", "/x").unwrap()), ["a.txt", "b.txt"]);
        assert_eq!(names(&pack(ctx, "link", "/x").unwrap()), ["link"]);
        assert_eq!(pack(ctx, ".", "/x").unwrap().entries, 7);

        // The hash follows contents and destinations.
        let before = pack(ctx, "a.txt", "/x").unwrap().hash;
        assert_eq!(before, pack(ctx, "a.txt", "/x").unwrap().hash);
        assert_ne!(before, pack(ctx, "a.txt", "/y").unwrap().hash);
        std::fs::write(ctx.join("a.txt"), "changed").unwrap();
        assert_ne!(before, pack(ctx, "a.txt", "/x").unwrap().hash);
    }

    #[test]
    fn refuses_what_is_outside_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::os::unix::fs::symlink(dir.path(), ctx.join("up")).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        for (src, expected) in [
            ("../secret", "outside"),
            ("a/../../secret", "outside"),
            ("/etc/passwd", "relative"),
            ("up/secret", "symbolic link"),
            ("missing", "no such"),
            ("*.none", "nothing matches"),
            ("*/x", "last path component"),
        ] {
            let error = format!("{:#}", pack(&ctx, src, "/x").err().unwrap());
            assert!(error.contains(expected), "{src}: {error}");
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.py", "a.py"));
        assert!(wildcard("a?c", "abc"));
        assert!(wildcard("*", ".hidden"));
        assert!(!wildcard("*.py", "a.pyc"));
        assert!(wildcard("a*b*c", "aXbYbc"));
    }
}
