//! Pause and resume. Both run on a task of their own (a client that goes away does not cut
//! them short) and give up at once when the sandbox is killed. A pause that fails leaves the
//! sandbox running; a resume that fails after its VM started ends the sandbox, since its disk
//! has moved on from the saved memory, so the record and the processes always agree.

use std::sync::Arc;

use ember_store::now_ms;

use super::{init_agent, LifecycleError, Live, Manager};

impl Manager {
    /// Pauses a running sandbox, with its memory or (`keep_memory` false) only its filesystem
    /// (409 if it is paused already; 429 past the team's limit of paused sandboxes).
    pub async fn pause(self: &Arc<Self>, live: Arc<Live>, keep_memory: bool) -> Result<(), LifecycleError> {
        self.pause_when(live, keep_memory, false).await
    }

    /// [`Manager::pause`]; with `if_due`, only if its time is still up once the VM is held (a
    /// connect or `set_timeout` that came meanwhile wins: 409).
    pub(super) async fn pause_when(
        self: &Arc<Self>,
        live: Arc<Live>,
        keep_memory: bool,
        if_due: bool,
    ) -> Result<(), LifecycleError> {
        if live.is_paused() {
            return Err(LifecycleError::Conflict(format!("sandbox {} is already paused", live.id())));
        }
        let team = live.record().team;
        let paused = self.list(&team).iter().filter(|r| r.state == ember_store::SandboxState::Paused).count();
        if paused >= self.config.max_paused_per_team {
            return Err(LifecycleError::Quota(format!(
                "team has {paused} paused sandboxes, the most it may keep; kill or resume one first"
            )));
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let op = this.pause_now(&live, keep_memory, if_due);
            live.unless_killed(op).await
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))?
    }

    async fn pause_now(&self, live: &Live, keep_memory: bool, if_due: bool) -> Result<(), LifecycleError> {
        let mut slot = live.vm.lock().await;
        let id = live.id();
        if if_due && live.record().end_ms > now_ms() {
            return Err(LifecycleError::Conflict(format!("sandbox {id}'s time is no longer up")));
        }
        let Some(sandbox) = slot.take() else {
            return Err(LifecycleError::Conflict(format!("sandbox {id} is already paused")));
        };
        let started = std::time::Instant::now();
        let paused = match keep_memory {
            true => sandbox.pause().await,
            false => sandbox.pause_filesystem(live.record().access_token).await,
        };
        if let Err((sandbox, e)) = paused {
            *slot = Some(sandbox);
            return Err(e.into());
        }
        // The VM is gone and its state saved: paused, whatever the database says; a daemon that
        // restarts finds `pause.state` and agrees.
        if let Err(e) = self.transition(live, &mut slot, None) {
            tracing::error!(sandbox = %id, error = %e, "recording a pause; the next start will see it");
            live.record.lock().unwrap_or_else(|e| e.into_inner()).state = ember_store::SandboxState::Paused;
        }
        tracing::info!(sandbox = %id, ms = super::millis(started.elapsed()), "sandbox paused");
        crate::prom::TELEMETRY.pause_seconds.observe(started.elapsed());
        live.observed.event(
            "info",
            match keep_memory {
                true => "sandbox paused (memory and filesystem saved)",
                false => "sandbox paused (filesystem saved; a resume boots it)",
            },
        );
        Ok(())
    }

    /// Resumes a paused sandbox with a new time-out; false if it was running already. It decides
    /// under the VM's lock, so a connect that comes during a pause waits for it and resumes,
    /// and concurrent resumes resume once (the others answer false).
    pub async fn resume(self: &Arc<Self>, live: Arc<Live>, timeout_secs: i64) -> Result<bool, LifecycleError> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let vm_started = std::sync::atomic::AtomicBool::new(false);
            let result = live.unless_killed(this.resume_now(&live, timeout_secs, &vm_started)).await;
            if let Err(e) = &result {
                // What fails before a VM starts (a limit, a quota, the database answering the
                // quota check) leaves the sandbox paused, its state untouched.
                let started = vm_started.load(std::sync::atomic::Ordering::Acquire);
                if started && !matches!(e, LifecycleError::Ended(_) | LifecycleError::Conflict(_)) {
                    tracing::error!(sandbox = %live.id(), error = %e, "resume failed; ending the sandbox");
                    this.kill(&live, "failed to resume").await;
                }
            }
            result
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))?
    }

    async fn resume_now(
        &self,
        live: &Live,
        timeout_secs: i64,
        vm_started: &std::sync::atomic::AtomicBool,
    ) -> Result<bool, LifecycleError> {
        let mut slot = live.vm.lock().await;
        if slot.is_some() {
            return Ok(false);
        }
        // Only a resume that brings a VM back takes one of the host's sandbox slots.
        let record = live.record();
        let _reserved = self.reserve_for(&record.team, (record.vcpus, record.memory_mib))?;
        let started = std::time::Instant::now();
        let policy = crate::network::stored(&record).policy;
        let cold = self.runtime.pause_mode(&record.id) == Some(ember_runtime::snapshot::PauseMode::Filesystem);
        vm_started.store(true, std::sync::atomic::Ordering::Release);
        let sandbox = self.runtime.resume(&record.id, false, policy).await?;
        if cold {
            // Booted from its disk: the agent holds the boot's token and knows no defaults.
            let defaults = match self.resolve_template(&record.team, &record.template) {
                Ok(super::Source::Built { defaults, .. }) => defaults,
                _ => ember_builder::Defaults::base(),
            };
            init_agent(sandbox.agent(), &record, Some(&defaults), sandbox.agent().token(), self.ca_bundle()).await?;
        } else {
            // The resumed agent holds the sandbox's token; this sets the clock and reseeds the RNG.
            init_agent(sandbox.agent(), &record, None, record.access_token.as_deref(), self.ca_bundle()).await?;
        }
        self.set_end(live, now_ms() + timeout_secs * 1000, false)?;
        // Not recorded as running: the VM is torn down, and the caller ends the sandbox.
        self.transition(live, &mut slot, Some(sandbox))?;
        tracing::info!(sandbox = %record.id, ms = super::millis(started.elapsed()), "sandbox resumed");
        crate::prom::TELEMETRY.resume_seconds.observe(started.elapsed());
        live.observed.event("info", "sandbox resumed");
        Ok(true)
    }
}
