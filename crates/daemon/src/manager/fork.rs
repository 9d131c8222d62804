//! Forks: running copies of a running sandbox, memory and disk. The source is saved once (it
//! stops for the save and runs on, its id and end unchanged) into a state without a record in
//! the snapshots directory, pinned while the copies are made; each copy is then created from it
//! as from a snapshot, and the state goes when the last disk backed by it does
//! ([`Manager::sweep_saved_states`]).

use std::sync::Arc;

use ember_api::{AutoResume, NewSandbox};

use super::{random_hex, LifecycleError, Live, Manager, Source};

/// The most copies one fork makes (E2B's bound).
pub const MAX_FORKS: usize = 20;

impl Manager {
    /// Makes `count` running copies of the running sandbox `live`, each with `timeout_secs` (or
    /// the default) and the source's metadata, env vars, network settings and lifecycle. One
    /// result per copy: a copy that fails does not fail the others.
    pub async fn fork(
        self: &Arc<Self>,
        live: Arc<Live>,
        timeout_secs: Option<i64>,
        count: usize,
    ) -> Result<Vec<Result<Arc<Live>, LifecycleError>>, LifecycleError> {
        if !(1..=MAX_FORKS).contains(&count) {
            return Err(LifecycleError::Invalid(format!("count must be between 1 and {MAX_FORKS}, got {count}")));
        }
        let timeout = self.check_timeout(timeout_secs.unwrap_or(self.default_timeout()))?;
        if live.is_paused() {
            return Err(LifecycleError::Conflict(format!("sandbox {} is paused; resume it first", live.id())));
        }
        // Its saved state goes where snapshots go, and counts against their bytes.
        self.check_snapshot_bytes()?;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let dir = this.snapshot_dir(&format!("fork-{}", random_hex(10)));
            let pin = this.pin_saved_state(dir.clone());
            let result = this.fork_now(&live, &dir, timeout, count).await;
            drop(pin);
            this.sweep_saved_states();
            result
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))?
    }

    async fn fork_now(
        &self,
        live: &Live,
        dir: &std::path::Path,
        timeout: i64,
        count: usize,
    ) -> Result<Vec<Result<Arc<Live>, LifecycleError>>, LifecycleError> {
        let partial = dir.with_extension("partial");
        let saved = live
            .unless_killed(async {
                let slot = live.vm.lock().await;
                let Some(sandbox) = slot.as_ref() else {
                    return Err(LifecycleError::Conflict(format!("sandbox {} is paused; resume it first", live.id())));
                };
                sandbox.save_to(&partial).await?;
                std::fs::rename(&partial, dir).map_err(|e| LifecycleError::Io(format!("publish {}", dir.display()), e))
            })
            .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        let source = live.record();
        tracing::info!(sandbox = %source.id, count, "saved for a fork");
        let mut copies = Vec::with_capacity(count);
        for _ in 0..count {
            let req = NewSandbox {
                template_id: source.template.clone(),
                timeout: Some(timeout),
                metadata: Some(source.metadata.clone()),
                env_vars: Some(source.env_vars.clone()),
                auto_pause: Some(source.lifecycle.auto_pause),
                auto_pause_memory: Some(!source.lifecycle.filesystem_only),
                auto_resume: Some(AutoResume { enabled: source.lifecycle.auto_resume }),
                ..Default::default()
            };
            let net = crate::network::stored(&source);
            let from =
                Source::Fork { dir: dir.to_path_buf(), token: source.access_token.clone(), free_mib: source.disk_mib };
            let copy = self.create_from(&source.team, req, net, from).await;
            match &copy {
                Ok(c) => tracing::info!(sandbox = %source.id, fork = %c.id(), "forked"),
                Err(e) => tracing::warn!(sandbox = %source.id, error = %e, "a fork failed"),
            }
            copies.push(copy);
        }
        Ok(copies)
    }
}
