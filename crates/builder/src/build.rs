//! One build: restore the last cached layer (or start from the source), run the remaining
//! steps in the build sandbox saving a layer after each, start the start command, retry the
//! ready command until it succeeds, and save the running sandbox as the template.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ember_envd_proto::init::InitRequest;
use ember_runtime::{EgressPolicy, Runtime, Sandbox, SandboxSpec};

use crate::disk;
use crate::guest::{self, Command, Output};
use crate::layers::{self, LayerMeta, Layers};
use crate::log::BuildLog;
use crate::source::{self, Ready};
use crate::spec::{Defaults, Step, StepSpec};

/// The step names E2B gives the parts of a build that are not steps.
pub const BASE_STEP: &str = "base";
pub const FINALIZE_STEP: &str = "finalize";

/// Where a build starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A built-in template (`base`), restored from its snapshot of this shape.
    Builtin { template: String, vcpus: u32, memory_mib: u32 },
    /// A saved sandbox: another template's build. `identity` names it for the layer keys.
    Saved { dir: PathBuf, identity: String, defaults: Defaults, agent_token: Option<String> },
    /// An OCI image (`python:3.12-slim`, `registry:5000/team/app:1`), booted with this shape.
    Image { reference: String, credentials: Option<ember_oci::Credentials>, vcpus: u32, memory_mib: u32 },
}

/// A build, checked.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub start: Start,
    pub steps: Vec<StepSpec>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    /// Skip the cache for every step.
    pub force: bool,
    /// The build sandbox's egress (builds fetch packages).
    pub policy: EgressPolicy,
    /// Free space (MiB) the template's sandboxes must have at least (E2B's `minFreeDiskMb`; 0:
    /// no growth after the steps). See [`crate::disk`].
    pub min_free_mib: u64,
}

/// How builds run.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub layers: Layers,
    /// Uploaded COPY archives, as `HASH` files.
    pub uploads: PathBuf,
    /// How long one step may take.
    pub step_timeout: Duration,
    /// How long the ready command may keep failing (E2B: 10 minutes).
    pub ready_timeout: Duration,
    /// The pause between tries of the ready command (E2B: 2 s).
    pub ready_interval: Duration,
    /// Extra CA certificates for the build sandbox to trust (PEM).
    pub ca_bundle: Option<String>,
}

impl BuildConfig {
    /// E2B's limits: steps of up to an hour, a ready command retried every 2 s for 10 minutes.
    pub fn new(layers: Layers, uploads: PathBuf) -> Self {
        Self {
            layers,
            uploads,
            step_timeout: Duration::from_secs(3600),
            ready_timeout: Duration::from_secs(600),
            ready_interval: Duration::from_secs(2),
            ca_bundle: None,
        }
    }
}

/// What a finished build leaves beside the saved sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The defaults of the sandboxes made from the template.
    pub defaults: Defaults,
    /// The token the saved agent holds (the next `/init` must carry it).
    pub agent_token: Option<String>,
    /// Steps taken from the cache.
    pub cached_steps: usize,
    /// The free space (MiB) the template's sandboxes start with.
    pub free_mib: u64,
}

/// Why a build failed, and at which step (`base`, `finalize` or a 1-based number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    pub step: String,
    pub message: String,
}

impl BuildError {
    fn at(step: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError { step: step.into(), message: message.into() }
    }
}

