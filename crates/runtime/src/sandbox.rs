//! One sandbox and its resources. Each resource is a field whose own `Drop` releases it, and
//! fields drop in declaration order, so the VM goes first, then the namespace (and its tap),
//! then the directory with the overlay: the same reverse order on success, error, panic and
//! cancellation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_image::template;
use ember_net::policy::EgressPolicy;
use ember_net::{Netns, GUEST_IP, GUEST_MAC, PREFIX_LEN, TAP_IP, TAP_NAME};
use ember_vmm::config::{check_sizes, NetConfig};
use ember_vmm::{Memory, Vm, VmConfig};
use rand::Rng;
use tracing::Instrument;

use crate::limits::VmGroup;
use crate::network::Rules;
use crate::snapshot::Shape;
use crate::{io_err, reconcile, AgentClient, Runtime, RuntimeError, SandboxNet};

/// How much of the serial log goes into errors.
const SERIAL_TAIL: u64 = 2000;

/// What to create.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub template: String,
    /// Restore from the template's snapshot instead of booting.
    pub from_snapshot: bool,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Kill the VM if this process dies (`ember run`); a daemon leaves it to be adopted.
    pub die_with_parent: bool,
    /// Egress policy, in force before the guest runs.
    pub policy: EgressPolicy,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            template: "base".into(),
            from_snapshot: false,
            vcpus: 2,
            memory_mib: 512,
            die_with_parent: true,
            policy: EgressPolicy::allow_all(),
        }
    }
}

/// A running sandbox whose agent has answered.
pub struct Sandbox {
    id: String,
    agent: AgentClient,
    /// How long from QEMU start to the agent's first answer.
    boot_time: Duration,
    shape: Shape,
    // Teardown order is the field order below.
    vm: Vm,
    cgroup: VmGroup,
    net: SandboxNet,
    dir: SandboxDir,
}

/// A new sandbox id: 20 characters of `[a-z0-9]`, as E2B's are.
pub fn new_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..20).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

impl Runtime {
    /// Creates a sandbox: builds the template (and its snapshot) on first use, then restores
    /// or boots a VM and waits for its agent. Sizes and the template name are checked first.
    pub async fn create(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        check_sizes(spec.vcpus, spec.memory_mib)?;
        template::check_name(&spec.template)?;
        let (cache, name, bins) = (self.config.cache.clone(), spec.template.clone(), self.config.binaries.clone());
        let tpl =
            tokio::task::spawn_blocking(move || template::ensure(&cache, &name, &bins)).await.map_err(|e| {
                RuntimeError::Io { context: "template build task".into(), source: std::io::Error::other(e) }
            })??;
        self.create_from_template(&tpl, spec).await
    }

    /// Creates a sandbox of template `tpl` (a built-in one, or an image made from an OCI image
    /// for a build), restored from its snapshot if `spec.from_snapshot`, else booted.
    pub async fn create_from_template(
        &self,
        tpl: &template::Template,
        spec: &SandboxSpec,
    ) -> Result<Sandbox, RuntimeError> {
        check_sizes(spec.vcpus, spec.memory_mib)?;
        let snapshot = match spec.from_snapshot {
            true => Some(self.ensure_template_snapshot(tpl, spec.vcpus, spec.memory_mib).await?),
            false => None,
        };
        let slot = self.slots.take()?;
        let id = slot.id.clone();
        let span = tracing::info_span!("sandbox", id = %id);
        async {
            let dir = SandboxDir::create(&self.sandbox_dir(&id))?;
            slot.claim();
            let overlay = dir.path().join(DISK);
            let (shape, start) = match &snapshot {
                Some(meta) => {
                    ember_vmm::disk::create_overlay(&meta.disk, &overlay)?;
                    (Shape::of_snapshot(meta), Start::Restore(meta.state.clone(), meta.agent_token.clone()))
                }
                None => {
                    ember_vmm::disk::create_overlay(&tpl.rootfs, &overlay)?;
                    let shape = Shape {
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        kernel: tpl.kernel.clone(),
                        cmdline: self.kernel_cmdline(),
                        ram: None,
                    };
                    (shape, Start::Boot)
                }
            };
            let net = SandboxNet::start(slot.netns, spec.policy.clone(), &self.net, Rules::Open)?;
            self.launch(id, dir, net, shape, spec.die_with_parent, start).await
        }
        .instrument(span)
        .await
    }

