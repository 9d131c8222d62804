//! Snapshots. A template snapshot is a booted guest with its agent ready, saved once: its RAM in
//! a file, its device state, its disk as it was; sandboxes restore from it instead of booting,
//! mapping the RAM file private so they share its untouched pages. Pausing saves a sandbox's
//! device state and RAM into its directory and keeps its disk; resuming restores them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_envd_proto::process::{ProcessConfig, ProcessEvent, StartRequest};
use ember_image::template::Template;
use ember_net::policy::EgressPolicy;
use ember_net::{Netns, GUEST_IP};
use ember_vmm::snapshot::{SnapshotMeta, FORMAT_VERSION, MAGIC};
use ember_vmm::{Memory, Vm};
use serde::{Deserialize, Serialize};

use crate::network::Rules;
use crate::sandbox::{new_id, SandboxDir, Start, DISK, PAUSE_STATE, PAUSE_STATE_PARTIAL};
use crate::{io_err, AgentClient, Runtime, RuntimeError, Sandbox, SandboxNet};

const SNAPSHOT_KIND: &str = "snapshots";
/// Template snapshots kept in the cache (the most recently used, and any that a disk is still
/// backed by): one per built-in template and size in use, a few agent builds' worth.
const KEEP_SNAPSHOTS: usize = 8;
const SHAPE_FILE: &str = "shape.json";

/// A sandbox's VM shape, kept in its directory so that it can be paused, resumed or adopted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub cmdline: String,
    /// The template RAM file it was restored from, if any.
    pub ram: Option<PathBuf>,
}

impl Shape {
    pub fn of_snapshot(meta: &SnapshotMeta) -> Self {
        Self {
            vcpus: meta.vcpus,
            memory_mib: meta.memory_mib,
            kernel: meta.kernel.clone(),
            cmdline: meta.cmdline.clone(),
            ram: Some(meta.ram.clone()),
        }
    }

    pub fn load(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(dir.join(SHAPE_FILE)).ok()?).ok()
    }

    pub fn store(&self, dir: &Path) -> Result<(), RuntimeError> {
        std::fs::write(dir.join(SHAPE_FILE), serde_json::to_vec(self).unwrap_or_default())
            .map_err(io_err("write shape.json"))
    }
}

impl Runtime {
    /// Returns the snapshot of `tpl` at this size, booting and saving it first if it is missing.
    pub async fn ensure_template_snapshot(
        &self,
        tpl: &Template,
        vcpus: u32,
        memory_mib: u32,
    ) -> Result<SnapshotMeta, RuntimeError> {
        let cmdline = self.kernel_cmdline();
        let key = ember_image::cache::key(&[
            b"ember-template-snapshot-v2\n",
            tpl.key.as_bytes(),
            &vcpus.to_le_bytes(),
            &memory_mib.to_le_bytes(),
            cmdline.as_bytes(),
            self.accel.accel.to_string().as_bytes(),
        ]);
        let cache = &self.config.cache;
        let entry = cache.entry(SNAPSHOT_KIND, &key);
        if let Some(meta) = SnapshotMeta::load(&entry) {
            cache.touch(SNAPSHOT_KIND, &key);
            return Ok(meta);
        }
        let (lock_cache, lock_key) = (cache.clone(), key.clone());
        let _lock = tokio::task::spawn_blocking(move || lock_cache.lock(SNAPSHOT_KIND, &lock_key))
            .await
            .map_err(|e| RuntimeError::Io { context: "lock task".into(), source: std::io::Error::other(e) })??;
        if let Some(meta) = SnapshotMeta::load(&entry) {
            return Ok(meta);
        }
        eprintln!("==> snapshotting template {} ({vcpus} vCPUs, {memory_mib} MiB): boot once, save", tpl.name);
        let scratch = cache.scratch(SNAPSHOT_KIND, &key)?;
        let agent_token = self.build_snapshot(tpl, vcpus, memory_mib, &cmdline, &scratch).await?;
        // Paths inside the metadata name the published entry, not the scratch directory.
        let meta = SnapshotMeta {
            magic: MAGIC.into(),
            version: FORMAT_VERSION,
            vcpus,
            memory_mib,
            kernel: tpl.kernel.clone(),
            cmdline,
            ram: entry.join("ram"),
            state: entry.join("state"),
            disk: entry.join("disk.qcow2"),
            agent_token: Some(agent_token),
        };
        meta.store(&scratch)?;
        cache.publish(SNAPSHOT_KIND, &key, &scratch)?;
        cache.touch(SNAPSHOT_KIND, &key);
        // Each new template (agent) makes a new snapshot; keep a few.
        cache.prune(SNAPSHOT_KIND, KEEP_SNAPSHOTS, &key);
        eprintln!("==> template snapshot ready");
        Ok(meta)
    }