/// Runs `spec` and saves the result in `out` (a directory that must not exist; the caller
/// publishes it). Every sandbox it makes is destroyed before it returns.
pub async fn build(
    runtime: &Runtime,
    spec: &BuildSpec,
    config: &BuildConfig,
    out: &Path,
    log: Arc<BuildLog>,
) -> Result<Built, BuildError> {
    let n = spec.steps.len();
    match &spec.start {
        Start::Builtin { template, vcpus, memory_mib } => {
            log.info(Some(BASE_STEP), &format!("FROM {template} ({vcpus} vCPUs, {memory_mib} MiB)"))
        }
        Start::Saved { identity, .. } => log.info(Some(BASE_STEP), &format!("FROM template build {identity}")),
        Start::Image { reference, vcpus, memory_mib, .. } => {
            log.info(Some(BASE_STEP), &format!("FROM {reference} ({vcpus} vCPUs, {memory_mib} MiB)"))
        }
    }
    let (identity, ready) = source::prepare(runtime, &spec.start, &log).await?;
    let mut keys = vec![layers::start_key(&identity)];
    for s in &spec.steps {
        let next = layers::step_key(keys.last().map(String::as_str).unwrap_or_default(), &s.step);
        keys.push(next);
    }
    // The longest run of cached steps from the start, up to the first forced step: steps with
    // a saved layer, and between them steps that change nothing in the VM (ENV, USER), which
    // save none. The build restores the last saved layer (`done`) and applies the stateless
    // steps after it up to `reached` again.
    let first_forced = if spec.force { 0 } else { spec.steps.iter().position(|s| s.force).unwrap_or(n) };
    let (mut cached, mut reached) = (None, 0);
    for (i, key) in keys.iter().enumerate().take(first_forced + 1).skip(1) {
        match config.layers.get(key) {
            Some(layer) => cached = Some((i, layer)),
            None if spec.steps[i - 1].step.is_stateless() => {}
            None => break,
        }
        reached = i;
    }
    let done = cached.as_ref().map_or(0, |(i, _)| *i);
    if done == 0 {
        // Nothing saved to start from: stateless steps alone are not a cache hit.
        reached = 0;
    }
    for (i, s) in spec.steps.iter().enumerate().take(done) {
        log.info(Some(&(i + 1).to_string()), &format!("CACHED [{}/{n}] {}", i + 1, s.step.describe()));
    }
    let (sandbox, mut defaults, held) = launch(runtime, spec, ready, cached.map(|(_, l)| l)).await?;
    let token = hex::encode(rand::random::<[u8; 16]>());
    let run = async {
        init(&sandbox, &defaults, held.as_deref(), &token, config.ca_bundle.clone()).await?;
        let agent = sandbox.agent().clone().with_token(Some(token.clone()));
        if let (0, Start::Image { .. }, Some(dir)) = (done, &spec.start, defaults.workdir.clone()) {
            // As container runtimes do: an image's WorkingDir exists once it runs.
            let env = [("DIR".to_string(), dir)].into();
            let mkdir = Command { cmd: "mkdir -p \"$DIR\"", user: "root", cwd: Some("/"), env: &env };
            guest::run(&agent, &log, BASE_STEP, &mkdir, Output::Logged, config.step_timeout)
                .await
                .map_err(|e| BuildError::at(BASE_STEP, format!("making the image's working directory: {e}")))?;
        }
        for (i, s) in spec.steps.iter().enumerate().skip(done) {
            let label = (i + 1).to_string();
            let from_cache = i < reached;
            let prefix = if from_cache { "CACHED " } else { "" };
            log.info(Some(&label), &format!("{prefix}[{}/{n}] {}", i + 1, s.step.describe()));
            let started = std::time::Instant::now();
            let ran = tokio::select! {
                ran = step(&agent, &log, &label, &s.step, &mut defaults, config) => ran,
                never = disk::keep_room(&sandbox, &agent, &log, &label) => match never {},
            };
            ran.map_err(|m| BuildError::at(&label, format!("step {label} ({}) failed: {m}", s.step.kind())))?;
            if from_cache {
                continue;
            }
            if !s.step.is_stateless() {
                save_layer(&sandbox, &agent, config, &keys[i + 1], &defaults, &token)
                    .await
                    .map_err(|m| BuildError::at(&label, format!("saving the layer of step {label}: {m}")))?;
            }
            log.info(Some(&label), &format!("step {label} done in {:.1} s", started.elapsed().as_secs_f64()));
        }
        let disk = disk::ensure_free(&sandbox, &agent, spec.min_free_mib)
            .await
            .map_err(|m| BuildError::at(FINALIZE_STEP, format!("the template's free space: {m}")))?;
        log.info(
            Some(FINALIZE_STEP),
            &format!("disk: {} MiB, {} MiB free", disk.fs_bytes >> 20, disk.avail_bytes >> 20),
        );
        finalize(&sandbox, &agent, spec, config, &defaults, out, log.clone()).await?;
        Ok::<_, BuildError>(disk.avail_bytes >> 20)
    }
    .await;
    if let Err(e) = sandbox.destroy().await {
        tracing::warn!(error = %e, "destroying a build sandbox");
    }
    let free_mib = run?;
    Ok(Built { defaults, agent_token: Some(token), cached_steps: reached, free_mib })
}

