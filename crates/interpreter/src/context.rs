//! Contexts: the registry (ids, default context per language, limits), each context's kernel
//! (started on demand, replaced when it dies or is restarted) and its queue of executions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex};

use ember_envd_proto::interpreter::{ContextInfo, Event, ExecutionError};
use tokio::sync::{oneshot, Mutex};

use crate::execute::{self, Outcome, Output};
use crate::kernel::{Kernel, KernelError, KernelSettings};
use crate::kernelspec::KernelSpec;
use crate::lang::{EnvError, Language};
use crate::wire;

/// Python set-up run in every new Python kernel: rich results (`e2b/data`, `e2b/chart`), no
/// colours in tracebacks.
const PYTHON_PRELUDE: &str = include_str!("prelude.py");
/// Longest cwd accepted.
const MAX_CWD: usize = 4096;

/// Why a context operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// an unknown language or one whose kernel is not installed
    #[error("language {requested:?} is not available; available languages: {available}")]
    Language { requested: String, available: String },
    /// no such context
    #[error("Context {0} not found")]
    NotFound(String),
    /// the context limit
    #[error("too many contexts (at most {0}); delete some first")]
    TooMany(usize),
    /// a bad cwd
    #[error("invalid cwd {0:?}: {1}")]
    Cwd(String, &'static str),
    /// the kernel did not start
    #[error("the {language} kernel did not start: {source}")]
    Start { language: Language, source: KernelError },
}

/// One context.
pub struct Context {
    pub id: String,
    pub language: Language,
    pub cwd: PathBuf,
    spec: KernelSpec,
    /// The current kernel, if started (read without waiting for the queue: restart and delete
    /// kill it at once).
    kernel: SyncMutex<Option<Arc<Kernel>>>,
    /// The queue: held by one execution (or start/restart) at a time; tokio's mutex is fair.
    queue: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    /// The sandbox's env vars have been set in the current kernel.
    envd_loaded: bool,
}

impl Context {
    pub fn info(&self) -> ContextInfo {
        ContextInfo { id: self.id.clone(), language: self.language.name().into(), cwd: self.cwd.display().to_string() }
    }

