//! The sandboxes the daemon runs: creating them (template, limits, `/init` with their identity),
//! finding them for a team and ending them on request. The rest is split by concern: the pool of
//! sandboxes restored ahead of time ([`pool`]), time-outs and dead VMs ([`reaper`]), what an
//! earlier daemon left ([`adopt`]), pause and resume ([`pause`]), snapshots ([`snapshots`]) and
//! team quotas ([`usage`]; usage itself is metered by the store as records change).
//!
//! A kill always wins: it takes the sandbox out of the table at once and signals every
//! operation in flight on it (pause, resume, snapshot), which stops waiting on the guest and
//! lets go. Operations that change a sandbox run on tasks of their own, so a client that goes
//! away mid-way cannot leave the database and the processes disagreeing.

mod adopt;
mod builds;
mod error;
mod fork;
mod network;
pub mod observe;
mod pause;
mod pool;
mod reaper;
mod snapshots;
mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use ember_api::NewSandbox;
use ember_envd_proto::init::InitRequest;
use ember_runtime::{AgentClient, Runtime, RuntimeConfig, Sandbox, SandboxSpec};
use ember_store::{now_ms, SandboxRecord, SandboxState, Store};
use tokio::sync::watch;
use tracing::Instrument;

pub use builds::{split_name, Upload, MAX_UPLOAD_BYTES};
pub use error::LifecycleError;
pub use snapshots::snapshot_name;

use crate::network::Checked;
use crate::ServeConfig;

/// The template sandboxes made from a client's snapshot are sized like.
const DEFAULT_TEMPLATE: &str = "base";
/// The code-interpreter template (E2B's `code-interpreter-v1`).
const INTERPRETER_TEMPLATE: &str = "code-interpreter";
/// Bounds on client-supplied maps.
const MAX_ENTRIES: usize = 100;
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 8192;

/// One sandbox the daemon knows. Its state has one source: whether `vm` holds a VM (running)
/// or not (paused). The record's `state` mirrors it for readers that cannot wait for the lock,
/// and both change only in [`Manager::transition`], under that lock, after the database.
pub struct Live {
    pub record: Mutex<SandboxRecord>,
    pub agent: AgentClient,
    vm: tokio::sync::Mutex<Option<Sandbox>>,
    pub dir: PathBuf,
    /// Set once when the sandbox is being ended; operations in flight give up.
    ended: watch::Sender<bool>,
    /// Counts the times its VM went away (a pause or the end): proxied streams end then.
    vm_gone: watch::Sender<u64>,
    /// Its time-out is being acted on (a pause in flight): the reaper does not act twice.
    timing_out: std::sync::atomic::AtomicBool,
    /// Its metrics over time and its lifecycle events.
    pub observed: observe::Observed,
}

impl Live {
    pub fn record(&self) -> SandboxRecord {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn id(&self) -> String {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).id.clone()
    }

    pub fn is_paused(&self) -> bool {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).state == SandboxState::Paused
    }

    /// A client for guest port `port` of this sandbox.
    pub fn port(&self, port: u16) -> AgentClient {
        self.agent.with_port(port)
    }

    /// Resolves when the VM that runs now goes away (paused or ended), so that a stream from it
    /// ends instead of hanging on a guest that will never answer.
    pub fn until_vm_gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.vm_gone.subscribe();
        let generation = *rx.borrow_and_update();
        let ended = *self.ended.borrow();
        async move {
            if ended {
                return;
            }
            let _ = rx.wait_for(|n| *n != generation).await;
        }
    }

    /// Resolves once the sandbox is being ended.
    async fn killed(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Runs `op` unless the sandbox is ended first.
    async fn unless_killed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, LifecycleError>>,
    ) -> Result<T, LifecycleError> {
        tokio::select! {
            result = op => result,
            _ = self.killed() => Err(LifecycleError::Ended(self.id())),
        }
    }
}

