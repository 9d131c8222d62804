//! Extra CA certificates from `/init`'s `caBundle` (for sandboxes behind a TLS-inspecting
//! proxy): checked to be PEM certificates only, then installed in the guest's trust store.
//!
//! The certificates go to [`EXTRA_CERTS`] (where `update-ca-certificates` also finds them, so a
//! later run of it keeps them) and into the system bundle [`SYSTEM_BUNDLE`], which OpenSSL,
//! curl, Debian's Python and most runtimes read: after the bundle's own certificates, in one
//! block between [`BEGIN_MARK`] and [`END_MARK`] that each install replaces, so initialising a
//! sandbox again never adds a second copy. Node.js, whose builds may ignore the system store,
//! is pointed at [`EXTRA_CERTS`] by [`NODE_ENV`] in the processes' environment. Both files are
//! replaced atomically, mode 0644.

use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use base64::Engine;

/// Where the extra certificates are installed in a guest.
pub const EXTRA_CERTS: &str = "/usr/local/share/ca-certificates/ember-extra.crt";
/// The guest's system CA bundle (Debian's).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The environment variable that points Node.js at [`EXTRA_CERTS`].
pub const NODE_ENV: &str = "NODE_EXTRA_CA_CERTS";
/// Largest `caBundle` accepted (1 MiB).
pub const MAX_BUNDLE: usize = 1 << 20;
/// First line of Ember's block in the system bundle.
pub const BEGIN_MARK: &str = "# ember: extra CA certificates begin";
/// Last line of Ember's block in the system bundle.
pub const END_MARK: &str = "# ember: extra CA certificates end";

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// Errors checking or installing a bundle. Those other than [`CaError::Io`] are the caller's
/// (a 400 for `/init`).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("caBundle is larger than {MAX_BUNDLE} bytes")]
    TooLarge,
    #[error("caBundle line {line}: {reason}")]
    Invalid { line: usize, reason: &'static str },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A checked bundle: one or more PEM certificates, each line trimmed and ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle(String);

impl Bundle {
    /// Checks `text`: at most [`MAX_BUNDLE`] bytes of PEM `CERTIFICATE` blocks, each with a
    /// base64 body holding a DER structure, and blank lines between them. Nothing else (no
    /// comments, no other PEM types) is accepted, so a bundle can never write Ember's markers.
    /// `Ok(None)` for a blank `text`, which removes the certificates installed.
    pub fn parse(text: &str) -> Result<Option<Self>, CaError> {
        if text.len() > MAX_BUNDLE {
            return Err(CaError::TooLarge);
        }
        let mut out = String::with_capacity(text.len());
        // The body of the block being read, and the line its BEGIN is on.
        let mut block: Option<(String, usize)> = None;
        for (i, raw) in text.lines().enumerate() {
            let (n, line) = (i + 1, raw.trim());
            let invalid = |reason| CaError::Invalid { line: n, reason };
            match &mut block {
                None if line.is_empty() => {}
                None if line == PEM_BEGIN => block = Some((String::new(), n)),
                None => {
                    return Err(invalid("expected -----BEGIN CERTIFICATE----- (only PEM certificates are accepted)"))
                }
                Some((body, _)) if line == PEM_END => {
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|_| invalid("certificate body is not valid base64"))?;
                    // Every X.509 certificate is a DER SEQUENCE.
                    if der.first() != Some(&0x30) {
                        return Err(invalid("certificate body is not a DER certificate"));
                    }
                    out += PEM_BEGIN;
                    out.push('\n');
                    for chunk in body.as_bytes().chunks(64) {
                        out += std::str::from_utf8(chunk).unwrap_or_default();
                        out.push('\n');
                    }
                    out += PEM_END;
                    out.push('\n');
                    block = None;
                }
                Some(_) if line.is_empty() => return Err(invalid("blank line inside a certificate")),
                Some((body, _)) => {
                    if !line.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
                        return Err(invalid("certificate body is not base64"));
                    }
                    *body += line;
                }
            }
        }
        if let Some((_, begin)) = block {
            return Err(CaError::Invalid { line: begin, reason: "certificate without -----END CERTIFICATE-----" });
        }
        Ok((!out.is_empty()).then_some(Self(out)))
    }

    /// The certificates, in PEM.
    pub fn pem(&self) -> &str {
        &self.0
    }
}

