//! Saving and loading a VM's device state over QMP, and the on-disk description of a snapshot.
//! RAM that lives in a shared file is skipped (`x-ignore-shared`): a template's state file holds
//! only devices and CPUs (tens of KB); a paused sandbox's holds its private RAM too. The
//! daemon opens the state file and hands QEMU the descriptor over QMP (`fd:` migration): no
//! `exec:` (which QEMU's seccomp sandbox forbids), no socket another process could race for, and
//! no file QEMU itself must be allowed to open (it may run as an unprivileged user).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::os::fd::AsFd;

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
    /// The access token the saved guest agent holds; a restore's first `/init` must carry it.
    #[serde(default)]
    pub agent_token: Option<String>,
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
pub async fn save(qmp: &mut Qmp, out: &Path) -> Result<(), VmmError> {
    let file = std::fs::File::create(out).map_err(io("create the state file"))?;
    qmp.send_fd("ember-migrate-out", file.as_fd()).await?;
    qmp.execute("stop", None).await?;
    set_capabilities(qmp).await?;
    qmp.execute("migrate", Some(json!({"uri": "fd:ember-migrate-out"}))).await?;
    wait_migration(qmp).await?;
    file.sync_all().map_err(io("sync the state file"))
}

/// Loads device state from `state` into a VM started with `-incoming defer`, then resumes it.
pub async fn load(qmp: &mut Qmp, state: &Path) -> Result<(), VmmError> {
    let file = std::fs::File::open(state).map_err(io("open the state file"))?;
    qmp.send_fd("ember-migrate-in", file.as_fd()).await?;
    set_capabilities(qmp).await?;
    qmp.execute("migrate-incoming", Some(json!({"uri": "fd:ember-migrate-in"}))).await?;
    wait_migration(qmp).await?;
    qmp.execute("cont", None).await?;
    Ok(())
}

fn io(context: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |source| VmmError::Io { context: context.into(), source }
}