/// The build sandbox: restored from the last cached layer, or made from the source.
async fn launch(
    runtime: &Runtime,
    spec: &BuildSpec,
    ready: Ready,
    cached: Option<(PathBuf, LayerMeta)>,
) -> Result<(Sandbox, Defaults, Option<String>), BuildError> {
    let base = |e: ember_runtime::RuntimeError| BuildError::at(BASE_STEP, format!("starting the build sandbox: {e}"));
    let policy = spec.policy.clone();
    let (vcpus, memory_mib) = match &spec.start {
        Start::Builtin { vcpus, memory_mib, .. } | Start::Image { vcpus, memory_mib, .. } => (*vcpus, *memory_mib),
        Start::Saved { .. } => (0, 0),
    };
    let sandbox_spec = |template: String, from_snapshot: bool| SandboxSpec {
        template,
        from_snapshot,
        vcpus,
        memory_mib,
        die_with_parent: false,
        policy: policy.clone(),
    };
    match (cached, ready) {
        (Some((dir, meta)), _) => {
            Ok((runtime.create_from_saved(&dir, policy).await.map_err(base)?, meta.defaults, meta.agent_token))
        }
        (None, Ready::Builtin { template }) => {
            let sandbox = runtime.create(&sandbox_spec(template, true)).await.map_err(base)?;
            let held = sandbox.agent().token().map(str::to_string);
            Ok((sandbox, Defaults::base(), held))
        }
        (None, Ready::Saved { dir, defaults, agent_token }) => {
            Ok((runtime.create_from_saved(&dir, policy).await.map_err(base)?, defaults, agent_token))
        }
        (None, Ready::Image { template, defaults }) => {
            let spec = sandbox_spec(template.name.clone(), false);
            let sandbox = runtime.create_from_template(&template, &spec).await.map_err(base)?;
            let held = sandbox.agent().token().map(str::to_string);
            Ok((sandbox, defaults, held))
        }
    }
}

/// Gives the build sandbox its own access token (the layers and the template keep it).
async fn init(
    sandbox: &Sandbox,
    defaults: &Defaults,
    held: Option<&str>,
    token: &str,
    ca_bundle: Option<String>,
) -> Result<(), BuildError> {
    let request = InitRequest {
        env_vars: Some(Default::default()),
        access_token: Some(token.to_string()),
        timestamp: Some(ember_envd_proto::time::rfc3339(SystemTime::now())),
        default_user: Some(defaults.user.clone()),
        entropy: Some(hex::encode(rand::random::<[u8; 32]>())),
        hostname: Some("ember-build".into()),
        ca_bundle,
        ..Default::default()
    };
    sandbox
        .agent()
        .post_json("/init", &request, held)
        .await
        .map_err(|e| BuildError::at(BASE_STEP, format!("initialising the build sandbox: {e}")))
}

/// Runs one step (ENV, WORKDIR and USER change the defaults; WORKDIR makes the directory and
/// USER checks that the user exists).
async fn step(
    agent: &ember_runtime::AgentClient,
    log: &BuildLog,
    label: &str,
    step: &Step,
    defaults: &mut Defaults,
    config: &BuildConfig,
) -> Result<(), String> {
    let timeout = config.step_timeout;
    let err = |e: guest::GuestError| e.to_string();
    match step {
        Step::Run { cmd, user } => {
            guest::run(agent, log, label, &Command::with(defaults, cmd, user.as_deref()), Output::Logged, timeout)
                .await
                .map_err(err)
        }
        Step::Copy { src, dest, owner, mode, files_hash } => {
            let archive = config.uploads.join(files_hash);
            if !archive.is_file() {
                return Err(format!("no files were uploaded for hash {files_hash}"));
            }
            let copy = guest::Copy { archive: &archive, src, dest, owner: owner.as_deref(), mode: *mode };
            guest::copy(agent, log, label, defaults, &copy, timeout).await.map_err(err)
        }
        Step::Workdir { .. } => {
            defaults.apply(step);
            let dir = defaults.workdir.clone().unwrap_or_else(|| "/".into());
            let env = [("DIR".to_string(), dir)].into();
            let mkdir = Command { cmd: "mkdir -p \"$DIR\"", user: "root", cwd: Some("/"), env: &env };
            guest::run(agent, log, label, &mkdir, Output::Logged, timeout).await.map_err(err)
        }
        Step::User { name } => {
            let env = [("NAME".to_string(), name.clone())].into();
            let check = Command { cmd: "id -u \"$NAME\" >/dev/null", user: "root", cwd: Some("/"), env: &env };
            guest::run(agent, log, label, &check, Output::Logged, timeout)
                .await
                .map_err(|_| format!("there is no user '{name}' in the sandbox (create it with a RUN step first)"))?;
            defaults.apply(step);
            Ok(())
        }
        Step::Env { .. } => {
            defaults.apply(step);
            Ok(())
        }
    }
}