/// Where [`install`] writes: the guest's files, or a test's.
#[derive(Debug, Clone)]
pub struct CaPaths {
    /// The extra certificates alone ([`EXTRA_CERTS`]).
    pub extra: PathBuf,
    /// The system bundle ([`SYSTEM_BUNDLE`]).
    pub system: PathBuf,
}

impl CaPaths {
    /// The guest's paths.
    pub fn guest() -> Self {
        Self { extra: EXTRA_CERTS.into(), system: SYSTEM_BUNDLE.into() }
    }
}

/// Installs `bundle` (replacing the certificates an earlier call installed), or removes them
/// for `None`. Files already as they should be are not rewritten.
pub fn install(paths: &CaPaths, bundle: Option<&Bundle>) -> Result<(), CaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    let original = match std::fs::read_to_string(&paths.system) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io(&paths.system)(e)),
    };
    match bundle {
        Some(bundle) => {
            ensure_dir(&paths.extra).map_err(io(&paths.extra))?;
            if std::fs::read(&paths.extra).ok().as_deref() != Some(bundle.pem().as_bytes()) {
                crate::atomic::write(&paths.extra, bundle.pem().as_bytes(), 0o644).map_err(io(&paths.extra))?;
            }
        }
        None => match std::fs::remove_file(&paths.extra) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&paths.extra)(e)),
            _ => {}
        },
    }
    let original_text = original.as_deref().unwrap_or_default();
    let next = with_block(original_text, bundle.map(Bundle::pem));
    if next != original_text || (original.is_none() && bundle.is_some()) {
        ensure_dir(&paths.system).map_err(io(&paths.system))?;
        crate::atomic::write(&paths.system, next.as_bytes(), 0o644).map_err(io(&paths.system))?;
    }
    Ok(())
}

/// Creates the directory `path` is in, if missing (mode 0755).
fn ensure_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir),
        None => Ok(()),
    }
}