    fn current(&self) -> Option<Arc<Kernel>> {
        self.kernel.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The live kernel, started if there is none (call with the queue held).
    async fn ensure_kernel(
        &self,
        settings: &KernelSettings,
        state: &mut QueueState,
    ) -> Result<Arc<Kernel>, ContextError> {
        if let Some(k) = self.current().filter(|k| k.is_alive()) {
            return Ok(k);
        }
        let kernel = Kernel::start(settings, &self.spec, &self.cwd, &self.id)
            .await
            .map_err(|source| ContextError::Start { language: self.language, source })?;
        if self.language == Language::Python {
            match execute::run_silent(&kernel, PYTHON_PRELUDE).await {
                Ok(None) => {}
                Ok(Some(e)) => tracing::warn!(context = self.id, "Python prelude failed: {}: {}", e.name, e.value),
                Err(e) => return Err(ContextError::Start { language: self.language, source: e }),
            }
        }
        let kernel = Arc::new(kernel);
        *self.kernel.lock().unwrap_or_else(|e| e.into_inner()) = Some(kernel.clone());
        state.envd_loaded = false;
        Ok(kernel)
    }

    /// Starts the kernel now if it is not running (start-up contexts, `POST /contexts`).
    pub async fn warm(&self, settings: &KernelSettings) -> Result<(), ContextError> {
        let mut state = self.queue.lock().await;
        self.ensure_kernel(settings, &mut state).await.map(|_| ())
    }

    /// Runs the language's warm-up cell outside the history (see [`Language::warm_up_code`]): in a
    /// guest restored from a snapshot under TCG, the first execution pays for translating the
    /// kernel's code afresh, which this moves off a client's first cell.
    pub async fn exercise(&self, settings: &KernelSettings) -> Result<(), ContextError> {
        let Some(code) = self.language.warm_up_code() else { return Ok(()) };
        let mut state = self.queue.lock().await;
        let kernel = self.ensure_kernel(settings, &mut state).await?;
        match execute::run_unrecorded(&kernel, code).await {
            Ok(_) => Ok(()),
            Err(source) => {
                self.forget(&kernel);
                Err(ContextError::Start { language: self.language, source })
            }
        }
    }

    /// Kills the kernel and starts a new one (same id and cwd).
    pub async fn restart(&self, settings: &KernelSettings) -> Result<(), ContextError> {
        self.kill();
        self.warm(settings).await
    }

    /// Kills the kernel (an execution in progress ends with `KernelDied`).
    pub fn kill(&self) {
        if let Some(k) = self.kernel.lock().unwrap_or_else(|e| e.into_inner()).take() {
            k.kill();
        }
    }

    /// Runs one cell, after those queued before it; streams its events, `end_of_execution`
    /// last. `sandbox_env` is set in a fresh kernel before its first cell, `call_env` for this
    /// cell only (then restored to the sandbox's value or removed).
    pub async fn execute(
        &self,
        settings: &KernelSettings,
        cell: Cell,
        mut out: Output,
        mut gone: oneshot::Receiver<()>,
    ) {
        let mut state = tokio::select! {
            s = self.queue.lock() => s,
            _ = &mut gone => return, // Left while queued: nothing to run.
        };
        if let Err(e) = self.execute_locked(settings, &mut state, cell, &mut out, &mut gone).await {
            out.send(Event::Error(e)).await;
        }
        out.send(Event::EndOfExecution).await;
    }

    async fn execute_locked(
        &self,
        settings: &KernelSettings,
        state: &mut QueueState,
        cell: Cell,
        out: &mut Output,
        gone: &mut oneshot::Receiver<()>,
    ) -> Result<(), ExecutionError> {
        let kernel = self.ensure_kernel(settings, state).await.map_err(|e| error("KernelStartError", e))?;
        let mut setup = BTreeMap::new();
        if !state.envd_loaded {
            setup.extend(
                cell.sandbox_env
                    .iter()
                    .filter(|(k, _)| crate::lang::is_env_name(k))
                    .map(|(k, v)| (k.clone(), Some(v.clone()))),
            );
        }
        setup.extend(cell.call_env.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        if !setup.is_empty() {
            self.silent(&kernel, &setup).await?;
        }
        state.envd_loaded = true;
        let outcome = execute::run_cell(&kernel, &cell.code, out, gone).await;
        if outcome == Outcome::KernelLost {
            self.forget(&kernel);
            return Ok(());
        }
        if !cell.call_env.is_empty() {
            let restore: BTreeMap<String, Option<String>> =
                cell.call_env.keys().map(|k| (k.clone(), cell.sandbox_env.get(k).cloned())).collect();
            if let Err(e) = self.silent(&kernel, &restore).await {
                tracing::warn!(context = self.id, "restoring env vars failed: {}", e.value);
            }
        }
        Ok(())
    }

    async fn silent(
        &self,
        kernel: &Arc<Kernel>,
        vars: &BTreeMap<String, Option<String>>,
    ) -> Result<(), ExecutionError> {
        let code = self.language.env_code(vars).map_err(|e: EnvError| error("EnvVarsError", e))?;
        match execute::run_silent(kernel, &code).await {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(ExecutionError {
                name: "EnvVarsError".into(),
                value: format!("{}: {}", e.name, e.value),
                traceback: e.traceback,
            }),
            Err(e) => {
                self.forget(kernel);
                Err(error("KernelDied", e))
            }
        }
    }

    /// Drops `kernel` if it is still the current one.
    fn forget(&self, kernel: &Arc<Kernel>) {
        let mut slot = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|k| Arc::ptr_eq(k, kernel)) {
            slot.take();
        }
        kernel.kill();
    }
}

fn error(name: &str, e: impl std::fmt::Display) -> ExecutionError {
    ExecutionError { name: name.into(), value: e.to_string(), traceback: String::new() }
}

/// A cell to run.
pub struct Cell {
    pub code: String,
    pub sandbox_env: BTreeMap<String, String>,
    pub call_env: BTreeMap<String, String>,
}

/// All contexts.
pub struct Registry {
    pub settings: KernelSettings,
    specs: BTreeMap<Language, KernelSpec>,
    default_cwd: PathBuf,
    max_contexts: usize,
    inner: SyncMutex<Inner>,
}

#[derive(Default)]
struct Inner {
    contexts: HashMap<String, Arc<Context>>,
    /// Ids of the default context of each language, in creation order for listing.
    defaults: HashMap<Language, String>,
    order: Vec<String>,
}

impl Registry {
    /// A registry over the kernelspecs found in `kernels_dir` for the known languages.
    pub fn new(settings: KernelSettings, kernels_dir: &Path, default_cwd: PathBuf, max_contexts: usize) -> Registry {
        let mut specs = BTreeMap::new();
        for lang in Language::ALL {
            match KernelSpec::load(kernels_dir, lang.kernelspec()) {
                Ok(spec) => {
                    specs.insert(lang, spec);
                }
                Err(e) => tracing::info!(language = %lang, "not available: {e}"),
            }
        }
        Registry { settings, specs, default_cwd, max_contexts, inner: SyncMutex::new(Inner::default()) }
    }