    async fn build_snapshot(
        &self,
        tpl: &Template,
        vcpus: u32,
        memory_mib: u32,
        cmdline: &str,
        dir: &Path,
    ) -> Result<String, RuntimeError> {
        let ram = dir.join("ram");
        let file = std::fs::File::create(&ram).map_err(io_err("create the RAM file"))?;
        file.set_len(u64::from(memory_mib) << 20).map_err(io_err("size the RAM file"))?;
        // The disk is an overlay that stays with the snapshot; sandboxes put theirs over it.
        ember_vmm::disk::create_overlay(&tpl.rootfs, &dir.join(DISK))?;
        let run_as = self.qemu_identity(&dir.join(DISK))?;
        // A template's build needs no network: its namespace lets nothing out.
        let rules = self.net.rules(&EgressPolicy::deny_all());
        let name = format!("{}{}", crate::limits::SNAPSHOT_GROUP_PREFIX, &new_id()[..8]);
        let netns = Netns::create(&ember_net::name_for(&name), &rules)?;
        let shape = Shape { vcpus, memory_mib, kernel: tpl.kernel.clone(), cmdline: cmdline.to_string(), ram: None };
        let memory = Memory::File { path: ram.clone(), shared: true };
        let cgroup = self.vm_group(&name, vcpus, memory_mib)?;
        let mut config = self.vm_config(&shape, dir, &netns, memory, false, true);
        config.run_as = run_as;
        config.cgroup_procs = cgroup.procs();
        let mut vm = Vm::spawn(config)?;
        let agent = AgentClient::new(netns.path(), (GUEST_IP, ember_envd_proto::ENVD_PORT).into());
        crate::sandbox::wait_ready(&mut vm, &agent, self.config.boot_timeout, dir).await?;
        let token = crate::sandbox::init_token(&agent).await?;
        // Run a login shell once, so that what every command needs is in the guest's page cache.
        if let Some(ready) = tpl.ready {
            wait_service(&agent.with_port(ready.port), ready.path, &mut vm, dir).await?;
        }
        warm_up(&agent.with_token(Some(token.clone()))).await?;
        let mut qmp = vm.qmp(Duration::from_secs(5)).await?;
        ember_vmm::snapshot::save(&mut qmp, &dir.join("state")).await?;
        vm.kill().await;
        drop(cgroup);
        netns.delete()?;
        // Published as `disk.qcow2` (the name `SnapshotMeta` gives restores); the sockets and
        // the build's console log are not part of the snapshot.
        std::fs::rename(dir.join(DISK), dir.join(crate::private::SNAPSHOT_DISK))
            .map_err(io_err("keep the snapshot's disk"))?;
        for leftover in ["qmp.sock", "serial.sock"] {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
        crate::private::seal_snapshot(dir)?;
        Ok(token)
    }

    /// Resumes the paused sandbox `id`: a new namespace with `policy` in force, its own disk,
    /// and its saved state and RAM (a full pause) or a boot from that disk (a filesystem-only
    /// pause: its agent then holds a fresh token, [`AgentClient::token`]).
    pub async fn resume(&self, id: &str, die_with_parent: bool, policy: EgressPolicy) -> Result<Sandbox, RuntimeError> {
        let path = self.sandbox_dir(id);
        let shape = Shape::load(&path).ok_or(RuntimeError::Adopt(id.to_string(), "no shape.json"))?;
        let (marker, start, shape) = match self.pause_mode(id) {
            Some(PauseMode::Full) => (path.join(PAUSE_STATE), Start::Resume(path.join(PAUSE_STATE)), shape),
            Some(PauseMode::Filesystem) => (path.join(PAUSE_DISK), Start::Boot, Shape { ram: None, ..shape }),
            None => return Err(RuntimeError::Adopt(id.to_string(), "not paused")),
        };
        let dir = SandboxDir(Some(path.clone()));
        crate::reconcile::record_owner(&path)?;
        let netns = Netns::create(&ember_net::name_for(id), &self.net.rules(&policy))?;
        let net = SandboxNet::start(netns, policy, &self.net, Rules::Of)?;
        let sandbox = self.launch(id.to_string(), dir, net, shape, die_with_parent, start).await?;
        let _ = std::fs::remove_file(&marker);
        Ok(sandbox)
    }

    /// What paused sandbox `id` kept, if it is paused.
    pub fn pause_mode(&self, id: &str) -> Option<PauseMode> {
        let dir = self.sandbox_dir(id);
        if dir.join(PAUSE_STATE).is_file() {
            Some(PauseMode::Full)
        } else if dir.join(PAUSE_DISK).is_file() {
            Some(PauseMode::Filesystem)
        } else {
            None
        }
    }

    /// Creates a sandbox from a state saved by [`Sandbox::save_to`] in `saved`, with `policy` in
    /// force before its processes run again.
    pub async fn create_from_saved(&self, saved: &Path, policy: EgressPolicy) -> Result<Sandbox, RuntimeError> {
        let shape =
            Shape::load(saved).ok_or_else(|| RuntimeError::Adopt(saved.display().to_string(), "no shape.json"))?;
        let slot = self.slots.take()?;
        let dir = SandboxDir::create(&self.sandbox_dir(&slot.id))?;
        slot.claim();
        ember_vmm::disk::create_overlay(&saved.join("disk.qcow2"), &dir.path().join(crate::sandbox::DISK))?;
        // The saved state carries all RAM, as a paused sandbox's does.
        let shape = Shape { ram: None, ..shape };
        let id = slot.id.clone();
        let net = SandboxNet::start(slot.netns, policy, &self.net, Rules::Open)?;
        self.launch(id, dir, net, shape, false, Start::Resume(saved.join("state"))).await
    }

    /// The agent client of sandbox `id` (its namespace has the same name whenever it runs).
    pub fn agent_for(&self, id: &str) -> AgentClient {
        AgentClient::new(ember_net::path_of(&ember_net::name_for(id)), (GUEST_IP, ember_envd_proto::ENVD_PORT).into())
    }

    /// Whether sandbox `id` is paused on disk (either way).
    pub fn is_paused(&self, id: &str) -> bool {
        self.pause_mode(id).is_some()
    }

    /// Removes a paused sandbox's files (nothing to do if they are gone already).
    pub fn remove_paused(&self, id: &str) -> Result<(), RuntimeError> {
        let path = self.sandbox_dir(id);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(format!("remove {}", path.display()))(e)),
            _ => Ok(()),
        }
    }

    /// Whether the QEMU recorded for sandbox `id` is still running.
    pub fn vm_recorded_alive(&self, id: &str) -> bool {
        crate::reconcile::recorded_vm(&self.sandbox_dir(id)).is_some_and(|vm| ember_vmm::vm::alive(&vm))
    }
}