/// `bundle` without Ember's block, then Ember's block holding `pem` if given. A block whose end
/// marker is missing runs to the end (Ember's block is always last).
pub fn with_block(bundle: &str, pem: Option<&str>) -> String {
    let mut out = String::with_capacity(bundle.len() + pem.map_or(0, |p| p.len() + 80));
    let mut inside = false;
    for line in bundle.split_inclusive('\n') {
        match line.trim_end() {
            BEGIN_MARK if !inside => inside = true,
            END_MARK if inside => inside = false,
            _ if !inside => out += line,
            _ => {}
        }
    }
    if let Some(pem) = pem {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out += BEGIN_MARK;
        out.push('\n');
        out += pem;
        if !pem.ends_with('\n') {
            out.push('\n');
        }
        out += END_MARK;
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A syntactically valid certificate body: base64 of a DER SEQUENCE, over several lines.
    fn cert(seed: u8) -> String {
        let der: Vec<u8> = [0x30, 0x82, 0x01, 0x00].into_iter().chain((0..100).map(|i| i ^ seed)).collect();
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", lines.join("\n"))
    }

    fn invalid_line(text: &str) -> usize {
        match Bundle::parse(text) {
            Err(CaError::Invalid { line, .. }) => line,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_pem_certificates_only() {
        let two = format!("\n{}\r\n\n{}", cert(1).replace('\n', "\r\n"), cert(2).trim_end());
        let bundle = Bundle::parse(&two).unwrap().unwrap();
        assert_eq!(bundle.pem(), format!("{}{}", cert(1), cert(2)));
        assert_eq!(Bundle::parse("").unwrap(), None);
        assert_eq!(Bundle::parse(" \n\n").unwrap(), None);
        assert_eq!(invalid_line(&format!("# my proxy\n{}", cert(1))), 1);
        assert_eq!(invalid_line(&format!("{}{}", cert(1), "subject=CN = x\n")), 6);
        assert_eq!(invalid_line(&format!("{}{BEGIN_MARK}\n", cert(1))), 6);
        assert_eq!(invalid_line("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 1);
        assert_eq!(invalid_line(&format!("{PEM_BEGIN}\nnot*base64\n{PEM_END}\n")), 2);
        assert_eq!(invalid_line(&format!("{PEM_BEGIN}\nAAA\n{PEM_END}\n")), 3);
        // Valid base64, but no DER SEQUENCE; and an empty body.
        assert_eq!(invalid_line(&format!("{PEM_BEGIN}\naGVsbG8=\n{PEM_END}\n")), 3);
        assert_eq!(invalid_line(&format!("{PEM_BEGIN}\n{PEM_END}\n")), 2);
        assert_eq!(invalid_line(&format!("{PEM_BEGIN}\nMAA=\n\n{PEM_END}\n")), 3);
        assert_eq!(invalid_line(&format!("\n{PEM_BEGIN}\nMAA=\n")), 2);
        let huge = format!("{}{}", cert(1), "\n".repeat(MAX_BUNDLE));
        assert!(matches!(Bundle::parse(&huge), Err(CaError::TooLarge)));
    }

    #[test]
    fn block_is_replaced_not_repeated() {
        let original = "-----BEGIN CERTIFICATE-----\nsystem\n-----END CERTIFICATE-----\n";
        let once = with_block(original, Some(&cert(1)));
        assert!(once.starts_with(original));
        assert!(once.ends_with(&format!("{BEGIN_MARK}\n{}{END_MARK}\n", cert(1))));
        let twice = with_block(&once, Some(&cert(2)));
        assert_eq!(twice, format!("{original}{BEGIN_MARK}\n{}{END_MARK}\n", cert(2)));
        assert_eq!(with_block(&twice, Some(&cert(2))), twice);
        assert_eq!(with_block(&twice, None), original);
        // No final newline in the original; a block that lost its end marker.
        assert_eq!(with_block("a", Some("p\n")), format!("a\n{BEGIN_MARK}\np\n{END_MARK}\n"));
        assert_eq!(with_block(&format!("a\n{BEGIN_MARK}\np\n"), None), "a\n");
        assert_eq!(with_block("", None), "");
    }

    #[test]
    fn installs_idempotently_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let paths =
            CaPaths { extra: dir.path().join("local/ember-extra.crt"), system: dir.path().join("certs/ca.crt") };
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        let original = "system certificates\n";
        std::fs::write(&paths.system, original).unwrap();
        let one = Bundle::parse(&cert(1)).unwrap().unwrap();
        let two = Bundle::parse(&format!("{}{}", cert(2), cert(3))).unwrap().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        install(&paths, Some(&one)).unwrap();
        install(&paths, Some(&one)).unwrap();
        assert_eq!(read(&paths.extra), cert(1));
        assert_eq!(read(&paths.system), format!("{original}{BEGIN_MARK}\n{}{END_MARK}\n", cert(1)));
        assert_eq!((mode(&paths.extra), mode(&paths.system)), (0o644, 0o644));

        install(&paths, Some(&two)).unwrap();
        assert_eq!(read(&paths.extra), format!("{}{}", cert(2), cert(3)));
        assert_eq!(read(&paths.system), format!("{original}{BEGIN_MARK}\n{}{}{END_MARK}\n", cert(2), cert(3)));
        assert_eq!(read(&paths.system).matches(BEGIN_MARK).count(), 1);

        install(&paths, None).unwrap();
        install(&paths, None).unwrap();
        assert!(!paths.extra.exists());
        assert_eq!(read(&paths.system), original);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("certs")).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(dir.path().join("local")).unwrap().count(), 0);

        // No system bundle at all: one is made holding the block alone.
        std::fs::remove_file(&paths.system).unwrap();
        install(&paths, Some(&one)).unwrap();
        assert_eq!(read(&paths.system), format!("{BEGIN_MARK}\n{}{END_MARK}\n", cert(1)));
    }
}