    /// Starts the VM of sandbox directory `dir` (which holds its disk) in `net` as `start`
    /// says, then waits for the agent.
    pub(crate) async fn launch(
        &self,
        id: String,
        dir: SandboxDir,
        net: SandboxNet,
        shape: Shape,
        die_with_parent: bool,
        start: Start,
    ) -> Result<Sandbox, RuntimeError> {
        let run_as = self.qemu_identity(&dir.path().join(DISK))?;
        let cgroup = self.vm_group(&id, shape.vcpus, shape.memory_mib)?;
        shape.store(dir.path())?;
        let memory = match (&start, &shape.ram) {
            (Start::Restore(..), Some(path)) => Memory::File { path: path.clone(), shared: false },
            _ => Memory::Anonymous,
        };
        let incoming = !matches!(start, Start::Boot);
        let mut config = self.vm_config(&shape, dir.path(), net.netns(), memory, incoming, die_with_parent);
        config.run_as = run_as;
        config.cgroup_procs = cgroup.procs();
        let started = Instant::now();
        let mut vm = Vm::spawn(config)?;
        reconcile::record_vm(dir.path(), vm.pid())?;
        // Where a start's time goes (logged with "sandbox ready"): QEMU up and its QMP socket
        // answering, the saved state loaded, the agent answering.
        let (mut qmp_ms, mut load_ms) = (0, 0);
        if let Start::Restore(state, _) | Start::Resume(state) = &start {
            let mut qmp = vm.qmp(Duration::from_secs(10)).await?;
            qmp_ms = started.elapsed().as_millis();
            ember_vmm::snapshot::load(&mut qmp, state).await?;
            load_ms = started.elapsed().as_millis() - qmp_ms;
        }
        let agent = AgentClient::new(net.netns().path(), SocketAddr::from((GUEST_IP, ember_envd_proto::ENVD_PORT)));
        let waited = Instant::now();
        wait_ready(&mut vm, &agent, self.config.boot_timeout, dir.path()).await?;
        let agent_ms = waited.elapsed().as_millis();
        // The token the agent holds now: a booted agent gets a fresh one (it refuses every call
        // until it has one); a restored one holds its template's.
        let token = match &start {
            Start::Boot => Some(init_token(&agent).await?),
            Start::Restore(_, token) => token.clone(),
            Start::Resume(_) => None,
        };
        let agent = agent.with_token(token);
        let boot_time = started.elapsed();
        tracing::info!(
            ms = u64::try_from(boot_time.as_millis()).unwrap_or(u64::MAX),
            qmp_ms,
            load_ms,
            agent_ms,
            pid = vm.pid(),
            start = start.name(),
            "sandbox ready"
        );
        Ok(Sandbox { id, agent, boot_time, shape, vm, cgroup, net, dir })
    }
}

impl Runtime {
    /// The one place a VM's description is made, for a boot, a restore, a resume and a template
    /// build alike: `shape`'s sizes, kernel and command line, the disk, console and QMP socket in
    /// `dir`, the guest's network in `netns`, RAM as `memory` says.
    pub(crate) fn vm_config(
        &self,
        shape: &Shape,
        dir: &Path,
        netns: &Netns,
        memory: Memory,
        incoming: bool,
        die_with_parent: bool,
    ) -> VmConfig {
        VmConfig {
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            kernel: shape.kernel.clone(),
            cmdline: shape.cmdline.clone(),
            disk: dir.join(DISK),
            net: Some(NetConfig { tap: TAP_NAME.into(), mac: GUEST_MAC.into() }),
            netns: Some(netns.path()),
            serial_log: dir.join("serial.log"),
            qmp_socket: dir.join("qmp.sock"),
            qemu: self.config.qemu.clone(),
            accel: self.accel.accel,
            tcg_tb_mib: self.config.tcg_tb_mib,
            die_with_parent,
            memory,
            incoming,
            run_as: self.config.qemu_user.clone(),
            cgroup_procs: Vec::new(),
        }
    }
}

