//! The sandboxes the daemon runs: creating them (template, limits, `/init` with their identity),
//! finding them for a team, ending them on time-out or request, noticing when their VM dies,
//! and, at start, adopting the ones an earlier daemon left running (or cleaning them up).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ember_api::NewSandbox;
use ember_runtime::{AgentClient, Runtime, RuntimeConfig, Sandbox, SandboxSpec};
use ember_store::{now_ms, SandboxRecord, Store};
use tracing::Instrument;

use crate::error::ApiError;
use crate::ServeConfig;

/// The template whose sandboxes the pool holds.
const POOL_TEMPLATE: &str = "base";
/// Template names clients may use, and the template each stands for.
const TEMPLATES: &[(&str, &str)] = &[("base", "base"), ("code-interpreter-v1", "base")];
/// Bounds on client-supplied maps.
const MAX_ENTRIES: usize = 100;
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 8192;

/// One running sandbox.
pub struct Live {
    pub record: Mutex<SandboxRecord>,
    pub agent: AgentClient,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    pub dir: PathBuf,
}

impl Live {
    pub fn record(&self) -> SandboxRecord {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A client for guest port `port` of this sandbox.
    pub fn port(&self, port: u16) -> AgentClient {
        self.agent.with_port(port)
    }
}

pub struct Manager {
    config: ServeConfig,
    runtime: Runtime,
    store: Store,
    live: RwLock<HashMap<String, Arc<Live>>>,
    creating: Mutex<usize>,
    /// Sandboxes already restored from the default template, waiting unassigned for a create.
    pool: tokio::sync::Mutex<std::collections::VecDeque<Sandbox>>,
    refill: tokio::sync::Notify,
}

impl Manager {
    /// Opens the store, adopts or cleans up what an earlier daemon left, and starts the reaper.
    pub async fn start(config: ServeConfig, runtime_config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create {}", config.data_dir.display()))?;
        let store = Store::open(&config.data_dir.join("ember.db")).context("open the state database")?;
        let runtime = Runtime::new(runtime_config).context("start the sandbox runtime")?;
        let manager = Arc::new(Self {
            config,
            runtime,
            store,
            live: RwLock::default(),
            creating: Mutex::new(0),
            pool: Default::default(),
            refill: Default::default(),
        });
        manager.adopt_all().await;
        tokio::spawn(Arc::clone(&manager).reap());
        tokio::spawn(Arc::clone(&manager).keep_pool_filled());
        Ok(manager)
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    async fn adopt_all(&self) {
        let records = match self.store.sandboxes() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading sandbox records; none adopted");
                Vec::new()
            }
        };
        let mut kept = HashSet::new();
        for record in records {
            let id = record.id.clone();
            if record.state == PAUSED && self.runtime.is_paused(&id) {
                tracing::info!(sandbox = %id, "kept paused sandbox");
                kept.insert(id.clone());
                self.insert(record, None);
                continue;
            }
            match Sandbox::adopt(&self.runtime, &id).await {
                Ok(sandbox) => {
                    tracing::info!(sandbox = %id, "adopted sandbox left running by an earlier daemon");
                    kept.insert(id.clone());
                    self.insert(record, Some(sandbox));
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "sandbox from an earlier daemon is gone; removing it");
                    let _ = self.store.delete_sandbox(&id);
                }
            }
        }
        self.runtime.clean_orphans(&kept);
    }

    fn insert(&self, record: SandboxRecord, sandbox: Option<Sandbox>) -> Arc<Live> {
        let live = Arc::new(Live {
            agent: self.runtime.agent_for(&record.id),
            dir: self.runtime.sandbox_dir(&record.id),
            record: Mutex::new(record.clone()),
            sandbox: tokio::sync::Mutex::new(sandbox),
        });
        self.live.write().unwrap_or_else(|e| e.into_inner()).insert(record.id, Arc::clone(&live));
        live
    }

    /// The sandbox `id` if it exists and belongs to `team` (another team's is "not found").
    pub fn get(&self, team: &str, id: &str) -> Result<Arc<Live>, ApiError> {
        self.get_any(id).filter(|l| l.record().team == team).ok_or_else(|| ApiError::sandbox_not_found(id))
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
    pub async fn create(&self, team: &str, req: NewSandbox) -> Result<Arc<Live>, ApiError> {
        let source = self.resolve_template(team, &req.template_id)?;
        let timeout = self.check_timeout(req.timeout.unwrap_or(self.config.default_timeout_secs as i64))?;
        let metadata = check_map("metadata", req.metadata.unwrap_or_default(), false)?;
        let env_vars = check_map("envVars", req.env_vars.unwrap_or_default(), true)?;
        let _slot = self.reserve_slot()?;
        let (spec, pooled) = match &source {
            Source::Template(t) => (self.spec(t), self.take_pooled(t).await),
            Source::Snapshot(..) => (self.spec(POOL_TEMPLATE), None),
        };
        let created = match (pooled, &source) {
            (Some(sandbox), _) => Ok(sandbox),
            (None, Source::Template(_)) => self.runtime.create(&spec).await,
            (None, Source::Snapshot(id, _)) => self.runtime.create_from_saved(&self.snapshot_dir(id)).await,
        };
        let sandbox = created.map_err(|e| {
            tracing::error!(error = %e, "creating a sandbox");
            ApiError::Internal("failed to create the sandbox".into())
        })?;
        let id = sandbox.id().to_string();
        let span = tracing::info_span!("sandbox", id = %id);
        async {
            let token = random_hex(16);
            let started_ms = now_ms();
            let record = SandboxRecord {
                id: id.clone(),
                team: team.into(),
                template: req.template_id.clone(),
                alias: Some(req.template_id.clone()),
                metadata,
                env_vars,
                access_token: Some(token),
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                disk_mib: ember_runtime::disk_size_mib(),
                started_ms,
                end_ms: started_ms + timeout * 1000,
                state: "running".into(),
                allow_internet: req.allow_internet_access.unwrap_or(true),
            };
            let stored = async {
                let held = match &source {
                    Source::Snapshot(_, token) => token.as_deref(),
                    Source::Template(_) => None,
                };
                init_agent(&sandbox.agent().clone(), &record, held).await?;
                self.store.insert_sandbox(&record).map_err(|e| format!("store: {e}"))
            }
            .await;
            match stored {
                Ok(()) => {
                    tracing::info!(team, template = %record.template, "sandbox created");
                    Ok(self.insert(record, Some(sandbox)))
                }
                Err(e) => {
                    tracing::error!(error = %e, "setting up a new sandbox");
                    let _ = sandbox.destroy().await;
                    Err(ApiError::Internal("failed to set up the sandbox".into()))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// A built-in template, or one of the team's snapshots by id or name.
    fn resolve_template(&self, team: &str, name: &str) -> Result<Source, ApiError> {
        if let Some((_, t)) = TEMPLATES.iter().find(|(n, _)| *n == name) {
            return Ok(Source::Template(t));
        }
        match self.store.find_snapshot(team, name) {
            Ok(Some(snapshot)) => Ok(Source::Snapshot(snapshot.id, snapshot.agent_token)),
            Ok(None) => Err(ApiError::BadRequest(format!("unknown template '{name}'"))),
            Err(e) => {
                tracing::error!(error = %e, "looking up a snapshot");
                Err(ApiError::Internal("failed to look the template up".into()))
            }
        }
    }

    /// Where snapshot `id`'s files live.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("snapshots").join(id)
    }

    /// Saves a running sandbox as a snapshot that creates can start from; it runs on.
    pub async fn snapshot(&self, live: &Live, name: Option<String>) -> Result<ember_store::SnapshotRecord, ApiError> {
        let slot = live.sandbox.lock().await;
        let record = live.record();
        let Some(sandbox) = slot.as_ref() else {
            return Err(ApiError::Conflict(format!("sandbox {} is paused; resume it first", record.id)));
        };
        let id = random_hex(10);
        let dir = self.snapshot_dir(&id);
        if let Err(e) = sandbox.save_to(&dir).await {
            tracing::error!(sandbox = %record.id, error = %e, "taking a snapshot");
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::Internal("failed to take the snapshot".into()));
        }
        let snapshot = ember_store::SnapshotRecord {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            team: record.team.clone(),
            sandbox_id: record.id.clone(),
            created_ms: now_ms(),
            agent_token: record.access_token.clone(),
        };
        self.store.insert_snapshot(&snapshot).map_err(|e| {
            tracing::error!(error = %e, "storing a snapshot");
            let _ = std::fs::remove_dir_all(&dir);
            ApiError::Internal("failed to store the snapshot".into())
        })?;
        tracing::info!(sandbox = %record.id, snapshot = %snapshot.id, "snapshot taken");
        Ok(snapshot)
    }

    /// Deletes one of the team's snapshots; false if there is none by that id.
    pub fn delete_snapshot(&self, team: &str, id: &str) -> Result<bool, ApiError> {
        let found = self.store.find_snapshot(team, id).map_err(|e| ApiError::Internal(e.to_string()))?;
        let Some(snapshot) = found.filter(|s| s.id == id) else { return Ok(false) };
        self.store.delete_snapshot(&snapshot.id).map_err(|e| ApiError::Internal(e.to_string()))?;
        let _ = std::fs::remove_dir_all(self.snapshot_dir(&snapshot.id));
        Ok(true)
    }

    fn spec(&self, template: &str) -> SandboxSpec {
        SandboxSpec {
            template: template.into(),
            from_snapshot: self.config.snapshots,
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            die_with_parent: false,
        }
    }

    /// A live sandbox from the pool, if the pool holds one for `template`.
    async fn take_pooled(&self, template: &str) -> Option<Sandbox> {
        if template != POOL_TEMPLATE {
            return None;
        }
        let mut pool = self.pool.lock().await;
        while let Some(mut sandbox) = pool.pop_front() {
            self.refill.notify_one();
            if sandbox.is_alive() {
                return Some(sandbox);
            }
            let _ = sandbox.destroy().await;
        }
        None
    }

    /// Keeps `--pool` sandboxes restored ahead of time, within `--max-sandboxes`.
    async fn keep_pool_filled(self: Arc<Self>) {
        loop {
            let pooled = self.pool.lock().await.len();
            let busy = self.live.read().unwrap_or_else(|e| e.into_inner()).len()
                + *self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if pooled < self.config.pool_size && pooled + busy < self.config.max_sandboxes {
                match self.runtime.create(&self.spec(POOL_TEMPLATE)).await {
                    Ok(sandbox) => self.pool.lock().await.push_back(sandbox),
                    Err(e) => {
                        tracing::error!(error = %e, "filling the sandbox pool");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.refill.notified()).await;
        }
    }

    fn reserve_slot(&self) -> Result<SlotGuard<'_>, ApiError> {
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let running = self.live.read().unwrap_or_else(|e| e.into_inner()).len();
        if running + *creating >= self.config.max_sandboxes {
            return Err(ApiError::TooMany(format!("at most {} sandboxes may run at once", self.config.max_sandboxes)));
        }
        *creating += 1;
        Ok(SlotGuard(&self.creating))
    }

    /// Checks a time-out in seconds against the configured bounds.
    pub fn check_timeout(&self, secs: i64) -> Result<i64, ApiError> {
        let max = self.config.max_timeout_secs as i64;
        if secs < 1 || secs > max {
            return Err(ApiError::BadRequest(format!("timeout must be between 1 and {max} seconds, got {secs}")));
        }
        Ok(secs)
    }

    /// Sets when the sandbox ends; `extend_only` never brings the end closer.
    pub fn set_end(&self, live: &Live, end_ms: i64, extend_only: bool) -> Result<(), ApiError> {
        let mut record = live.record.lock().unwrap_or_else(|e| e.into_inner());
        if extend_only && end_ms <= record.end_ms {
            return Ok(());
        }
        record.end_ms = end_ms;
        self.store.set_sandbox_end(&record.id, end_ms).map_err(|e| {
            tracing::error!(sandbox = %record.id, error = %e, "storing a new end time");
            ApiError::Internal("failed to store the time-out".into())
        })
    }

    /// Ends a sandbox: VM, namespace and files, then its record.
    pub async fn kill(&self, live: &Live, why: &str) {
        let id = live.record().id;
        let removed = self.live.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if removed.is_none() {
            return;
        }
        match live.sandbox.lock().await.take() {
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
    }

    /// Ends sandboxes whose time is up, and forgets those whose VM died.
    async fn reap(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = now_ms();
            for live in self.all() {
                let (paused, end_ms) = {
                    let record = live.record.lock().unwrap_or_else(|e| e.into_inner());
                    (record.state == PAUSED, record.end_ms)
                };
                if paused {
                    continue;
                }
                if end_ms <= now {
                    self.kill(&live, "timed out").await;
                    continue;
                }
                let dead = match live.sandbox.try_lock() {
                    Ok(mut guard) => guard.as_mut().is_some_and(|s| !s.is_alive()),
                    Err(_) => false,
                };
                if dead {
                    self.kill(&live, "its VM exited").await;
                }
            }
        }
    }

    /// Pauses a running sandbox (409 if it is paused already).
    pub async fn pause(&self, live: &Live) -> Result<(), ApiError> {
        let mut slot = live.sandbox.lock().await;
        let id = live.record().id;
        let Some(sandbox) = slot.take() else {
            return Err(ApiError::Conflict(format!("sandbox {id} is already paused")));
        };
        let started = std::time::Instant::now();
        if let Err((sandbox, e)) = sandbox.pause().await {
            tracing::error!(sandbox = %id, error = %e, "pausing");
            *slot = Some(sandbox);
            return Err(ApiError::Internal("failed to pause the sandbox".into()));
        }
        self.set_state(live, PAUSED)?;
        tracing::info!(sandbox = %id, ms = started.elapsed().as_millis() as u64, "sandbox paused");
        Ok(())
    }

    /// Resumes a paused sandbox with a new time-out; false if it was running already.
    pub async fn resume(&self, live: &Live, timeout_secs: i64) -> Result<bool, ApiError> {
        let mut slot = live.sandbox.lock().await;
        if slot.is_some() {
            return Ok(false);
        }
        let record = live.record();
        let started = std::time::Instant::now();
        let sandbox = self.runtime.resume(&record.id, false).await.map_err(|e| {
            tracing::error!(sandbox = %record.id, error = %e, "resuming");
            ApiError::Internal("failed to resume the sandbox".into())
        })?;
        if let Err(e) = init_agent(sandbox.agent(), &record, record.access_token.as_deref()).await {
            tracing::error!(sandbox = %record.id, error = %e, "re-initialising a resumed sandbox");
        }
        *slot = Some(sandbox);
        self.set_state(live, RUNNING)?;
        self.set_end(live, now_ms() + timeout_secs * 1000, false)?;
        tracing::info!(sandbox = %record.id, ms = started.elapsed().as_millis() as u64, "sandbox resumed");
        Ok(true)
    }

    fn set_state(&self, live: &Live, state: &str) -> Result<(), ApiError> {
        let mut record = live.record.lock().unwrap_or_else(|e| e.into_inner());
        record.state = state.into();
        self.store.set_sandbox_state(&record.id, state).map_err(|e| {
            tracing::error!(sandbox = %record.id, error = %e, "storing a sandbox state");
            ApiError::Internal("failed to store the sandbox state".into())
        })
    }

    /// At shutdown: destroys every sandbox, or leaves them running to be adopted by the next
    /// daemon.
    pub async fn shutdown(&self, destroy: bool) {
        for sandbox in self.pool.lock().await.drain(..) {
            let _ = sandbox.destroy().await;
        }
        self.runtime.release_slots();
        for live in self.all() {
            if destroy {
                self.kill(&live, "daemon stopped").await;
            } else if let Some(sandbox) = live.sandbox.lock().await.take() {
                sandbox.detach();
            }
        }
    }
}

struct SlotGuard<'a>(&'a Mutex<usize>);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// What a create starts from.
enum Source {
    Template(&'static str),
    /// A snapshot's id, and the access token its saved agent holds.
    Snapshot(String, Option<String>),
}

pub const RUNNING: &str = "running";
pub const PAUSED: &str = "paused";

/// Gives the agent the sandbox's identity: env vars, access token, default user, the host's
/// time (a restored guest's clock is the template's) and fresh entropy (a restored guest's
/// random state is the template's). `token` is the one the agent holds now, if any.
async fn init_agent(agent: &AgentClient, record: &SandboxRecord, token: Option<&str>) -> Result<(), String> {
    let body = serde_json::json!({
        "envVars": record.env_vars,
        "accessToken": record.access_token,
        "defaultUser": "user",
        "timestamp": ember_envd_proto::time::rfc3339(std::time::SystemTime::now()),
        "entropy": random_hex(32),
        "hostname": record.id,
    });
    agent.post_json("/init", &body, token).await.map_err(|e| format!("initialise the agent: {e}"))
}

pub fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// Bounds a client-supplied map; env var names must be usable as names.
fn check_map(what: &str, map: BTreeMap<String, String>, env: bool) -> Result<BTreeMap<String, String>, ApiError> {
    if map.len() > MAX_ENTRIES {
        return Err(ApiError::BadRequest(format!("{what} has {} entries; at most {MAX_ENTRIES}", map.len())));
    }
    for (k, v) in &map {
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE {
            return Err(ApiError::BadRequest(format!(
                "{what}: keys must be 1-{MAX_KEY} bytes and values at most {MAX_VALUE} bytes"
            )));
        }
        if env && (k.contains('=') || k.contains('\0') || v.contains('\0')) {
            return Err(ApiError::BadRequest(format!("{what}: '{k}' is not a valid environment variable")));
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
