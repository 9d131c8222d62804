//! Template builds as the API drives them: a build is requested (the template made or found by
//! name, a build record waiting), its COPY archives uploaded through signed one-hour URLs, then
//! started: checked, queued (one build runs at a time) and run by [`ember_builder`] on a task of
//! its own. Its log stays in memory for the status endpoint; its outcome is recorded in the store
//! and a ready build's saved sandbox is published as `DATA/templates/BUILD_ID`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_api::{TemplateBuildRequest, TemplateBuildStart};
use ember_builder::{BuildConfig, BuildLog, BuildSpec, Defaults, Layers, Start, Step, StepSpec};
use ember_store::{now_ms, BuildRecord, BuildStatus, TemplateRecord};
use tracing::Instrument;

use super::{random_hex, LifecycleError, Manager};

/// How long an upload URL is valid.
/// A built template's size when its build names none (E2B's: 2 vCPUs, 512 MiB); builds install
/// packages, which want more than `base`'s 256 MiB.
const BUILD_SIZE: ember_image::template::Size = ember_image::template::Size { vcpus: 2, memory_mib: 512 };
const UPLOAD_URL_TTL: Duration = Duration::from_secs(3600);
/// Largest uploaded COPY archive.
pub const MAX_UPLOAD_BYTES: u64 = ember_builder::guest::MAX_ARCHIVE_BYTES;
/// Upload URLs outstanding at once (older ones are dropped first).
const MAX_UPLOAD_URLS: usize = 1024;
/// Build logs kept in memory (the oldest finished ones go first).
const MAX_LOGS: usize = 256;
/// Most tags on one build.
const MAX_TAGS: usize = 16;
/// Bytes of uploaded COPY archives one team may keep.
const MAX_TEAM_UPLOAD_BYTES: u64 = 4 << 30;
/// Templates one team may have.
const MAX_TEMPLATES_PER_TEAM: usize = 100;

/// What an upload URL allows: one archive for one team.
#[derive(Debug, Clone)]
pub struct Upload {
    pub team: String,
    pub hash: String,
    expires: Instant,
}

/// The daemon's build state besides the store.
pub struct Builds {
    logs: Mutex<HashMap<String, Arc<BuildLog>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    /// One build at a time (two cores; a build is a busy sandbox).
    running: tokio::sync::Semaphore,
    /// The builds' tasks (finished ones are dropped as new ones start), ended at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Builds {
    pub fn new() -> Self {
        Self {
            logs: Default::default(),
            uploads: Default::default(),
            running: tokio::sync::Semaphore::new(1),
            tasks: Default::default(),
        }
    }
}

/// A template's name and tag from `name` or `name:tag` (tag `latest` if none).
pub fn split_name(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !name.is_empty() && !tag.is_empty() => (name, tag),
        _ => (reference, "latest"),
    }
}

/// Names and tags are 1-128 of `[a-z0-9._-]` (names may have `/`), starting alphanumeric.
fn check_label(what: &str, s: &str, slash: bool) -> Result<(), LifecycleError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) || (slash && c == '/'));
    if ok {
        Ok(())
    } else {
        Err(LifecycleError::Invalid(format!(
            "template {what} '{s}': 1-128 lowercase letters, digits and ._-{}, starting with a letter or digit",
            if slash { "/" } else { "" }
        )))
    }
}

/// Credentials from `fromImageRegistry`: `{type: "registry", username, password}`; the cloud
/// registries' types (aws, gcp) are E2B cloud features and refused.
fn registry_credentials(
    registry: Option<&serde_json::Value>,
) -> Result<Option<ember_oci::Credentials>, LifecycleError> {
    let Some(registry) = registry.filter(|r| !r.is_null()) else { return Ok(None) };
    let field = |name: &str| registry.get(name).and_then(|v| v.as_str()).map(str::to_string);
    match field("type").as_deref() {
        Some("registry") => match (field("username"), field("password")) {
            (Some(username), Some(password)) if username.len() <= 1024 && password.len() <= 16384 => {
                Ok(Some(ember_oci::Credentials { username, password }))
            }
            _ => Err(LifecycleError::Invalid("fromImageRegistry needs a username and a password".into())),
        },
        other => Err(LifecycleError::Invalid(format!(
            "fromImageRegistry type {}: only \"registry\" (username and password) is supported",
            other.unwrap_or("(none)")
        ))),
    }
}