impl Sandbox {
    /// Saves the running sandbox into `dir` (device state with all RAM, a copy of its disk as
    /// it is at that instant, and its shape), then lets it run on. New sandboxes can start from
    /// the saved state with [`Runtime::create_from_saved`].
    pub async fn save_to(&self, dir: &Path) -> Result<(), RuntimeError> {
        crate::private::private_subdir(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut qmp = self.vm_qmp().await?;
        let saved = async {
            // `save` stops the VM (which flushes its disk) before streaming the state.
            ember_vmm::snapshot::save(&mut qmp, &dir.join("state")).await?;
            tokio::fs::copy(self.dir().join(crate::sandbox::DISK), dir.join("disk.qcow2"))
                .await
                .map_err(io_err("copy the disk"))?;
            self.shape().store(dir)
        }
        .await;
        // Whatever happened, the source sandbox runs on.
        let resumed = qmp.execute("cont", None).await;
        saved?;
        resumed.map_err(ember_vmm::VmmError::from)?;
        crate::private::seal_snapshot(dir)
    }

    /// Pauses the sandbox: saves its device state and RAM next to its disk, then stops its VM
    /// and frees its namespace. [`Runtime::resume`] brings it back. If the state cannot be
    /// saved, the sandbox runs on and is handed back with the error.
    pub async fn pause(self) -> Result<(), (Sandbox, RuntimeError)> {
        let dir = self.dir().to_path_buf();
        let result = async {
            let mut qmp = self.vm_qmp().await?;
            ember_vmm::snapshot::save(&mut qmp, &dir.join(PAUSE_STATE_PARTIAL)).await?;
            // Complete: a daemon that dies from here on finds the sandbox paused.
            std::fs::rename(dir.join(PAUSE_STATE_PARTIAL), dir.join(PAUSE_STATE))
                .map_err(io_err("keep pause.state"))?;
            Ok::<_, RuntimeError>(())
        }
        .await;
        if let Err(e) = result {
            // Leave a running sandbox running if it could not be saved.
            if let Ok(mut qmp) = self.vm_qmp().await {
                let _ = qmp.execute("cont", None).await;
            }
            let _ = std::fs::remove_file(dir.join(PAUSE_STATE_PARTIAL));
            let _ = std::fs::remove_file(dir.join(PAUSE_STATE));
            return Err((self, e));
        }
        let id = self.id().to_string();
        self.stop_keeping_files()
            .await
            .map_err(|e| {
                tracing::warn!(sandbox = %id, error = %e, "freeing a paused sandbox's namespace");
            })
            .ok();
        Ok(())
    }
}

/// A filesystem-only pause's marker in the sandbox's directory: only its disk was kept.
pub(crate) const PAUSE_DISK: &str = "pause.disk";
/// How long the guest may take to write its dirty pages before a filesystem-only pause.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What a pause keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Memory, device state and disk: a resume continues where it stopped.
    Full,
    /// The disk alone: a resume boots from it (processes and memory are gone).
    Filesystem,
}