/// Name of each sandbox's disk (a qcow2 overlay) in its directory.
pub(crate) const DISK: &str = "rootfs.qcow2";
/// Name of a paused sandbox's saved state in its directory; it exists only once complete.
pub(crate) const PAUSE_STATE: &str = "pause.state";
/// Where a pause writes the state before renaming it to [`PAUSE_STATE`].
pub(crate) const PAUSE_STATE_PARTIAL: &str = "pause.state.partial";

/// How a VM comes to life.
pub(crate) enum Start {
    /// A cold boot of the kernel.
    Boot,
    /// A template's device state, with its RAM file mapped private, and the access token its
    /// agent holds.
    Restore(PathBuf, Option<String>),
    /// A paused sandbox's state, which carries all its RAM.
    Resume(PathBuf),
}

impl Start {
    fn name(&self) -> &'static str {
        match self {
            Start::Boot => "boot",
            Start::Restore(..) => "restore",
            Start::Resume(_) => "resume",
        }
    }
}

/// The guest kernel's command line, with `extra` arguments (debugging, for example
/// `loglevel=7` without `quiet`; later arguments override earlier ones) at the end.
pub(crate) fn kernel_cmdline(extra: Option<&str>) -> String {
    let mut cmdline = format!(
        "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init={} panic=-1 reboot=t quiet \
         ember.ip={GUEST_IP}/{PREFIX_LEN} ember.gw={TAP_IP}",
        ember_image::rootfs::AGENT_PATH
    );
    if let Some(extra) = extra {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

pub(crate) async fn wait_ready(
    vm: &mut Vm,
    agent: &AgentClient,
    timeout: Duration,
    dir: &Path,
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = vm.try_exit() {
            return Err(RuntimeError::VmExited {
                status,
                qemu: vm.qemu_log().trim().to_string(),
                serial: serial_tail(dir),
            });
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::BootTimeout { secs: timeout.as_secs(), serial: serial_tail(dir) });
        }
        if let Ok(true) = agent.health(Duration::from_millis(500)).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Gives a freshly booted agent a random access token (it refuses every other call until it
/// has one) and returns it.
pub(crate) async fn init_token(agent: &AgentClient) -> Result<String, RuntimeError> {
    let token = hex::encode(rand::random::<[u8; 16]>());
    let request = ember_envd_proto::init::InitRequest { access_token: Some(token.clone()), ..Default::default() };
    agent.post_json("/init", &request, None).await?;
    Ok(token)
}

pub(crate) fn serial_tail(dir: &Path) -> String {
    console_tail(dir, SERIAL_TAIL)
}

/// The last `max` bytes of the serial console of the sandbox whose directory is `dir`.
pub fn console_tail(dir: &Path, max: u64) -> String {
    ember_vmm::serial::tail(&dir.join("serial.log"), max)
}

impl Sandbox {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of the guest's serial console log.
    pub fn serial_tail(&self) -> String {
        serial_tail(self.dir.path())
    }

    /// Whether QEMU is still running.
    pub fn is_alive(&mut self) -> bool {
        self.vm.try_exit().is_none()
    }

    /// Waits until QEMU exits on its own (a crash, or the guest powering off) and describes how.
    pub async fn vm_exited(&mut self) -> String {
        self.vm.wait().await
    }

    pub(crate) async fn vm_qmp(&self) -> Result<ember_vmm::qmp::Qmp, RuntimeError> {
        Ok(self.vm.qmp(Duration::from_secs(5)).await?)
    }

    /// Kills the VM and frees the namespace but keeps the directory (a paused sandbox).
    pub(crate) async fn stop_keeping_files(self) -> Result<(), RuntimeError> {
        let Sandbox { vm, cgroup, net, mut dir, .. } = self;
        vm.kill().await;
        drop(cgroup);
        net.delete()?;
        dir.0.take();
        Ok(())
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The sandbox's network: namespace, policy, services.
    pub fn net(&self) -> &SandboxNet {
        &self.net
    }

    /// Leaves the sandbox running and forgets it, for a later [`Sandbox::adopt`].
    pub fn detach(self) {
        let Sandbox { vm, cgroup, net, mut dir, .. } = self;
        vm.detach();
        cgroup.keep();
        net.detach();
        dir.0.take();
    }

    /// Takes over sandbox `id`, left running by an earlier process, if its VM, namespace and
    /// agent are all still there. The agent may take up to `agent_wait` to answer (asked again
    /// with backoff: a host under load right after a restart is slow). A VM an earlier process
    /// stopped (a pause cut short) is let run again, and a half-written pause state removed.
    /// Its network services start again with `policy`, whose rules replace the namespace's.
    pub async fn adopt(
        runtime: &Runtime,
        id: &str,
        agent_wait: Duration,
        policy: EgressPolicy,
    ) -> Result<Sandbox, RuntimeError> {
        let path = runtime.sandbox_dir(id);
        let gone = |what| RuntimeError::Adopt(id.to_string(), what);
        let recorded = reconcile::recorded_vm(&path).ok_or_else(|| gone("no QEMU recorded"))?;
        let mut vm =
            Vm::adopt(&recorded, path.join("serial.log"), path.join("qmp.sock")).ok_or_else(|| gone("QEMU is gone"))?;
        let netns = Netns::adopt(&ember_net::name_for(id)).ok_or_else(|| gone("namespace is gone"))?;
        let net = SandboxNet::start(netns, policy, &runtime.net, Rules::Unknown)?;
        let dir = SandboxDir(Some(path.clone()));
        reconcile::record_owner(&path)?;
        if let Ok(mut qmp) = vm.qmp(Duration::from_secs(2)).await {
            let _ = qmp.execute("cont", None).await;
        }
        for leftover in [PAUSE_STATE, PAUSE_STATE_PARTIAL, crate::snapshot::PAUSE_DISK] {
            let _ = std::fs::remove_file(path.join(leftover));
        }
        let agent = AgentClient::new(net.netns().path(), SocketAddr::from((GUEST_IP, ember_envd_proto::ENVD_PORT)));
        let deadline = Instant::now() + agent_wait;
        let mut backoff = Duration::from_millis(250);
        while !matches!(agent.health(Duration::from_secs(2)).await, Ok(true)) {
            if vm.try_exit().is_some() {
                return Err(gone("QEMU is gone"));
            }
            if Instant::now() + backoff >= deadline {
                return Err(gone("agent does not answer"));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
        let shape = Shape::load(&path).ok_or_else(|| gone("no shape.json"))?;
        let cgroup = runtime.adopted_group(id);
        Ok(Sandbox { id: id.to_string(), agent, boot_time: Duration::ZERO, shape, vm, cgroup, net, dir })
    }

    /// Tears the sandbox down: VM, namespace and tap, then its files.
    pub async fn destroy(self) -> Result<(), RuntimeError> {
        let Sandbox { id, vm, cgroup, net, dir, .. } = self;
        vm.kill().await;
        drop(cgroup);
        net.delete()?;
        dir.remove()?;
        tracing::info!(sandbox = %id, "sandbox destroyed");
        Ok(())
    }
}

/// The sandbox's directory (overlay, QMP socket, logs), removed when dropped.
pub(crate) struct SandboxDir(pub(crate) Option<PathBuf>);

impl SandboxDir {
    pub(crate) fn create(path: &Path) -> Result<Self, RuntimeError> {
        crate::private::private_subdir(path).map_err(io_err(format!("create {}", path.display())))?;
        let dir = Self(Some(path.to_path_buf()));
        reconcile::record_owner(path)?;
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    pub(crate) fn remove(mut self) -> Result<(), RuntimeError> {
        match self.0.take() {
            Some(p) => std::fs::remove_dir_all(&p).map_err(io_err(format!("remove {}", p.display()))),
            None => Ok(()),
        }
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&p) {
                tracing::warn!(dir = %p.display(), error = %e, "removing sandbox directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_e2b_ids() {
        let id = new_id();
        assert_eq!(id.len(), 20);
        assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(new_id(), id);
    }

    #[test]
    fn cmdline_configures_the_guest_network() {
        let c = kernel_cmdline(None);
        assert!(c.contains("ember.ip=169.254.0.21/30") && c.contains("ember.gw=169.254.0.22"), "{c}");
        assert!(c.contains("init=/usr/local/bin/ember-agent"));
        assert_eq!(kernel_cmdline(Some("loglevel=7")), format!("{c} loglevel=7"));
    }
}