/// A build id: a random UUID (version 4), as E2B's are.
fn new_build_id() -> String {
    let h = random_hex(16);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

impl Manager {
    /// Where team `team`'s uploaded archives live.
    pub(super) fn uploads_dir(&self, team: &str) -> PathBuf {
        self.config.data_dir.join("uploads").join(hex::encode(team))
    }

    /// Where build `id`'s saved sandbox lives once ready.
    pub(super) fn template_dir(&self, build_id: &str) -> PathBuf {
        self.config.data_dir.join(ember_runtime::private::TEMPLATES).join(build_id)
    }

    /// `POST /v3/templates`: the team's template of that name (made if new) and a new build.
    pub fn request_build(
        &self,
        team: &str,
        req: &TemplateBuildRequest,
    ) -> Result<(TemplateRecord, BuildRecord), LifecycleError> {
        let reference = req.name.as_deref().or(req.alias.as_deref()).unwrap_or_default();
        let (name, tag) = split_name(reference);
        check_label("name", name, true)?;
        if ember_image::template::canonical(name).is_some() {
            return Err(LifecycleError::Invalid(format!("'{name}' is a built-in template; choose another name")));
        }
        let mut tags: Vec<String> = req.tags.clone().unwrap_or_default();
        if reference.contains(':') || tags.is_empty() {
            tags.insert(0, tag.to_string());
        }
        tags.dedup();
        if tags.len() > MAX_TAGS {
            return Err(LifecycleError::Invalid(format!("at most {MAX_TAGS} tags")));
        }
        for t in &tags {
            check_label("tag", t, false)?;
        }
        let size = |v: Option<i64>, default: u32, what: &str| match v {
            None => Ok(default),
            Some(v) => u32::try_from(v).map_err(|_| LifecycleError::Invalid(format!("{what} out of range"))),
        };
        let vcpus = size(req.cpu_count, self.config.vcpus.unwrap_or(BUILD_SIZE.vcpus), "cpuCount")?;
        let memory_mib = size(req.memory_mb, self.config.memory_mib.unwrap_or(BUILD_SIZE.memory_mib), "memoryMB")?;
        let min_free_mib = match req.min_free_disk_mb {
            None => u32::try_from(ember_image::fit::FREE_MIB).unwrap_or(u32::MAX),
            Some(mib) => u32::try_from(mib)
                .ok()
                .filter(|m| u64::from(*m) <= ember_builder::disk::MAX_MIN_FREE_MIB)
                .ok_or_else(|| {
                    LifecycleError::Invalid(format!(
                        "minFreeDiskMb must be 0-{} (MiB), got {mib}",
                        ember_builder::disk::MAX_MIN_FREE_MIB
                    ))
                })?,
        };
        let (max_vcpus, max_mib) = (self.config.max_vcpus, self.config.max_memory_mib);
        if !(1..=max_vcpus).contains(&vcpus) || !(128..=max_mib).contains(&memory_mib) {
            return Err(LifecycleError::Invalid(format!(
                "cpuCount must be 1-{max_vcpus} and memoryMB 128-{max_mib} (the operator's maxima)"
            )));
        }
        let known = self.store.templates(team)?;
        if known.len() >= MAX_TEMPLATES_PER_TEAM && !known.iter().any(|t| t.name == name) {
            return Err(LifecycleError::Quota(format!(
                "the team has {MAX_TEMPLATES_PER_TEAM} templates, the most it may have; delete one first"
            )));
        }
        let template = self.store.upsert_template(&TemplateRecord {
            id: ember_runtime::sandbox::new_id(),
            team: team.into(),
            name: name.into(),
            created_ms: now_ms(),
            vcpus,
            memory_mib,
            min_free_mib,
        })?;
        let build = BuildRecord {
            id: new_build_id(),
            template_id: template.id.clone(),
            tags,
            status: BuildStatus::Waiting,
            reason: None,
            reason_step: None,
            created_ms: now_ms(),
            finished_ms: None,
            defaults: None,
            agent_token: None,
            free_mib: None,
        };
        self.store.insert_build(&build)?;
        Ok((template, build))
    }

    /// `GET /templates/{id}/files/{hash}`: whether the team has that archive, and if not a
    /// token for the upload URL.
    pub fn file_upload(&self, team: &str, template_id: &str, hash: &str) -> Result<Option<String>, LifecycleError> {
        self.team_template(team, template_id)?;
        if !ember_builder::spec::is_files_hash(hash) {
            return Err(LifecycleError::Invalid("the files hash must be 64 lowercase hex digits (SHA-256)".into()));
        }
        if self.uploads_dir(team).join(hash).is_file() {
            return Ok(None);
        }
        let used = super::snapshots::dir_bytes(&self.uploads_dir(team));
        if used >= MAX_TEAM_UPLOAD_BYTES {
            return Err(LifecycleError::Quota(format!(
                "the team's uploaded files use {} MiB, the most it may ({} MiB)",
                used >> 20,
                MAX_TEAM_UPLOAD_BYTES >> 20
            )));
        }
        let token = random_hex(32);
        let mut uploads = self.builds.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        uploads.retain(|_, u| u.expires > now);
        if uploads.len() >= MAX_UPLOAD_URLS {
            if let Some(oldest) = uploads.iter().min_by_key(|(_, u)| u.expires).map(|(k, _)| k.clone()) {
                uploads.remove(&oldest);
            }
        }
        uploads.insert(token.clone(), Upload { team: team.into(), hash: hash.into(), expires: now + UPLOAD_URL_TTL });
        Ok(Some(token))
    }

    /// What an upload token allows, if it is valid.
    pub fn upload_for(&self, token: &str) -> Option<Upload> {
        let uploads = self.builds.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.get(token).filter(|u| u.expires > Instant::now()).cloned()
    }

    /// Where an upload is written before it is complete, and where it goes then.
    pub fn upload_paths(&self, upload: &Upload) -> Result<(PathBuf, PathBuf), LifecycleError> {
        let dir = self.uploads_dir(&upload.team);
        ember_runtime::private::private_subdir(&dir)
            .map_err(|e| LifecycleError::Io(format!("create {}", dir.display()), e))?;
        Ok((dir.join(format!("{}.{}.partial", upload.hash, random_hex(4))), dir.join(&upload.hash)))
    }

    /// The team's template by id or name (not found for another team's).
    pub fn team_template(&self, team: &str, key: &str) -> Result<TemplateRecord, LifecycleError> {
        self.store.find_template(team, key)?.ok_or_else(|| LifecycleError::Missing(format!("template \"{key}\"")))
    }

    /// `POST /v2/templates/{id}/builds/{buildID}`: checks the body and starts the build.
    pub fn start_build(
        self: &Arc<Self>,
        team: &str,
        template_id: &str,
        build_id: &str,
        body: &TemplateBuildStart,
    ) -> Result<(), LifecycleError> {
        let template = self.team_template(team, template_id)?;
        let mut build = self
            .store
            .find_build(&template.id, build_id)?
            .ok_or_else(|| LifecycleError::Missing(format!("build \"{build_id}\"")))?;
        if build.status != BuildStatus::Waiting || self.build_log(build_id).is_some() {
            return Err(LifecycleError::Conflict(format!("build {build_id} was started already")));
        }
        let spec = self.build_spec(team, &template, body)?;
        for s in &spec.steps {
            if let Step::Copy { files_hash, .. } = &s.step {
                if !self.uploads_dir(team).join(files_hash).is_file() {
                    return Err(LifecycleError::Invalid(format!(
                        "the files of a COPY step (hash {files_hash}) were not uploaded"
                    )));
                }
            }
        }
        let log = Arc::new(BuildLog::new());
        self.keep_log(build_id, log.clone());
        build.status = BuildStatus::Building;
        self.store.update_build(&build)?;
        let this = Arc::clone(self);
        let team = team.to_string();
        let span = tracing::info_span!("build", id = %build.id, template = %build.template_id);
        let task = tokio::spawn(async move { this.run_build(&team, build, spec, log).await }.instrument(span));
        let mut tasks = self.builds.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(())
    }

    /// At shutdown: ends the builds in progress (their sandboxes are destroyed as their tasks
    /// are dropped) and records them as failed.
    pub(super) async fn stop_builds(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.builds.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            if !task.is_finished() {
                task.abort();
                let _ = task.await;
            }
        }
        self.fail_unfinished_builds();
    }

    fn build_spec(
        &self,
        team: &str,
        template: &TemplateRecord,
        body: &TemplateBuildStart,
    ) -> Result<BuildSpec, LifecycleError> {
        let wire = body.steps.clone().unwrap_or_default();
        if wire.len() > ember_builder::spec::MAX_STEPS {
            return Err(LifecycleError::Invalid(format!("at most {} steps", ember_builder::spec::MAX_STEPS)));
        }
        let mut steps = Vec::with_capacity(wire.len());
        for (i, s) in wire.iter().enumerate() {
            let args = s.args.clone().unwrap_or_default();
            let step = Step::parse(i + 1, &s.kind, &args, s.files_hash.as_deref())
                .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
            steps.push(StepSpec { step, force: s.force.unwrap_or(false) });
        }
        for cmd in [&body.start_cmd, &body.ready_cmd].into_iter().flatten() {
            if cmd.len() > ember_builder::spec::MAX_ARG_BYTES || cmd.contains('\0') {
                return Err(LifecycleError::Invalid("startCmd and readyCmd are at most 64 KiB, without NUL".into()));
            }
        }
        let start = self.build_start(team, template, body)?;
        Ok(BuildSpec {
            start,
            steps,
            start_cmd: body.start_cmd.clone().filter(|c| !c.trim().is_empty()),
            ready_cmd: body.ready_cmd.clone().filter(|c| !c.trim().is_empty()),
            force: body.force.unwrap_or(false),
            policy: ember_runtime::EgressPolicy::allow_all(),
            min_free_mib: u64::from(template.min_free_mib),
        })
    }

    /// Where a build starts: `fromTemplate` (built-in or the team's), or `fromImage`: E2B's base
    /// image is Ember's `base`, any other is pulled from its registry.
    fn build_start(
        &self,
        team: &str,
        template: &TemplateRecord,
        body: &TemplateBuildStart,
    ) -> Result<Start, LifecycleError> {
        let builtin = |name: &str| Start::Builtin {
            template: name.to_string(),
            vcpus: template.vcpus,
            memory_mib: template.memory_mib,
        };
        match (&body.from_template, &body.from_image) {
            (Some(_), Some(_)) => Err(LifecycleError::Invalid("give fromTemplate or fromImage, not both".into())),
            (Some(from), None) => {
                if let Some(t) = ember_image::template::canonical(from) {
                    return Ok(builtin(t));
                }
                let (name, tag) = split_name(from);
                let parent = self.team_template(team, name)?;
                let build = self.store.ready_build(&parent.id, tag)?.ok_or_else(|| {
                    LifecycleError::Invalid(format!("template {from} has no ready build tagged {tag}"))
                })?;
                let defaults: Defaults = serde_json::from_str(build.defaults.as_deref().unwrap_or("{}"))
                    .map_err(|e| LifecycleError::Invalid(format!("template {from}: {e}")))?;
                Ok(Start::Saved {
                    dir: self.template_dir(&build.id),
                    identity: build.id.clone(),
                    defaults,
                    agent_token: build.agent_token.clone(),
                })
            }
            (None, image) => match image.as_deref().map(|i| i.trim_start_matches("docker.io/")) {
                None | Some("e2bdev/base" | "e2bdev/base:latest" | "e2bdev/code-interpreter" | "base") => {
                    Ok(builtin("base"))
                }
                Some(reference) => {
                    ember_oci::Reference::parse(reference)
                        .map_err(|e| LifecycleError::Invalid(format!("fromImage '{reference}': {e}")))?;
                    Ok(Start::Image {
                        reference: reference.to_string(),
                        credentials: registry_credentials(body.from_image_registry.as_ref())?,
                        vcpus: template.vcpus,
                        memory_mib: template.memory_mib,
                    })
                }
            },
        }
    }

    async fn run_build(self: Arc<Self>, team: &str, mut build: BuildRecord, spec: BuildSpec, log: Arc<BuildLog>) {
        if self.builds.running.available_permits() == 0 {
            log.info(Some(ember_builder::BASE_STEP), "waiting for the build before it to finish");
        }
        let Ok(_permit) = self.builds.running.acquire().await else { return };
        let config = self.build_config(team);
        let out = self.template_dir(&build.id);
        let partial = out.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let started = Instant::now();
        let result = match self.reserve_slot() {
            Ok(_slot) => ember_builder::build(&self.runtime, &spec, &config, &partial, log.clone()).await,
            Err(e) => Err(ember_builder::BuildError { step: ember_builder::BASE_STEP.into(), message: e.to_string() }),
        };
        let result = result.and_then(|built| {
            ember_runtime::private::seal_snapshot(&partial)
                .and_then(|()| {
                    std::fs::rename(&partial, &out).map_err(|e| ember_runtime::RuntimeError::Io {
                        context: "publish the template".into(),
                        source: e,
                    })
                })
                .map(|()| built)
                .map_err(|e| ember_builder::BuildError { step: "finalize".into(), message: e.to_string() })
        });
        build.finished_ms = Some(now_ms());
        match result {
            Ok(built) => {
                build.status = BuildStatus::Ready;
                build.defaults = serde_json::to_string(&built.defaults).ok();
                build.agent_token = built.agent_token;
                build.free_mib = u32::try_from(built.free_mib).ok();
                log.info(
                    Some(ember_builder::FINALIZE_STEP),
                    &format!(
                        "template ready in {:.1} s ({} of {} steps from the cache)",
                        started.elapsed().as_secs_f64(),
                        built.cached_steps,
                        spec.steps.len()
                    ),
                );
                tracing::info!(secs = started.elapsed().as_secs(), "template build ready");
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                log.error(Some(&e.step), &e.message);
                tracing::info!(step = %e.step, error = %e.message, "template build failed");
                build.status = BuildStatus::Error;
                build.reason = Some(e.message);
                build.reason_step = Some(e.step);
            }
        }
        if let Err(e) = self.store.update_build(&build) {
            tracing::error!(error = %e, "recording a build's outcome");
        }
    }

    fn build_config(&self, team: &str) -> BuildConfig {
        let layers = Layers::new(self.config.data_dir.join(ember_runtime::private::LAYERS));
        let mut config = BuildConfig::new(layers, self.uploads_dir(team));
        config.ca_bundle = self.ca_bundle();
        if let Some(secs) = self.config.build_ready_timeout_secs {
            config.ready_timeout = Duration::from_secs(secs);
        }
        config
    }

    fn keep_log(&self, build_id: &str, log: Arc<BuildLog>) {
        let mut logs = self.builds.logs.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() >= MAX_LOGS {
            // Drop a log nobody else holds (a finished build's).
            if let Some(old) = logs.iter().find(|(_, l)| Arc::strong_count(l) == 1).map(|(k, _)| k.clone()) {
                logs.remove(&old);
            }
        }
        logs.insert(build_id.to_string(), log);
    }

    /// The log of a build this daemon started.
    pub fn build_log(&self, build_id: &str) -> Option<Arc<BuildLog>> {
        self.builds.logs.lock().unwrap_or_else(|e| e.into_inner()).get(build_id).cloned()
    }

    /// Deletes the team's template, its builds' files included; false if there is none.
    pub fn delete_template(&self, team: &str, key: &str) -> Result<bool, LifecycleError> {
        let Some(template) = self.store.find_template(team, key)? else { return Ok(false) };
        let builds = self.store.builds(&template.id)?;
        if builds.iter().any(|b| matches!(b.status, BuildStatus::Building)) {
            return Err(LifecycleError::Conflict(format!("template {key} is being built; delete it afterwards")));
        }
        self.store.delete_template(&template.id)?;
        let dirs: Vec<PathBuf> = builds.iter().map(|b| self.template_dir(&b.id)).collect();
        let used = self.backing_images(&dirs);
        for dir in dirs {
            if used.contains(&dir.join(ember_runtime::private::SNAPSHOT_DISK)) {
                // Sandboxes, snapshots, layers or templates made from it still read its disk.
                tracing::info!(dir = %dir.display(), "a deleted template's files are kept: other disks are backed by them");
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Ok(true)
    }

    /// Every image some disk in the data directory is backed by (through its chain), except
    /// the disks in `except`.
    pub(super) fn backing_images(&self, except: &[PathBuf]) -> std::collections::HashSet<PathBuf> {
        let mut used = std::collections::HashSet::new();
        ember_image::qcow2::images_under(&self.config.data_dir, ember_image::qcow2::DATA_DIR_DEPTH, except, &mut used);
        used
    }

    /// At start and at shutdown: builds left unfinished have failed.
    pub(super) fn fail_unfinished_builds(&self) {
        match self.store.fail_unfinished_builds("the daemon stopped during the build", now_ms()) {
            Ok(ids) => {
                for id in ids {
                    let _ = std::fs::remove_dir_all(self.template_dir(&id).with_extension("partial"));
                }
            }
            Err(e) => tracing::warn!(error = %e, "marking unfinished builds"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert_eq!(split_name("web"), ("web", "latest"));
        assert_eq!(split_name("web:v2"), ("web", "v2"));
        assert_eq!(split_name("team/web:v2"), ("team/web", "v2"));
        assert_eq!(split_name("web:"), ("web:", "latest"));
        assert!(check_label("name", "my-app.v1", true).is_ok());
        assert!(check_label("name", "team/app", true).is_ok());
        for bad in ["", "-x", "UPPER", "a b", "a;b", &"x".repeat(129)] {
            assert!(check_label("name", bad, true).is_err(), "{bad}");
        }
        assert!(check_label("tag", "a/b", false).is_err());
    }

    #[test]
    fn build_ids_are_uuids() {
        let id = new_build_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12], "{id}");
        assert!(parts[2].starts_with('4') && parts[3].starts_with('a'));
    }
}
