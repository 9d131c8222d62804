//! Saving and loading a VM's device state over QMP, and the on-disk description of a snapshot.
//! RAM that lives in a shared file is skipped (`x-ignore-shared`): a template's state file holds
//! only devices and CPUs (tens of KB); a paused sandbox's holds its private RAM too. QEMU's
//! seccomp sandbox forbids `exec:` migration, so the stream goes over a Unix socket that we serve.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::qmp::{Qmp, QmpError};
use crate::VmmError;

/// Format identifier and version of `snapshot.json`.
pub const MAGIC: &str = "ember-snapshot";
pub const FORMAT_VERSION: u32 = 1;
/// How long a save or load may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// What a snapshot directory holds, written last so that a complete file means a complete snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub magic: String,
    pub version: u32,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub cmdline: String,
    /// The guest RAM file (for templates) that restores map private.
    pub ram: PathBuf,
    /// Device state file.
    pub state: PathBuf,
    /// Disk image (qcow2) as it was at the snapshot; restores put an overlay over it.
    pub disk: PathBuf,
}

impl SnapshotMeta {
    /// Reads and checks `snapshot.json` in `dir`.
    pub fn load(dir: &Path) -> Option<Self> {
        let meta: Self = serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).ok()?).ok()?;
        (meta.magic == MAGIC && meta.version == FORMAT_VERSION).then_some(meta)
    }

    pub fn store(&self, dir: &Path) -> Result<(), VmmError> {
        let io = |source| VmmError::Io { context: "write snapshot.json".into(), source };
        let tmp = dir.join("snapshot.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&tmp, dir.join("snapshot.json")).map_err(io)
    }
}

async fn set_capabilities(qmp: &mut Qmp) -> Result<(), QmpError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )
    .await
    .map(|_| ())
}

async fn wait_migration(qmp: &mut Qmp) -> Result<(), VmmError> {
    let started = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let desc = info.get("error-desc").and_then(|d| d.as_str()).unwrap_or("migration failed").to_string();
                return Err(QmpError::Command { command: "migrate".into(), desc }.into());
            }
            _ if started.elapsed() > MIGRATION_TIMEOUT => return Err(QmpError::Timeout(MIGRATION_TIMEOUT).into()),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Stops the VM and writes its device state (and any RAM not in a shared file) to `out`.
/// `sock` is a scratch path for the Unix socket QEMU streams into.
pub async fn save(qmp: &mut Qmp, sock: &Path, out: &Path) -> Result<(), VmmError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| VmmError::Io { context, source }
    };
    let _ = std::fs::remove_file(sock);
    let listener = tokio::net::UnixListener::bind(sock).map_err(io("listen for the migration stream"))?;
    qmp.execute("stop", None).await?;
    set_capabilities(qmp).await?;
    qmp.execute("migrate", Some(json!({"uri": format!("unix:{}", sock.display())}))).await?;
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .map_err(|_| QmpError::Timeout(Duration::from_secs(10)))?
        .map_err(io("accept the migration stream"))?;
    let mut file = tokio::fs::File::create(out).await.map_err(io("create the state file"))?;
    tokio::io::copy(&mut stream, &mut file).await.map_err(io("write the state file"))?;
    file.flush().await.map_err(io("write the state file"))?;
    file.sync_all().await.map_err(io("sync the state file"))?;
    let _ = std::fs::remove_file(sock);
    wait_migration(qmp).await
}

/// Loads device state from `state` into a VM started with `-incoming defer`, then resumes it.
pub async fn load(qmp: &mut Qmp, sock: &Path, state: &Path) -> Result<(), VmmError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| VmmError::Io { context, source }
    };
    let _ = std::fs::remove_file(sock);
    set_capabilities(qmp).await?;
    qmp.execute("migrate-incoming", Some(json!({"uri": format!("unix:{}", sock.display())}))).await?;
    let mut stream = tokio::net::UnixStream::connect(sock).await.map_err(io("connect to QEMU's incoming socket"))?;
    let mut file = tokio::fs::File::open(state).await.map_err(io("open the state file"))?;
    tokio::io::copy(&mut file, &mut stream).await.map_err(io("send the state file"))?;
    drop(stream);
    wait_migration(qmp).await?;
    let _ = std::fs::remove_file(sock);
    qmp.execute("cont", None).await?;
    Ok(())
}
