//! The reaper: ends (or, as their lifecycle says, pauses) sandboxes whose time is up, forgets those whose VM died, and
//! re-initialises an agent that restarted without its state. It never waits on a guest or on
//! a teardown: each of those runs on a task of its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ember_store::now_ms;

use super::{init_agent, LifecycleError, Live, Manager};

/// How often the reaper looks at every sandbox.
const TICK: Duration = Duration::from_millis(250);
/// How often each running sandbox's agent is asked whether it still holds its token.
const AGENT_CHECK_EVERY: u32 = 20;
/// How long a time-out pause that a quota refused waits before it is tried again.
const QUOTA_RETRY_MS: i64 = 60_000;
/// How long that check may take.
const AGENT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

impl Manager {
    pub(super) async fn reap(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        let mut round: u32 = 0;
        loop {
            tick.tick().await;
            round = round.wrapping_add(1);
            let now = now_ms();
            for live in self.all() {
                let (paused, end_ms) = {
                    let record = live.record.lock().unwrap_or_else(|e| e.into_inner());
                    (record.state == ember_store::SandboxState::Paused, record.end_ms)
                };
                if paused {
                    continue;
                }
                if end_ms <= now {
                    self.time_out(live);
                    continue;
                }
                let dead = match live.vm.try_lock() {
                    Ok(mut guard) => guard.as_mut().is_some_and(|s| !s.is_alive()),
                    Err(_) => false,
                };
                if dead {
                    self.kill_in_background(live, "its VM exited");
                } else if round.is_multiple_of(AGENT_CHECK_EVERY) {
                    tokio::spawn(reinit_if_needed(live, self.ca_bundle()));
                }
            }
        }
    }

    /// Acts on a sandbox whose time is up, once: pauses it if its lifecycle says so (ending
    /// it if that pause fails), else ends it.
    fn time_out(self: &Arc<Self>, live: Arc<Live>) {
        if !live.record().lifecycle.auto_pause {
            return self.kill_in_background(live, "timed out");
        }
        if live.timing_out.swap(true, Ordering::SeqCst) {
            return;
        }
        live.observed.event("info", "timed out: pausing (its lifecycle says pause)");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let keep_memory = !live.record().lifecycle.filesystem_only;
            let result = this.pause_when(Arc::clone(&live), keep_memory, true).await;
            live.timing_out.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => tracing::info!(sandbox = %live.id(), "timed out: paused (its lifecycle says pause)"),
                Err(LifecycleError::Ended(_) | LifecycleError::Conflict(_)) => {}
                Err(LifecycleError::Quota(why)) => {
                    // The owner asked to keep it: it runs on, and the pause is tried again later.
                    tracing::warn!(sandbox = %live.id(), why, "time-out pause refused by a quota; retrying in a minute");
                    live.observed.event("warn", format!("time-out pause refused ({why}); retrying in a minute"));
                    if let Err(e) = this.set_end(&live, now_ms() + QUOTA_RETRY_MS, false) {
                        tracing::warn!(sandbox = %live.id(), error = %e, "postponing a time-out");
                    }
                }
                Err(e) => {
                    tracing::warn!(sandbox = %live.id(), error = %e, "timed out and the pause failed; ending it");
                    this.kill(&live, "timed out (pause failed)").await;
                }
            }
        });
    }

    fn kill_in_background(self: &Arc<Self>, live: Arc<Live>, why: &'static str) {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.kill(&live, why).await });
    }
}

/// Gives a restarted agent that lost its state (its `/health` says it holds no token) the
/// sandbox's identity again.
async fn reinit_if_needed(live: Arc<Live>, ca_bundle: Option<String>) {
    let id = live.id();
    match live.agent.initialised(AGENT_CHECK_TIMEOUT).await {
        Ok(false) => {
            tracing::warn!(sandbox = %id, "the agent restarted without its state; initialising it again");
            if let Err(e) = init_agent(&live.agent, &live.record(), None, None, ca_bundle).await {
                tracing::warn!(sandbox = %id, error = %e, "re-initialising the agent");
            }
        }
        Ok(true) => {}
        Err(e) => tracing::debug!(sandbox = %id, error = %e, "agent check"),
    }
}
