//! Sandboxes: a template's kernel and disk, a network namespace with a tap, a QEMU VM and the
//! agent inside it, created as one ([`Runtime::create`]) and torn down as one, in reverse order,
//! on every path ([`sandbox`]). [`reconcile`] removes what a crashed `ember` left behind.

#![forbid(unsafe_code)]
// Values from guests and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

pub mod agent;
pub mod disk;
pub mod limits;
pub mod network;
pub mod private;
pub mod reconcile;
pub mod sandbox;
mod slots;
pub mod snapshot;

use std::path::PathBuf;
use std::time::Duration;

use ember_image::{Cache, GuestBinaries};
use ember_vmm::{Accel, AccelInfo};

pub use agent::{AgentClient, AgentError, ProcessStream};
pub use ember_net::policy::EgressPolicy;
pub use network::{NetworkConfig, SandboxNet};
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
    #[error(transparent)]
    Cgroup(#[from] ember_cgroup::CgroupError),
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
    /// A template's service (the code interpreter) did not say it was ready.
    #[error("the template's service did not answer {path} with 200 within {secs} s ({why}); last serial console output:\n{serial}")]
    ServiceNotReady { path: String, secs: u64, why: String, serial: String },
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

/// Free space every sandbox's root disk has beyond its template's files, in MiB.
pub fn disk_size_mib() -> u64 {
    ember_image::fit::FREE_MIB
}

/// Plain settings of a runtime. The `ember` binary fills them in from its settings (the
/// environment); nothing here reads the environment.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-sandbox state (overlays, sockets, logs) lives under `DATA_DIR/sandboxes/ID`.
    pub data_dir: PathBuf,
    pub cache: Cache,
    /// The guest binaries (agent, code-interpreter server) installed into template images.
    pub binaries: GuestBinaries,
    pub qemu: PathBuf,
    /// How long a guest may take from QEMU start to the agent's first answer.
    pub boot_timeout: Duration,
    /// Unprivileged user QEMU runs as (after opening its devices); `None` leaves it root.
    pub qemu_user: Option<String>,
    /// Network slots kept made ahead of creates.
    pub slot_pool: usize,
    /// The accelerator to use instead of the detected one.
    pub accel: Option<Accel>,
    /// Extra guest kernel arguments, after Ember's own (debugging; later ones override earlier).
    pub kernel_args: Option<String>,
    /// Sandbox networking: what is always denied, DNS upstreams, extra CA certificates.
    pub network: NetworkConfig,
    /// TCG's translation cache per VM (MiB; `ember_vmm::config::TCG_TB_SIZE_MIB` by default).
    pub tcg_tb_mib: u32,
    /// Put each VM in a cgroup of its own with its limits ([`limits`]), where the host has the
    /// controllers.
    pub cgroups: bool,
}

impl RuntimeConfig {
    /// Defaults: QEMU `qemu-system-x86_64` on `PATH`, run as [`default_qemu_user`], a 60 s boot
    /// time-out, no slots made ahead, the accelerator detected, no extra kernel arguments.
    pub fn new(data_dir: PathBuf, cache: Cache, binaries: GuestBinaries) -> Self {
        Self {
            data_dir,
            cache,
            binaries,
            qemu: "qemu-system-x86_64".into(),
            boot_timeout: Duration::from_secs(60),
            qemu_user: default_qemu_user(),
            slot_pool: 0,
            accel: None,
            kernel_args: None,
            network: NetworkConfig::default(),
            tcg_tb_mib: ember_vmm::config::TCG_TB_SIZE_MIB,
            cgroups: true,
        }
    }
}

/// The default user QEMU drops to: [`QEMU_USER`] if it exists, else none (QEMU stays root).
pub fn default_qemu_user() -> Option<String> {
    nix::unistd::User::from_name(QEMU_USER).ok().flatten().map(|_| QEMU_USER.to_string())
}

/// The unprivileged account `scripts/setup-host.sh` creates for QEMU.
pub const QEMU_USER: &str = "ember-qemu";

/// The live runtime: configuration plus the accelerator detected at start.
pub struct Runtime {
    config: RuntimeConfig,
    accel: AccelInfo,
    /// Guest kernel arguments for its clock under TCG ([`ember_vmm::clock`]).
    clock_args: Option<String>,
    /// uid and gid of the QEMU user; its group may read template images (each QEMU runs as
    /// a uid of its own in that group, [`limits`]).
    qemu_ids: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    /// Each VM's cgroup goes under these (none without controllers).
    cgroups: Option<ember_cgroup::Cgroups>,
    /// Held while a QEMU uid is chosen and given its disk.
    uid_lock: std::sync::Mutex<()>,
    pub(crate) slots: slots::Slots,
    pub(crate) net: network::NetContext,
}