/// Lets the guest drop its page cache (a smaller saved state), then saves the sandbox as layer
/// `key`.
async fn save_layer(
    sandbox: &Sandbox,
    agent: &ember_runtime::AgentClient,
    config: &BuildConfig,
    key: &str,
    defaults: &Defaults,
    token: &str,
) -> Result<(), String> {
    drop_caches(agent).await;
    let partial = config.layers.partial(key);
    let _ = std::fs::remove_dir_all(&partial);
    let saved = async {
        sandbox.save_to(&partial).await.map_err(|e| e.to_string())?;
        let meta = LayerMeta { defaults: defaults.clone(), agent_token: Some(token.to_string()) };
        config.layers.publish(key, &partial, &meta).map_err(|e| e.to_string())
    }
    .await;
    if saved.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    saved
}

async fn drop_caches(agent: &ember_runtime::AgentClient) {
    let env = Default::default();
    let cmd = Command { cmd: "sync; echo 3 > /proc/sys/vm/drop_caches", user: "root", cwd: Some("/"), env: &env };
    let log = BuildLog::new();
    if let Err(e) = guest::run(agent, &log, "", &cmd, Output::Quiet, Duration::from_secs(60)).await {
        tracing::debug!(error = %e, "dropping the build sandbox's page cache");
    }
}

/// Starts the start command, waits for the ready command, and saves the sandbox into `out`.
async fn finalize(
    sandbox: &Sandbox,
    agent: &ember_runtime::AgentClient,
    spec: &BuildSpec,
    config: &BuildConfig,
    defaults: &Defaults,
    out: &Path,
    log: Arc<BuildLog>,
) -> Result<(), BuildError> {
    let fail = |m: String| BuildError::at(FINALIZE_STEP, m);
    let mut background = None;
    if let Some(cmd) = &spec.start_cmd {
        log.info(Some(FINALIZE_STEP), &format!("starting: {cmd}"));
        let command = Command::with(defaults, cmd, None);
        background = Some(
            guest::spawn(agent, log.clone(), FINALIZE_STEP, &command)
                .await
                .map_err(|e| fail(format!("the start command did not start: {e}")))?,
        );
    }
    // E2B's defaults: `sleep 20` after a start command, nothing to wait for without one.
    let ready = spec.ready_cmd.clone().or_else(|| spec.start_cmd.as_ref().map(|_| "sleep 20".to_string()));
    let result = async {
        if let Some(ready) = &ready {
            log.info(Some(FINALIZE_STEP), &format!("waiting for the ready command: {ready}"));
            wait_ready(agent, &log, defaults, ready, config).await.map_err(fail)?;
        }
        drop_caches(agent).await;
        sandbox.save_to(out).await.map_err(|e| fail(format!("saving the template: {e}")))
    }
    .await;
    if let Some(task) = background {
        task.abort();
    }
    result
}

async fn wait_ready(
    agent: &ember_runtime::AgentClient,
    log: &BuildLog,
    defaults: &Defaults,
    ready: &str,
    config: &BuildConfig,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + config.ready_timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = Command::with(defaults, ready, None);
        let quiet = BuildLog::new();
        match guest::run(agent, &quiet, FINALIZE_STEP, &attempt, Output::Quiet, left.max(Duration::from_secs(1))).await
        {
            Ok(()) => {
                log.info(Some(FINALIZE_STEP), &format!("ready after {tries} tries"));
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() + config.ready_interval >= deadline => {
                for entry in quiet.tail(20) {
                    log.info(Some(FINALIZE_STEP), &entry.message);
                }
                return Err(format!(
                    "the ready command did not succeed within {} s ({tries} tries, last: {e})",
                    config.ready_timeout.as_secs()
                ));
            }
            Err(_) => tokio::time::sleep(config.ready_interval).await,
        }
    }
}