pub struct Manager {
    config: ServeConfig,
    runtime: Runtime,
    store: Store,
    live: RwLock<HashMap<String, Arc<Live>>>,
    /// Creates and resumes in flight, in all and per team (limits and quotas count them).
    in_flight: Mutex<usage::InFlight>,
    /// Sandboxes already restored from each pooled template, waiting unassigned for a create.
    pool: tokio::sync::Mutex<HashMap<&'static str, std::collections::VecDeque<Sandbox>>>,
    refill: tokio::sync::Notify,
    /// Set at shutdown: the pool's fillers stop, and one that finishes a create destroys it.
    stopping: std::sync::atomic::AtomicBool,
    /// Pool creates in flight (shutdown waits for them, so none leaves a sandbox behind).
    filling: std::sync::atomic::AtomicUsize,
    builds: builds::Builds,
    /// Saved states in the snapshots directory in use by an operation (a fork until its copies
    /// are made, a create from a snapshot until its disk is backed by it), with a count each;
    /// the sweep leaves them. Its lock is held by every sweep and every publication of a
    /// snapshot, so a sweep never sees one half made.
    saved_states: Mutex<HashMap<PathBuf, usize>>,
}

impl Manager {
    /// Opens the store, adopts or cleans up what an earlier daemon left, and starts the reaper.
    pub async fn start(config: ServeConfig, runtime_config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create {}", config.data_dir.display()))?;
        let store = Store::open(&config.data_dir.join("ember.db")).context("open the state database")?;
        let runtime = Runtime::new(runtime_config).context("start the sandbox runtime")?;
        let manager = Self::new(config, store, runtime);
        manager.fail_unfinished_builds();
        manager.adopt_all().await;
        tokio::spawn(Arc::clone(&manager).reap());
        tokio::spawn(Arc::clone(&manager).keep_heartbeat());
        tokio::spawn(Arc::clone(&manager).sample_metrics());
        for (template, _) in manager.pool_sizes() {
            tokio::spawn(Arc::clone(&manager).keep_pool_filled(template));
        }
        Ok(manager)
    }

