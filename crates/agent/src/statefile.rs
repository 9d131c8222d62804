//! The agent's saved state: what `/init` set (env vars, access token, default user and workdir),
//! kept in a root-only file so that a restarted server gets it back instead of running without a
//! token. In a guest the file is [`GUEST_STATE_FILE`] on `/run`, a tmpfs that RAM snapshots keep.
//!
//! Writes go to a temporary file in the same directory (0600, in a directory created 0700) that
//! is then renamed over the old one, so a server killed mid-write leaves the old state or the new
//! one, never half of one. A file that cannot be trusted (unreadable, too large, not valid, not a
//! regular file, owned by another user, open to other users) is an error: the caller then holds
//! no token, so it refuses every call until the host initialises it again.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::Identity;

/// Where the server keeps its state inside a guest.
pub const GUEST_STATE_FILE: &str = "/run/ember/agent.json";
/// Largest state file read (4 MiB; `/init` bodies are at most 1 MiB).
const MAX_STATE: u64 = 4 << 20;
/// Format version written; others are refused.
const VERSION: u32 = 1;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Untrusted { path: PathBuf, reason: &'static str },
    #[error("{path}: larger than {MAX_STATE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a valid state file: {source}")]
    Invalid { path: PathBuf, source: serde_json::Error },
    #[error("{path}: format version {found}, expected {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// The file's contents.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Saved {
    version: u32,
    env_vars: BTreeMap<String, String>,
    access_token: Option<String>,
    default_user: String,
    default_workdir: Option<String>,
    /// Absent in files without any (and in those written before it existed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    agent_env: BTreeMap<String, String>,
}

/// Reads the saved state; `Ok(None)` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Identity>, StateError> {
    let io = |source| StateError::Io { path: path.to_path_buf(), source };
    let untrusted = |reason| StateError::Untrusted { path: path.to_path_buf(), reason };
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(untrusted("is a symbolic link")),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(untrusted("not a regular file"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(untrusted("owned by another user"));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted("open to other users (mode must be 0600)"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_STATE {
        return Err(StateError::TooLarge { path: path.to_path_buf() });
    }
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|source| StateError::Invalid { path: path.to_path_buf(), source })?;
    if saved.version != VERSION {
        return Err(StateError::Version { path: path.to_path_buf(), found: saved.version });
    }
    if saved.default_user.is_empty() {
        return Err(untrusted("no default user"));
    }
    Ok(Some(Identity {
        env: saved.env_vars,
        agent_env: saved.agent_env,
        access_token: saved.access_token.filter(|t| !t.is_empty()),
        default_user: saved.default_user,
        default_workdir: saved.default_workdir.map(PathBuf::from).filter(|d| d.is_absolute()),
    }))
}

/// Replaces the saved state with `identity`, atomically.
pub fn save(path: &Path, identity: &Identity) -> Result<(), StateError> {
    let saved = Saved {
        version: VERSION,
        env_vars: identity.env.clone(),
        access_token: identity.access_token.clone(),
        default_user: identity.default_user.clone(),
        default_workdir: identity.default_workdir.as_ref().map(|d| d.to_string_lossy().into_owned()),
        agent_env: identity.agent_env.clone(),
    };
    let json = serde_json::to_vec(&saved).map_err(|source| StateError::Invalid { path: path.to_path_buf(), source })?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(StateError::Untrusted { path: path.to_path_buf(), reason: "names no file" });
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io { path: p, source }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    // A temporary file left by a server killed mid-write.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn identity() -> Identity {
        Identity {
            env: [("A".to_string(), "1".to_string())].into(),
            agent_env: [("B".to_string(), "2".to_string())].into(),
            access_token: Some("tok".into()),
            default_user: "user".into(),
            default_workdir: Some("/work".into()),
        }
    }

    #[test]
    fn saves_root_only_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/agent.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &identity()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.env, identity().env);
        assert_eq!(back.agent_env, identity().agent_env);
        assert_eq!(back.access_token.as_deref(), Some("tok"));
        assert_eq!(back.default_user, "user");
        assert_eq!(back.default_workdir, Some(PathBuf::from("/work")));
        // Replacing leaves no temporary file behind.
        save(&path, &Identity { access_token: Some("new".into()), ..identity() }).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().access_token.as_deref(), Some("new"));
        assert_eq!(std::fs::read_dir(dir.path().join("state")).unwrap().count(), 1);
    }

    #[test]
    fn untrusted_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        std::fs::write(&path, b"{not json").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(StateError::Invalid { .. })));
        save(&path, &identity()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&path), Err(StateError::Untrusted { .. })));
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(load(&link), Err(StateError::Untrusted { .. })));
        let text = r#"{"version":2,"envVars":{},"accessToken":null,"defaultUser":"user","defaultWorkdir":null}"#;
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(StateError::Version { found: 2, .. })));
        // A file from before `agentEnv` existed.
        std::fs::write(&path, text.replace("\"version\":2", "\"version\":1")).unwrap();
        assert!(load(&path).unwrap().unwrap().agent_env.is_empty());
        assert!(matches!(load(dir.path()), Err(StateError::Untrusted { .. }) | Err(StateError::Io { .. })));
    }
}
