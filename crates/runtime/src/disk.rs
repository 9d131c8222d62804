//! A running sandbox's disk as the guest sees it: its size, and growing it (QMP `block_resize`
//! on the qcow2 overlay; the guest's filesystem is grown after, from inside, by
//! `ember-agent grow-root`). Disks only grow: a qcow2 overlay never shrinks under a guest.

use std::time::Duration;

use serde_json::json;

use crate::{RuntimeError, Sandbox};

/// The drive id of every sandbox's root disk on QEMU's command line.
const ROOT_DRIVE: &str = "root";
/// How long QEMU may take to answer about or resize the disk.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest disk a sandbox may have (MiB): ten times the default free space and its files.
pub const MAX_DISK_MIB: u64 = 20 * 1024;

impl Sandbox {
    /// One QMP command, answered within [`QMP_TIMEOUT`].
    async fn qmp_call(
        &self,
        command: &str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let mut qmp = self.vm_qmp().await?;
        let answer = tokio::time::timeout(QMP_TIMEOUT, qmp.execute(command, args))
            .await
            .map_err(|_| RuntimeError::Io { context: command.into(), source: std::io::ErrorKind::TimedOut.into() })?;
        Ok(answer.map_err(ember_vmm::VmmError::from)?)
    }

    /// The size of the sandbox's disk in bytes, as its VM sees it.
    pub async fn disk_bytes(&self) -> Result<u64, RuntimeError> {
        let blocks = self.qmp_call("query-block", None).await?;
        virtual_size(&blocks).ok_or_else(|| RuntimeError::Io {
            context: "query-block".into(),
            source: std::io::Error::other(format!("no size for drive '{ROOT_DRIVE}' in {blocks}")),
        })
    }

    /// Grows the sandbox's disk to `bytes` (at most [`MAX_DISK_MIB`]); the guest learns of the
    /// new size at once, its filesystem only once grown from inside.
    pub async fn grow_disk(&self, bytes: u64) -> Result<(), RuntimeError> {
        if bytes > MAX_DISK_MIB << 20 {
            return Err(RuntimeError::Io {
                context: "grow the disk".into(),
                source: std::io::Error::other(format!("{bytes} bytes is more than the {MAX_DISK_MIB} MiB allowed")),
            });
        }
        self.qmp_call("block_resize", Some(json!({ "device": ROOT_DRIVE, "size": bytes }))).await?;
        Ok(())
    }
}

/// The root drive's virtual size in `query-block`'s answer.
fn virtual_size(blocks: &serde_json::Value) -> Option<u64> {
    blocks
        .as_array()?
        .iter()
        .find(|b| b["device"] == ROOT_DRIVE)
        .and_then(|b| b["inserted"]["image"]["virtual-size"].as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_drive_size_is_read_from_query_block() {
        let answer = json!([
            { "device": "other", "inserted": { "image": { "virtual-size": 1 } } },
            { "device": "root", "inserted": { "image": { "virtual-size": 2147483648u64, "filename": "disk.qcow2" } } }
        ]);
        assert_eq!(virtual_size(&answer), Some(2 << 30));
        assert_eq!(virtual_size(&json!([{ "device": "root" }])), None);
        assert_eq!(virtual_size(&json!({})), None);
    }
}
