//! The files E2B's envd writes under `/run/e2b/` naming the sandbox and its template
//! (`.E2B_SANDBOX_ID`, `.E2B_TEMPLATE_ID`), from the `E2B_SANDBOX_ID` and `E2B_TEMPLATE_ID` env
//! vars `/init` carries. Owned by root, readable by everyone, written atomically; a later `/init`
//! (a restored snapshot gets a new id) replaces them, and one whose env vars lack a name removes
//! its file.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Where envd writes them in a guest.
pub const GUEST_DIR: &str = "/run/e2b";

/// (env var, file) pairs.
pub const FILES: [(&str, &str); 2] = [("E2B_SANDBOX_ID", ".E2B_SANDBOX_ID"), ("E2B_TEMPLATE_ID", ".E2B_TEMPLATE_ID")];

/// Writes (or removes) the files in `dir` from the sandbox's env vars.
pub fn write(dir: &Path, env: &std::collections::BTreeMap<String, String>) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (var, file) in FILES {
        let path = dir.join(file);
        match env.get(var) {
            Some(value) => crate::atomic::write(&path, value.as_bytes(), 0o444)?,
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn files_are_written_read_only_replaced_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/e2b");
        write(&dir, &env(&[("E2B_SANDBOX_ID", "sbx-1"), ("E2B_TEMPLATE_ID", "base"), ("E2B_SANDBOX", "true")]))
            .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!((read(".E2B_SANDBOX_ID"), read(".E2B_TEMPLATE_ID")), ("sbx-1".into(), "base".into()));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(".E2B_SANDBOX_ID")), 0o444);
        assert_eq!(mode(&dir), 0o755);
        // A restored snapshot is initialised again with a new id.
        write(&dir, &env(&[("E2B_SANDBOX_ID", "sbx-2"), ("E2B_TEMPLATE_ID", "base")])).unwrap();
        assert_eq!(read(".E2B_SANDBOX_ID"), "sbx-2");
        write(&dir, &env(&[("E2B_SANDBOX_ID", "sbx-3")])).unwrap();
        assert_eq!(read(".E2B_SANDBOX_ID"), "sbx-3");
        assert!(!dir.join(".E2B_TEMPLATE_ID").exists());
        // Nothing but the files is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
