//! Sandboxes: a template's kernel and disk, a network namespace with a tap, a QEMU VM and the
//! agent inside it, created as one ([`Runtime::create`]) and torn down as one, in reverse order,
//! on every path ([`sandbox`]). [`reconcile`] removes what a crashed `ember` left behind.

pub mod agent;
pub mod reconcile;
pub mod sandbox;
pub mod snapshot;

use std::path::PathBuf;
use std::time::Duration;

use ember_image::Cache;
use ember_vmm::AccelInfo;

pub use agent::{AgentClient, AgentError, ProcessStream};
pub use sandbox::{Sandbox, SandboxSpec};

/// Errors creating or running sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Image(#[from] ember_image::ImageError),
    #[error(transparent)]
    Vmm(#[from] ember_vmm::VmmError),
    #[error(transparent)]
    Net(#[from] ember_net::NetError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent did not answer in time.
    #[error("the guest did not answer within {secs} s; last serial console output:\n{serial}")]
    BootTimeout { secs: u64, serial: String },
    /// A sandbox to adopt is gone or incomplete.
    #[error("sandbox {0} cannot be adopted: {1}")]
    Adopt(String, &'static str),
    /// QEMU exited before the agent answered.
    #[error(
        "QEMU exited ({status}) before the guest answered; QEMU said: {qemu}\nlast serial console output:\n{serial}"
    )]
    VmExited { status: String, qemu: String, serial: String },
    /// Sandboxes need root (network namespaces, tap devices).
    #[error("creating sandboxes needs root (network namespaces and tap devices); run ember as root")]
    NotRoot,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// Size of every sandbox's root disk, in MiB.
pub fn disk_size_mib() -> u64 {
    ember_image::rootfs::IMAGE_SIZE_MIB
}

/// Plain settings of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-sandbox state (overlays, sockets, logs) lives under `DATA_DIR/sandboxes/ID`.
    pub data_dir: PathBuf,
    pub cache: Cache,
    /// The guest agent binary installed into template images.
    pub agent_bin: PathBuf,
    pub qemu: PathBuf,
    /// How long a guest may take from QEMU start to the agent's first answer.
    pub boot_timeout: Duration,
}

impl RuntimeConfig {
    /// Defaults: `EMBER_DATA_DIR` or `/var/lib/ember`, `EMBER_CACHE_DIR` or `/var/cache/ember`,
    /// `EMBER_QEMU` or `qemu-system-x86_64` on `PATH`.
    pub fn from_env(agent_bin: PathBuf) -> Self {
        Self {
            data_dir: std::env::var_os("EMBER_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/lib/ember".into()),
            cache: Cache::from_env(),
            agent_bin,
            qemu: std::env::var_os("EMBER_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-system-x86_64".into()),
            boot_timeout: Duration::from_secs(60),
        }
    }
}

/// The live runtime: configuration plus the accelerator detected at start.
pub struct Runtime {
    config: RuntimeConfig,
    accel: AccelInfo,
}

impl Runtime {
    /// Checks for root and QEMU and detects the accelerator. Leftovers of crashed runs are
    /// removed by [`Runtime::clean_orphans`], after a daemon has adopted what it wants to keep.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::NotRoot);
        }
        ember_vmm::vm::find_qemu(&config.qemu)?;
        let sandboxes = config.data_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes).map_err(io_err(format!("create {}", sandboxes.display())))?;
        Ok(Self { accel: ember_vmm::accel::detect(), config })
    }

    pub fn accel(&self) -> &AccelInfo {
        &self.accel
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Removes sandboxes whose owning process is gone, except those in `keep`.
    pub fn clean_orphans(&self, keep: &std::collections::HashSet<String>) {
        reconcile::clean_orphans(&self.config.data_dir.join("sandboxes"), keep);
    }
}