    /// A manager over `store` and `runtime` that adopts nothing and starts no background work
    /// (no reaper, no pool). [`Manager::start`] is this plus adoption and the background tasks;
    /// tests of the HTTP layer use it alone, with a runtime that cannot run guests
    /// (`Runtime::unchecked`).
    pub fn new(config: ServeConfig, store: Store, runtime: Runtime) -> Arc<Self> {
        Arc::new(Self {
            config,
            runtime,
            store,
            live: RwLock::default(),
            in_flight: Mutex::default(),
            pool: Default::default(),
            refill: Default::default(),
            stopping: Default::default(),
            filling: Default::default(),
            builds: builds::Builds::new(),
            saved_states: Mutex::default(),
        })
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// The domain of exposed ports (`{port}-{id}.{domain}`).
    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The extra CA certificates every sandbox is given at `/init`.
    fn ca_bundle(&self) -> Option<String> {
        self.runtime.config().network.ca_bundle.clone()
    }

    /// Adds a sandbox to the table; its state is what `sandbox` says (a VM: running).
    fn insert(&self, record: SandboxRecord, sandbox: Option<Sandbox>) -> Arc<Live> {
        let state = if sandbox.is_some() { SandboxState::Running } else { SandboxState::Paused };
        let record = SandboxRecord { state, ..record };
        let live = Arc::new(Live {
            agent: self.runtime.agent_for(&record.id),
            dir: self.runtime.sandbox_dir(&record.id),
            record: Mutex::new(record.clone()),
            vm: tokio::sync::Mutex::new(sandbox),
            ended: watch::channel(false).0,
            vm_gone: watch::channel(0).0,
            timing_out: Default::default(),
            observed: Default::default(),
        });
        self.live.write().unwrap_or_else(|e| e.into_inner()).insert(record.id, Arc::clone(&live));
        live
    }

    /// The sandbox `id` if it exists and belongs to `team` (another team's is "not found").
    pub fn get(&self, team: &str, id: &str) -> Result<Arc<Live>, LifecycleError> {
        self.get_any(id).filter(|l| l.record().team == team).ok_or_else(|| LifecycleError::NotFound(id.into()))
    }

    /// The sandbox `id`, whoever owns it (the proxy: envd traffic carries no API key).
    pub fn get_any(&self, id: &str) -> Option<Arc<Live>> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Every live sandbox.
    pub fn all(&self) -> Vec<Arc<Live>> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Records of the team's sandboxes, oldest first.
    pub fn list(&self, team: &str) -> Vec<SandboxRecord> {
        let mut v: Vec<SandboxRecord> = self.all().iter().map(|l| l.record()).filter(|r| r.team == team).collect();
        v.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        v
    }

    /// Validates a create request and creates the sandbox; it is usable when this returns.
    /// The work runs on a task of its own: a client that goes away does not cut it short.
    /// `net` is the request's network settings, checked.
    pub async fn create(
        self: &Arc<Self>,
        team: &str,
        req: NewSandbox,
        net: Checked,
    ) -> Result<Arc<Live>, LifecycleError> {
        let this = Arc::clone(self);
        let team = team.to_string();
        let started = std::time::Instant::now();
        let created = tokio::spawn(async move { this.create_now(&team, req, net).await })
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?;
        let t = &crate::prom::TELEMETRY;
        match &created {
            Ok(_) => {
                t.creates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                t.create_seconds.observe(started.elapsed());
            }
            Err(_) => {
                t.create_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        created
    }

    async fn create_now(&self, team: &str, req: NewSandbox, net: Checked) -> Result<Arc<Live>, LifecycleError> {
        let source = self.resolve_template(team, &req.template_id)?;
        self.create_from(team, req, net, source).await
    }

    /// Creates a sandbox from `source`, as `req` and `net` ask.
    async fn create_from(
        &self,
        team: &str,
        req: NewSandbox,
        net: Checked,
        source: Source,
    ) -> Result<Arc<Live>, LifecycleError> {
        let begun = std::time::Instant::now();
        let timeout = self.check_timeout(req.timeout.unwrap_or(self.default_timeout()))?;
        let lifecycle = lifecycle(&req, timeout)?;
        let metadata = check_map("metadata", req.metadata.unwrap_or_default(), false)?;
        let mut env_vars = check_map("envVars", req.env_vars.unwrap_or_default(), true)?;
        let defaults = match &source {
            Source::Built { defaults, .. } => defaults.clone(),
            _ => ember_builder::Defaults::base(),
        };
        // A fork's agent keeps the defaults its source was given.
        let init_defaults = (!matches!(source, Source::Fork { .. })).then_some(&defaults);
        // The template's env vars, under the request's.
        for (k, v) in &defaults.env {
            env_vars.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let shape = self.expected_shape(&source);
        if shape.0 > self.config.max_vcpus || shape.1 > self.config.max_memory_mib {
            // A template made before the operator lowered the maxima.
            return Err(LifecycleError::Invalid(format!(
                "template {} has {} vCPUs and {} MiB, more than this daemon allows ({} vCPUs, {} MiB: --max-cpus, \
                 --max-memory-mb); rebuild it smaller",
                req.template_id, shape.0, shape.1, self.config.max_vcpus, self.config.max_memory_mib
            )));
        }
        let _slot = self.reserve_for(team, shape)?;
        let (spec, pooled) = match &source {
            Source::Template(t) => (self.spec(t, &net), self.take_pooled(t).await),
            Source::Snapshot(..) | Source::Built { .. } | Source::Fork { .. } => {
                (self.spec(DEFAULT_TEMPLATE, &net), None)
            }
        };
        let was_pooled = pooled.is_some();
        let sandbox = match (pooled, &source) {
            (Some(sandbox), _) => self.with_policy(sandbox, &net).await?,
            (None, Source::Template(_)) => self.runtime.create(&spec).await?,
            (None, Source::Snapshot(id, _)) => {
                let _pin = self.pin_saved_state(self.snapshot_dir(id));
                self.runtime.create_from_saved(&self.snapshot_dir(id), net.policy.clone()).await?
            }
            (None, Source::Built { dir, .. } | Source::Fork { dir, .. }) => {
                self.runtime.create_from_saved(dir, net.policy.clone()).await?
            }
        };
        let vm_ms = begun.elapsed().as_millis();
        let (vcpus, memory_mib) = (sandbox.shape().vcpus, sandbox.shape().memory_mib);
        let id = sandbox.id().to_string();
        let span = tracing::info_span!("sandbox", id = %id);
        async {
            let started_ms = now_ms();
            let record = SandboxRecord {
                id: id.clone(),
                team: team.into(),
                template: req.template_id.clone(),
                alias: Some(req.template_id.clone()),
                metadata,
                env_vars,
                access_token: Some(random_hex(16)),
                vcpus,
                memory_mib,
                disk_mib: source.free_mib(),
                started_ms,
                end_ms: started_ms + timeout * 1000,
                state: SandboxState::Running,
                allow_internet: net.allow_internet,
                network: serde_json::to_string(&net.config).unwrap_or_else(|_| "{}".into()),
                traffic_token: net.private_traffic().then(|| random_hex(16)),
                lifecycle,
            };
            let held = match &source {
                Source::Snapshot(_, token) | Source::Built { token, .. } | Source::Fork { token, .. } => token.clone(),
                Source::Template(_) => sandbox.agent().token().map(str::to_string),
            };
            let init_started = std::time::Instant::now();
            let stored = async {
                init_agent(sandbox.agent(), &record, init_defaults, held.as_deref(), self.ca_bundle()).await?;
                let init_ms = init_started.elapsed().as_millis();
                self.store.insert_sandbox(&record)?;
                Ok::<_, LifecycleError>(init_ms)
            }
            .await;
            match stored {
                Ok(init_ms) => {
                    // Where the create's time went: the VM (pooled or started), `/init`, the
                    // record.
                    let ms = begun.elapsed().as_millis();
                    tracing::info!(team, template = %record.template, ms, vm_ms, init_ms, pooled = was_pooled, "sandbox created");
                    let what = match &source {
                        Source::Fork { .. } => format!("sandbox created as a fork (template {})", record.template),
                        _ => format!("sandbox created from template {}", record.template),
                    };
                    let live = self.insert(record, Some(sandbox));
                    live.observed.event("info", what);
                    Ok(live)
                }
                Err(e) => {
                    if let Err(e) = sandbox.destroy().await {
                        tracing::warn!(error = %e, "tearing down a sandbox that failed to start");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// A built-in template, one of the team's built templates (`name`, `name:tag` or its id),
    /// or one of the team's snapshots by id or name.
    fn resolve_template(&self, team: &str, name: &str) -> Result<Source, LifecycleError> {
        if let Some(t) = ember_image::template::canonical(name) {
            return Ok(Source::Template(t));
        }
        let (base, tag) = split_name(name);
        if let Some(template) = self.store.find_template(team, base)? {
            let build = self
                .store
                .ready_build(&template.id, tag)?
                .ok_or_else(|| LifecycleError::UnknownTemplate(format!("{name} (no ready build tagged {tag})")))?;
            let defaults = serde_json::from_str(build.defaults.as_deref().unwrap_or("{}"))
                .map_err(|e| LifecycleError::Invalid(format!("template {name}: {e}")))?;
            let free_mib = build.free_mib.map_or(ember_runtime::disk_size_mib(), u64::from);
            return Ok(Source::Built {
                dir: self.template_dir(&build.id),
                token: build.agent_token,
                defaults,
                free_mib,
            });
        }
        match self.find_snapshot(team, name)? {
            Some(snapshot) => Ok(Source::Snapshot(snapshot.id, snapshot.agent_token)),
            None => Err(LifecycleError::UnknownTemplate(name.into())),
        }
    }

    fn spec(&self, template: &str, net: &Checked) -> SandboxSpec {
        SandboxSpec {
            template: template.into(),
            from_snapshot: self.config.snapshots,
            vcpus: self.builtin_size(template).vcpus,
            memory_mib: self.builtin_size(template).memory_mib,
            die_with_parent: false,
            policy: net.policy.clone(),
        }
    }

    /// The size of built-in template `template`'s sandboxes: its own, or the operator's, within
    /// the operator's maxima.
    fn builtin_size(&self, template: &str) -> ember_image::template::Size {
        let own = ember_image::template::default_size(template);
        ember_image::template::Size {
            vcpus: self.config.vcpus.unwrap_or(own.vcpus).min(self.config.max_vcpus),
            memory_mib: self.config.memory_mib.unwrap_or(own.memory_mib).min(self.config.max_memory_mib),
        }
    }

    /// How many sandboxes have a VM now (paused ones have none), plus creates in flight.
    fn running(&self) -> usize {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.values().filter(|l| !l.is_paused()).count()
    }

    /// The shape (vCPUs, MiB) a create from `source` will have: the saved state's, or the
    /// daemon's for a template.
    fn expected_shape(&self, source: &Source) -> (u32, u32) {
        let saved = match source {
            Source::Template(t) => {
                let size = self.builtin_size(t);
                return (size.vcpus, size.memory_mib);
            }
            Source::Snapshot(id, _) => ember_runtime::snapshot::Shape::load(&self.snapshot_dir(id)),
            Source::Built { dir, .. } | Source::Fork { dir, .. } => ember_runtime::snapshot::Shape::load(dir),
        };
        let size = self.builtin_size(DEFAULT_TEMPLATE);
        saved.map_or((size.vcpus, size.memory_mib), |s| (s.vcpus, s.memory_mib))
    }

    /// The time-out of a sandbox whose create or connect names none, in seconds.
    pub fn default_timeout(&self) -> i64 {
        i64::try_from(self.config.default_timeout_secs).unwrap_or(i64::MAX)
    }

    /// Checks a time-out in seconds against the configured bounds (1 s up to the maximum).
    pub fn check_timeout(&self, secs: i64) -> Result<i64, LifecycleError> {
        let max = i64::try_from(self.config.max_timeout_secs).unwrap_or(i64::MAX);
        if secs < 1 || secs > max {
            return Err(LifecycleError::Invalid(format!("timeout must be between 1 and {max} seconds, got {secs}")));
        }
        Ok(secs)
    }

    /// Sets when the sandbox ends; `extend_only` never brings the end closer.
    pub fn set_end(&self, live: &Live, end_ms: i64, extend_only: bool) -> Result<(), LifecycleError> {
        let mut record = live.record.lock().unwrap_or_else(|e| e.into_inner());
        if extend_only && end_ms <= record.end_ms {
            return Ok(());
        }
        self.store.set_sandbox_end(&record.id, end_ms)?;
        record.end_ms = end_ms;
        Ok(())
    }

    /// Ends a sandbox: out of the table at once, operations in flight on it told to give up,
    /// then VM, namespace and files, then its record. Never waits on the guest.
    pub async fn kill(&self, live: &Live, why: &str) {
        let id = live.id();
        let removed = self.live.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if removed.is_none() {
            return;
        }
        // Metered up to now, whatever the teardown takes (or if the daemon dies during it).
        if let Err(e) = self.store.end_usage(&id, now_ms()) {
            tracing::error!(sandbox = %id, error = %e, "recording the end of a sandbox's usage");
        }
        live.ended.send_replace(true);
        live.vm_gone.send_modify(|n| *n += 1);
        match live.vm.lock().await.take() {
            Some(sandbox) => {
                if let Err(e) = sandbox.destroy().await {
                    tracing::warn!(sandbox = %id, error = %e, "tearing a sandbox down");
                }
            }
            None => {
                if let Err(e) = self.runtime.remove_paused(&id) {
                    tracing::warn!(sandbox = %id, error = %e, "removing a paused sandbox");
                }
            }
        }
        if let Err(e) = self.store.delete_sandbox(&id) {
            tracing::error!(sandbox = %id, error = %e, "deleting a sandbox record");
        }
        tracing::info!(sandbox = %id, why, "sandbox ended");
        // Its disk may have been the last one backed by a deleted snapshot or a fork's state.
        self.sweep_saved_states();
    }

    /// The one way a sandbox changes state: `slot` (the held lock on its VM) gets `to`, and the
    /// state that follows from it (a VM: running; none: paused) goes to the database first,
    /// then to the record. If the database refuses, nothing changes and a VM in `to` is torn
    /// down (dropped).
    fn transition(&self, live: &Live, slot: &mut Option<Sandbox>, to: Option<Sandbox>) -> Result<(), LifecycleError> {
        let state = if to.is_some() { SandboxState::Running } else { SandboxState::Paused };
        let mut record = live.record.lock().unwrap_or_else(|e| e.into_inner());
        self.store.set_sandbox_state(&record.id, state)?;
        record.state = state;
        if to.is_none() {
            live.vm_gone.send_modify(|n| *n += 1);
        }
        *slot = to;
        Ok(())
    }

    /// At shutdown: destroys every sandbox, or leaves them running to be adopted by the next
    /// daemon. Template builds, pooled sandboxes and network slots made ahead of time always end.
    pub async fn shutdown(&self, destroy: bool) {
        self.stop_builds().await;
        self.stop_pool().await;
        for sandbox in self.pool.lock().await.drain().flat_map(|(_, sandboxes)| sandboxes) {
            let _ = sandbox.destroy().await;
        }
        self.runtime.release_slots();
        let mut left_running = 0;
        for live in self.all() {
            if destroy {
                self.kill(&live, "daemon stopped").await;
            } else if let Some(sandbox) = live.vm.lock().await.take() {
                sandbox.detach();
                left_running += 1;
            }
        }
        // With no VM left for the next daemon to adopt (paused sandboxes hold none), the host's
        // network rules and the runtime's cgroups go as at a destroying stop.
        if destroy || left_running == 0 {
            self.runtime.release_host_network(std::time::Duration::from_secs(10));
            self.runtime.release_cgroups();
        }
    }
}

/// What a create starts from.
enum Source {
    Template(&'static str),
    /// A snapshot's id, and the access token its saved agent holds.
    Snapshot(String, Option<String>),
    /// A built template: its saved sandbox, the token its agent holds, and its sandboxes'
    /// defaults.
    Built {
        dir: PathBuf,
        token: Option<String>,
        defaults: ember_builder::Defaults,
        /// The free disk space its sandboxes start with (MiB).
        free_mib: u64,
    },
    /// A running sandbox saved for a fork: where, the token its agent holds, and its free disk
    /// space as created (MiB).
    Fork {
        dir: PathBuf,
        token: Option<String>,
        free_mib: u64,
    },
}

impl Source {
    /// The free disk space (MiB) a sandbox made from it is said to have (`diskSizeMB`).
    fn free_mib(&self) -> u64 {
        match self {
            Source::Built { free_mib, .. } | Source::Fork { free_mib, .. } => *free_mib,
            Source::Template(_) | Source::Snapshot(..) => ember_runtime::disk_size_mib(),
        }
    }
}

/// Gives the agent the sandbox's identity: env vars, access token, default user, the host's
/// time (a restored guest's clock is the template's) and fresh entropy (a restored guest's
/// random state is the template's). `token` is the one the agent holds now, if any. The call
/// has a deadline (the agent client's).
async fn init_agent(
    agent: &AgentClient,
    record: &SandboxRecord,
    defaults: Option<&ember_builder::Defaults>,
    token: Option<&str>,
    ca_bundle: Option<String>,
) -> Result<(), LifecycleError> {
    let mut env_vars = record.env_vars.clone();
    // E2B's own, which code inside may test for; they win over the client's.
    env_vars.insert("E2B_SANDBOX".into(), "true".into());
    env_vars.insert("E2B_SANDBOX_ID".into(), record.id.clone());
    env_vars.insert("E2B_TEMPLATE_ID".into(), record.template.clone());
    let mut request = init_request(&record.id, env_vars, record.access_token.clone(), ca_bundle);
    if let Some(defaults) = defaults {
        request.default_user = Some(defaults.user.clone());
        request.default_workdir = defaults.workdir.clone();
    }
    agent.post_json("/init", &request, token).await.map_err(|e| ember_runtime::RuntimeError::from(e).into())
}

/// The `/init` body that gives sandbox `id` its identity: `env_vars`, `access_token`, the host's
/// time, fresh entropy, its hostname (the id) and the extra CA
/// certificates it should trust.
fn init_request(
    id: &str,
    env_vars: BTreeMap<String, String>,
    access_token: Option<String>,
    ca_bundle: Option<String>,
) -> InitRequest {
    InitRequest {
        ca_bundle,
        env_vars: Some(env_vars),
        access_token,
        timestamp: Some(ember_envd_proto::time::rfc3339(std::time::SystemTime::now())),
        entropy: Some(random_hex(32)),
        hostname: Some(id.to_string()),
        ..Default::default()
    }
}

/// A duration in whole milliseconds, for logs.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// The lifecycle a create asks for (`autoPause`, `autoPauseMemory`, `autoResume`), checked as
/// the SDK checks it: auto-resume only with a pause that keeps memory (a filesystem-only one
/// boots on resume, which traffic cannot wait for).
fn lifecycle(req: &NewSandbox, timeout_secs: i64) -> Result<ember_store::Lifecycle, LifecycleError> {
    let auto_pause = req.auto_pause.unwrap_or(false);
    let filesystem_only = auto_pause && req.auto_pause_memory == Some(false);
    let auto_resume = req.auto_resume.as_ref().is_some_and(|a| a.enabled);
    if auto_resume && !auto_pause {
        return Err(LifecycleError::Invalid("autoResume needs autoPause (on_timeout \"pause\")".into()));
    }
    if auto_resume && filesystem_only {
        return Err(LifecycleError::Invalid(
            "autoResume cannot go with autoPauseMemory false: a filesystem-only pause is resumed by connect".into(),
        ));
    }
    Ok(ember_store::Lifecycle { auto_pause, filesystem_only, auto_resume, timeout_secs })
}

/// Bounds a client-supplied map; env var names must be usable as names.
fn check_map(what: &str, map: BTreeMap<String, String>, env: bool) -> Result<BTreeMap<String, String>, LifecycleError> {
    if map.len() > MAX_ENTRIES {
        return Err(LifecycleError::Invalid(format!("{what} has {} entries; at most {MAX_ENTRIES}", map.len())));
    }
    for (k, v) in &map {
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE {
            return Err(LifecycleError::Invalid(format!(
                "{what}: keys must be 1-{MAX_KEY} bytes and values at most {MAX_VALUE} bytes"
            )));
        }
        if env && (k.contains('=') || k.contains('\0') || v.contains('\0')) {
            return Err(LifecycleError::Invalid(format!("{what}: '{k}' is not a valid environment variable")));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_maps_are_bounded() {
        let ok: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert!(check_map("envVars", ok, true).is_ok());
        let bad_env: BTreeMap<String, String> = [("A=B".to_string(), "1".to_string())].into();
        assert!(check_map("envVars", bad_env, true).is_err());
        let big: BTreeMap<String, String> = (0..101).map(|i| (i.to_string(), String::new())).collect();
        assert!(check_map("metadata", big, false).is_err());
        let long: BTreeMap<String, String> = [("k".to_string(), "v".repeat(MAX_VALUE + 1))].into();
        assert!(check_map("metadata", long, false).is_err());
    }
}
