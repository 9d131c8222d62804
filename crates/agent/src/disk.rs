//! Growing the root filesystem online to a larger disk: the host grows a sandbox's disk (QMP
//! `block_resize`), then runs `ember-agent grow-root --bytes N` as root in the guest, which
//! waits until the kernel sees the new size and grows the mounted ext4 filesystem to it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{device} is {seen} bytes, not the {wanted} asked for, after {waited:?}")]
    NotGrown { device: String, seen: u64, wanted: u64, waited: Duration },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let context = context.into();
    move |source| DiskError::Io { context, source }
}

/// The size of block device `device` in bytes.
pub fn device_bytes(device: &Path) -> Result<u64, DiskError> {
    let file = File::open(device).map_err(io(format!("open {}", device.display())))?;
    let mut bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `bytes`; the
    // descriptor is open for the whole call.
    unsafe { blk_get_size64(file.as_raw_fd(), &mut bytes) }
        .map_err(|e| DiskError::Io { context: format!("read the size of {}", device.display()), source: e.into() })?;
    Ok(bytes)
}

/// The root disk as `ember-agent grow-root` reports it (one line of JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootDisk {
    /// The block device's size.
    pub device_bytes: u64,
    /// The filesystem's size.
    pub fs_bytes: u64,
    /// What an unprivileged user may still write.
    pub avail_bytes: u64,
}

/// The root disk's sizes: `device` holding the filesystem mounted at `mount`.
pub fn root_disk(device: &Path, mount: &Path) -> Result<RootDisk, DiskError> {
    let stat = nix::sys::statvfs::statvfs(mount)
        .map_err(|e| DiskError::Io { context: format!("statvfs {}", mount.display()), source: e.into() })?;
    let block = stat.fragment_size();
    Ok(RootDisk {
        device_bytes: device_bytes(device)?,
        fs_bytes: stat.blocks() * block,
        avail_bytes: stat.blocks_available() * block,
    })
}

/// Waits (up to `wait`) until `device` has at least `wanted` bytes, then grows the ext4
/// filesystem mounted at `mount` to fill it. Returns the filesystem's new size in bytes.
pub fn grow_root(device: &Path, mount: &Path, wanted: u64, wait: Duration) -> Result<u64, DiskError> {
    let started = Instant::now();
    let mut seen = device_bytes(device)?;
    while seen < wanted {
        if started.elapsed() >= wait {
            return Err(DiskError::NotGrown {
                device: device.display().to_string(),
                seen,
                wanted,
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        seen = device_bytes(device)?;
    }
    let stat = nix::sys::statvfs::statvfs(mount)
        .map_err(|e| DiskError::Io { context: format!("statvfs {}", mount.display()), source: e.into() })?;
    let block = stat.fragment_size().max(1);
    let blocks = seen / block;
    let dir = File::open(mount).map_err(io(format!("open {}", mount.display())))?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) through the pointer,
    // which points at `blocks`; the descriptor is open for the whole call.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }.map_err(|e| DiskError::Io {
        context: format!("grow the filesystem at {}", mount.display()),
        source: e.into(),
    })?;
    Ok(blocks * block)
}