    pub fn available(&self) -> Vec<Language> {
        self.specs.keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parses a request's language (default python) into one whose kernel is installed.
    pub fn language(&self, requested: Option<&str>) -> Result<Language, ContextError> {
        let requested = requested.filter(|s| !s.trim().is_empty()).unwrap_or("python");
        Language::parse(requested).filter(|l| self.specs.contains_key(l)).ok_or_else(|| ContextError::Language {
            requested: requested.chars().take(64).collect(),
            available: self.available().iter().map(|l| l.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// A new context (not started yet; see [`Context::warm`]).
    pub fn create(&self, language: Language, cwd: Option<&str>) -> Result<Arc<Context>, ContextError> {
        let cwd = match cwd.filter(|c| !c.is_empty()) {
            None => self.default_cwd.clone(),
            Some(c) => check_cwd(c)?,
        };
        let spec = self.specs.get(&language).cloned().ok_or_else(|| ContextError::Language {
            requested: language.name().into(),
            available: self.available().iter().map(|l| l.name()).collect::<Vec<_>>().join(", "),
        })?;
        let mut inner = self.lock();
        if inner.contexts.len() >= self.max_contexts {
            return Err(ContextError::TooMany(self.max_contexts));
        }
        let ctx = Arc::new(Context {
            id: new_id(),
            language,
            cwd,
            spec,
            kernel: SyncMutex::new(None),
            queue: Mutex::new(QueueState::default()),
        });
        inner.contexts.insert(ctx.id.clone(), ctx.clone());
        inner.order.push(ctx.id.clone());
        Ok(ctx)
    }

    /// The default context of `language`, created if there is none.
    pub fn default_for(&self, language: Language) -> Result<Arc<Context>, ContextError> {
        {
            let inner = self.lock();
            if let Some(ctx) = inner.defaults.get(&language).and_then(|id| inner.contexts.get(id)) {
                return Ok(ctx.clone());
            }
        }
        let ctx = self.create(language, None)?;
        let mut inner = self.lock();
        // Another request may have made one meanwhile: keep the first.
        if let Some(existing) = inner.defaults.get(&language).and_then(|id| inner.contexts.get(id)).cloned() {
            inner.contexts.remove(&ctx.id);
            inner.order.retain(|i| i != &ctx.id);
            return Ok(existing);
        }
        inner.defaults.insert(language, ctx.id.clone());
        Ok(ctx)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Context>, ContextError> {
        self.lock().contexts.get(id).cloned().ok_or_else(|| ContextError::NotFound(shorten(id)))
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let inner = self.lock();
        inner.order.iter().filter_map(|id| inner.contexts.get(id)).map(|c| c.info()).collect()
    }

    /// Removes a context and kills its kernel.
    pub fn delete(&self, id: &str) -> Result<(), ContextError> {
        let ctx = {
            let mut inner = self.lock();
            let ctx = inner.contexts.remove(id).ok_or_else(|| ContextError::NotFound(shorten(id)))?;
            inner.order.retain(|i| i != id);
            inner.defaults.retain(|_, d| d != id);
            ctx
        };
        ctx.kill();
        crate::kernel::remove_logs(&self.settings.runtime_dir, id);
        Ok(())
    }

    /// Kills every kernel (shutdown).
    pub fn kill_all(&self) {
        for ctx in self.lock().contexts.values() {
            ctx.kill();
        }
    }
}

/// An absolute path without NUL, `..` components or excessive length, naming a directory.
fn check_cwd(c: &str) -> Result<PathBuf, ContextError> {
    let bad = |why| Err(ContextError::Cwd(c.chars().take(256).collect(), why));
    if c.len() > MAX_CWD {
        return bad("too long");
    }
    if !c.starts_with('/') || c.contains('\0') {
        return bad("must be an absolute path");
    }
    if !Path::new(c).is_dir() {
        return bad("no such directory");
    }
    Ok(PathBuf::from(c))
}

/// A context id: a random UUID (v4 form), as Jupyter's kernel ids.
fn new_id() -> String {
    let h = wire::random_hex(16);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// An id as it may be echoed in an error (bounded, printable).
fn shorten(id: &str) -> String {
    id.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(new_id(), id);
    }

    #[test]
    fn cwd_checked() {
        assert!(check_cwd("/").is_ok());
        assert!(check_cwd("relative").is_err());
        assert!(check_cwd("/no/such/dir/really").is_err());
        assert!(check_cwd("/tmp\0x").is_err());
        assert!(check_cwd(&format!("/{}", "a".repeat(MAX_CWD))).is_err());
    }

    #[test]
    fn registry_limits_defaults_and_languages() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("python3")).unwrap();
        std::fs::write(t.path().join("python3/kernel.json"), r#"{"argv":["python3","-f","{connection_file}"]}"#)
            .unwrap();
        let settings = KernelSettings {
            account: None,
            runtime_dir: t.path().into(),
            start_timeout: std::time::Duration::from_secs(1),
            path: String::new(),
        };
        let reg = Registry::new(settings, t.path(), "/".into(), 2);
        assert_eq!(reg.available(), vec![Language::Python]);
        assert_eq!(reg.language(None).unwrap(), Language::Python);
        let err = reg.language(Some("js")).unwrap_err().to_string();
        assert!(err.contains("\"js\"") && err.contains("available languages: python"), "{err}");
        let d = reg.default_for(Language::Python).unwrap();
        assert_eq!(reg.default_for(Language::Python).unwrap().id, d.id);
        let c = reg.create(Language::Python, Some("/tmp")).unwrap();
        assert!(matches!(reg.create(Language::Python, None), Err(ContextError::TooMany(2))));
        assert_eq!(reg.list().len(), 2);
        reg.delete(&d.id).unwrap();
        assert!(matches!(reg.get(&d.id), Err(ContextError::NotFound(_))));
        assert_ne!(reg.default_for(Language::Python).unwrap().id, d.id);
        assert_eq!(reg.get(&c.id).unwrap().info().cwd, "/tmp");
    }
}
