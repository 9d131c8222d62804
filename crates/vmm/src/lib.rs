//! The VM layer: one QEMU `microvm` process per sandbox ([`vm`]), its command line built from a
//! validated [`config::VmConfig`], the accelerator chosen at run time ([`accel`]), and QMP
//! control ([`qmp`]).

// Values from guests and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

pub mod accel;
pub mod clock;
pub mod config;
pub mod disk;
pub mod qmp;
pub mod serial;
pub mod snapshot;
pub mod vm;

pub use accel::{Accel, AccelInfo};
pub use config::{Memory, NetConfig, VmConfig, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, MIN_VCPUS};
pub use vm::Vm;

/// Errors of the VM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// vCPU count outside the supported range.
    #[error("vCPUs must be between {MIN_VCPUS} and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    /// Memory size outside the supported range.
    #[error("memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {0}")]
    Memory(u32),
    /// The QEMU binary is not installed.
    #[error("QEMU not found at {0}; install it with: apt-get install qemu-system-x86")]
    QemuMissing(std::path::PathBuf),
    /// qemu-img is not installed.
    #[error("qemu-img not found; install it with: apt-get install qemu-utils")]
    QemuImgMissing,
    /// Creating the disk overlay failed.
    #[error("create disk overlay {path}: {stderr}")]
    Overlay { path: std::path::PathBuf, stderr: String },
    /// A QMP exchange failed.
    #[error("QMP: {0}")]
    Qmp(#[from] qmp::QmpError),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}