impl PauseMode {
    /// E2B's name (`pauseMode`).
    pub fn as_str(self) -> &'static str {
        match self {
            PauseMode::Full => "full",
            PauseMode::Filesystem => "filesystem",
        }
    }
}

impl Sandbox {
    /// Pauses the sandbox keeping only its filesystem: the guest writes its dirty pages
    /// (`sync`, as root), the VM stops (QEMU flushes the disk), the marker is written and the VM
    /// and namespace go; the disk stays. [`Runtime::resume`] boots from it. `token` is the one
    /// its agent holds now. If any step fails the sandbox runs on and is handed back with the
    /// error.
    pub async fn pause_filesystem(self, token: Option<String>) -> Result<(), (Sandbox, RuntimeError)> {
        let dir = self.dir().to_path_buf();
        let agent = self.agent().clone().with_token(token);
        let result = async {
            tokio::time::timeout(SYNC_TIMEOUT, run_to_end(&agent, "/bin/sync", &[], Some("root")))
                .await
                .map_err(|_| crate::AgentError::Timeout("sync before a filesystem-only pause".into()))??;
            let mut qmp = self.vm_qmp().await?;
            qmp.execute("stop", None).await.map_err(ember_vmm::VmmError::from)?;
            std::fs::write(dir.join(PAUSE_DISK), b"").map_err(io_err("write pause.disk"))?;
            Ok::<_, RuntimeError>(())
        }
        .await;
        if let Err(e) = result {
            if let Ok(mut qmp) = self.vm_qmp().await {
                let _ = qmp.execute("cont", None).await;
            }
            let _ = std::fs::remove_file(dir.join(PAUSE_DISK));
            return Err((self, e));
        }
        let id = self.id().to_string();
        if let Err(e) = self.stop_keeping_files().await {
            tracing::warn!(sandbox = %id, error = %e, "freeing a paused sandbox's namespace");
        }
        Ok(())
    }
}

/// How long a template's services may take to be ready after the agent is (the code
/// interpreter's kernels start in tens of seconds under TCG).
const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits until the template's service answers 200 on `path`, or fails after
/// [`SERVICE_READY_TIMEOUT`] or when the VM dies.
async fn wait_service(service: &AgentClient, path: &str, vm: &mut Vm, dir: &Path) -> Result<(), RuntimeError> {
    let started = std::time::Instant::now();
    let fail = |why: String| RuntimeError::ServiceNotReady {
        path: path.into(),
        secs: SERVICE_READY_TIMEOUT.as_secs(),
        why,
        serial: crate::sandbox::serial_tail(dir),
    };
    loop {
        let answer = service.answers_ok(path, Duration::from_secs(2)).await;
        if let Ok(true) = answer {
            eprintln!("==> template service ready in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if let Some(status) = vm.try_exit() {
            return Err(fail(format!("QEMU exited: {status}")));
        }
        if started.elapsed() > SERVICE_READY_TIMEOUT {
            return Err(fail(match answer {
                Ok(_) => "it answered, but not 200".into(),
                Err(e) => e.to_string(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn warm_up(agent: &AgentClient) -> Result<(), RuntimeError> {
    run_to_end(agent, "/bin/bash", &["-l", "-c", "true"], None).await
}

/// Runs `cmd` with `args` in the guest as `user` (the agent's default if `None`) to its end.
async fn run_to_end(agent: &AgentClient, cmd: &str, args: &[&str], user: Option<&str>) -> Result<(), RuntimeError> {
    let request = StartRequest {
        process: ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut events = agent.start(&request, user).await?;
    let mut ended = false;
    while let Some(event) = events.next().await? {
        ended |= matches!(event, ProcessEvent::End(_));
    }
    match ended {
        true => Ok(()),
        false => Err(crate::AgentError::Truncated.into()),
    }
}
