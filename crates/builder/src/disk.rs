//! The build sandbox's disk. A build starts with the free space its source has (1 GiB for the
//! built-in templates, [`ember_image::fit::FREE_MIB`]); while a step runs, the disk is grown from
//! the host whenever less than [`GROW_BELOW_MIB`] is free, up to
//! [`ember_runtime::disk::MAX_DISK_MIB`]; after the steps it is grown until the template's
//! sandboxes have at least its minimum free space (E2B's `minFreeDiskMb`). Disks only grow, so a
//! template's sandboxes get that minimum and at most about [`GROW_BY_MIB`] more.

use std::time::Duration;

use ember_envd_proto::metrics::Metrics;
use ember_runtime::{AgentClient, Sandbox};

use crate::guest::{self, Command, Output};
use crate::log::BuildLog;

/// Free space (MiB, root's view) below which a running step's disk is grown.
pub const GROW_BELOW_MIB: u64 = 768;
/// How much a running step's disk is grown by at a time (MiB).
pub const GROW_BY_MIB: u64 = 1024;
/// The most free space a template may ask for (MiB).
pub const MAX_MIN_FREE_MIB: u64 = 10 * 1024;
/// How often a running step's free space is looked at.
const POLL: Duration = Duration::from_millis(500);
/// How long the guest may take to grow its filesystem.
const GROW_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// The root disk as `ember-agent grow-root` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct GuestDisk {
    pub device_bytes: u64,
    pub fs_bytes: u64,
    /// What an unprivileged user may still write.
    pub avail_bytes: u64,
}

/// Runs the agent's `grow-root` as root (growing to `bytes` if given) and reads its report.
async fn grow_root(agent: &AgentClient, bytes: Option<u64>) -> Result<GuestDisk, String> {
    let env = Default::default();
    let cmd = match bytes {
        Some(b) => format!("{} grow-root --bytes {b}", ember_image::rootfs::AGENT_PATH),
        None => format!("{} grow-root", ember_image::rootfs::AGENT_PATH),
    };
    let command = Command { cmd: &cmd, user: "root", cwd: Some("/"), env: &env };
    let out = BuildLog::new();
    guest::run(agent, &out, "", &command, Output::Logged, GROW_TIMEOUT)
        .await
        .map_err(|e| format!("growing the filesystem: {e}; {}", last_line(&out)))?;
    serde_json::from_str(&last_line(&out)).map_err(|e| format!("reading the disk's sizes: {e}"))
}

fn last_line(log: &BuildLog) -> String {
    log.tail(1).pop().map(|e| e.message).unwrap_or_default()
}

/// Grows the disk by `add` bytes and the filesystem with it.
async fn grow_by(sandbox: &Sandbox, agent: &AgentClient, add: u64) -> Result<GuestDisk, String> {
    let now = sandbox.disk_bytes().await.map_err(|e| e.to_string())?;
    let to = now + add.div_ceil(MIB) * MIB;
    if to > ember_runtime::disk::MAX_DISK_MIB * MIB {
        return Err(format!(
            "the disk would be {} MiB, more than the {} MiB a build may use",
            to / MIB,
            ember_runtime::disk::MAX_DISK_MIB
        ));
    }
    sandbox.grow_disk(to).await.map_err(|e| e.to_string())?;
    grow_root(agent, Some(to)).await
}

/// Keeps at least [`GROW_BELOW_MIB`] free while a step runs, growing the disk as needed; never
/// returns (the caller drops it when the step ends). Once the disk is at its largest, it stops
/// growing it and says so once.
pub async fn keep_room(sandbox: &Sandbox, agent: &AgentClient, log: &BuildLog, step: &str) -> std::convert::Infallible {
    let mut gave_up = false;
    loop {
        tokio::time::sleep(POLL).await;
        if gave_up {
            continue;
        }
        let Ok(m) = agent.get_json::<Metrics>("/metrics", agent.token()).await else { continue };
        if m.disk_total.saturating_sub(m.disk_used) >= GROW_BELOW_MIB * MIB {
            continue;
        }
        match grow_by(sandbox, agent, GROW_BY_MIB * MIB).await {
            Ok(disk) => log.info(
                Some(step),
                &format!("disk grown to {} MiB ({} MiB free)", disk.fs_bytes / MIB, disk.avail_bytes / MIB),
            ),
            Err(e) => {
                log.info(Some(step), &format!("the disk is not grown further: {e}"));
                gave_up = true;
            }
        }
    }
}

/// Grows the disk until an unprivileged user has at least `min_free_mib` free (0: no growth)
/// and returns its sizes.
pub async fn ensure_free(sandbox: &Sandbox, agent: &AgentClient, min_free_mib: u64) -> Result<GuestDisk, String> {
    let mut disk = grow_root(agent, None).await?;
    // The filesystem keeps part of what it grows by (inode tables, the 5% reserve): ask for a
    // little more, and look again.
    for _ in 0..3 {
        let want = min_free_mib * MIB;
        if disk.avail_bytes >= want {
            break;
        }
        disk = grow_by(sandbox, agent, (want - disk.avail_bytes) / 9 * 10 + MIB).await?;
    }
    if disk.avail_bytes < min_free_mib * MIB {
        return Err(format!(
            "{} MiB free after growing the disk, less than {min_free_mib} MiB",
            disk.avail_bytes / MIB
        ));
    }
    Ok(disk)
}