impl Runtime {
    /// Checks for root and QEMU and detects the accelerator. Sets who may read what in the
    /// data directory and the cache, tightening what is looser ([`private`]), and checks that
    /// QEMU can reach its disk images once unprivileged. Leftovers of crashed runs are removed
    /// by [`Runtime::clean_orphans`], after a daemon has adopted what it wants to keep.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::NotRoot);
        }
        ember_vmm::vm::find_qemu(&config.qemu)?;
        let qemu_ids = config.qemu_user.as_deref().map(private::qemu_ids).transpose()?;
        let qemu_group = qemu_ids.map(|(_, gid)| gid);
        private::prepare_data_dir(&config.data_dir, qemu_group)?;
        config.cache.prepare(qemu_group)?;
        // Cache entries under this data directory's disks are never pruned.
        config.cache.register_user(&config.data_dir)?;
        if let Some((uid, gid)) = qemu_ids {
            private::check_reachable(&config.data_dir, uid, gid)?;
            private::check_reachable(config.cache.root(), uid, gid)?;
        }
        let net = network::NetContext::new(&config.network);
        net.install_host()?;
        let slots = slots::Slots::new(&config.data_dir, config.slot_pool, net.rules(&EgressPolicy::allow_all()))?;
        let cgroups = limits::detect(config.cgroups, &config.data_dir)?;
        let accel = ember_vmm::accel::choose(config.accel);
        let clock_args = (accel.accel == Accel::Tcg).then(ember_vmm::clock::tcg_kernel_args).flatten();
        Ok(Self { accel, clock_args, config, qemu_ids, cgroups, uid_lock: Default::default(), slots, net })
    }

    /// A runtime for tests of the code around it (the daemon's HTTP layer, without QEMU or
    /// root): no check for root or QEMU, nothing prepared but an empty `DATA/slots`, QEMU left
    /// as root, no network slots made ahead. Not for creating sandboxes; [`Runtime::new`] is the
    /// one constructor for that.
    #[cfg(feature = "test-support")]
    pub fn unchecked(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let net = network::NetContext::new(&config.network);
        let slots = slots::Slots::new(&config.data_dir, 0, String::new())?;
        Ok(Self {
            accel: ember_vmm::accel::choose(config.accel),
            clock_args: None,
            config,
            qemu_ids: None,
            cgroups: None,
            uid_lock: Default::default(),
            slots,
            net,
        })
    }

    pub fn accel(&self) -> &AccelInfo {
        &self.accel
    }

    /// The guest kernel's command line: Ember's, the clock's under TCG, then the operator's.
    pub(crate) fn kernel_cmdline(&self) -> String {
        let extra = [self.clock_args.as_deref(), self.config.kernel_args.as_deref()];
        let extra: Vec<&str> = extra.into_iter().flatten().collect();
        sandbox::kernel_cmdline((!extra.is_empty()).then(|| extra.join(" ")).as_deref())
    }

    /// A warning about how QEMU runs, if it deserves one.
    pub fn qemu_user_warning(&self) -> Option<&'static str> {
        self.config
            .qemu_user
            .is_none()
            .then_some("QEMU runs as root (no ember-qemu user; scripts/setup-host.sh creates it)")
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Where sandbox directories live (`DATA/sandboxes`).
    fn sandboxes_dir(&self) -> PathBuf {
        self.config.data_dir.join(private::SANDBOXES)
    }

    /// Directory of sandbox `id` (`DATA/sandboxes/ID`).
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.sandboxes_dir().join(id)
    }

    /// Deletes the network slots made ahead of time (at shutdown).
    pub fn release_slots(&self) {
        self.slots.release();
    }

    /// Removes the host's network rules, and turns forwarding off again if Ember turned it on,
    /// once no sandbox is left (at a stop that destroyed them all), waiting up to `wait` for
    /// the last slot link to go.
    pub fn release_host_network(&self, wait: Duration) {
        if let Err(e) = ember_net::host::remove(wait) {
            tracing::warn!(error = %e, "removing the host's network rules");
        }
    }

    /// Puts `policy` in force for the running `sandbox`'s new connections.
    pub fn set_policy(&self, sandbox: &Sandbox, policy: EgressPolicy) -> Result<(), RuntimeError> {
        sandbox.net().set_policy(policy, &self.net)
    }

    /// Removes sandboxes (and waiting network slots) whose owning process is gone, except the
    /// sandboxes in `keep`; then starts making slots ahead of time.
    pub fn clean_orphans(&self, keep: &std::collections::HashSet<String>) {
        reconcile::kill_stray_vms(&self.sandboxes_dir(), keep);
        reconcile::clean_orphans(&self.sandboxes_dir(), keep);
        reconcile::clean_orphans(self.slots.dir(), &Default::default());
        self.clean_groups(keep);
        self.slots.fill();
    }
}
