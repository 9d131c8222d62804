//! The pool: sandboxes restored ahead of time from the pooled templates (`base`, and the code
//! interpreter's), waiting unassigned for a create, refilled in the background within
//! `--max-sandboxes`, one filler per template. The code interpreter's filler is also what builds
//! that template in the background after a start, so the first `run_code` does not wait for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ember_runtime::Sandbox;

use super::{Manager, DEFAULT_TEMPLATE, INTERPRETER_TEMPLATE};
use crate::network::Checked;

/// Pauses between failed fills of a template's pool.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(600);

impl Manager {
    /// The pooled templates and how many sandboxes of each the pool keeps (none when 0).
    pub(super) fn pool_sizes(&self) -> Vec<(&'static str, usize)> {
        [(DEFAULT_TEMPLATE, self.config.pool_size), (INTERPRETER_TEMPLATE, self.config.interpreter_pool_size)]
            .into_iter()
            .filter(|(_, size)| *size > 0)
            .collect()
    }

    /// How many sandboxes each pooled template has ready now.
    pub async fn pool_depths(&self) -> Vec<(&'static str, usize)> {
        let pool = self.pool.lock().await;
        self.pool_sizes().into_iter().map(|(t, _)| (t, pool.get(t).map_or(0, |p| p.len()))).collect()
    }

    /// A live sandbox from the pool, if the pool holds one for `template`.
    pub(super) async fn take_pooled(&self, template: &str) -> Option<Sandbox> {
        let mut pool = self.pool.lock().await;
        let pooled = pool.get_mut(template)?;
        while let Some(mut sandbox) = pooled.pop_front() {
            self.refill.notify_waiters();
            if sandbox.is_alive() {
                return Some(sandbox);
            }
            let _ = sandbox.destroy().await;
        }
        None
    }

    /// Keeps `size` sandboxes of `template` restored ahead of time, within `--max-sandboxes`.
    pub(super) async fn keep_pool_filled(self: Arc<Self>, template: &'static str) {
        let size = self.pool_sizes().into_iter().find(|(t, _)| *t == template).map_or(0, |(_, s)| s);
        // A failing create (a template that does not build) is tried again less and less often.
        let mut pause = FIRST_RETRY;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let (pooled, all_pooled) = {
                let pool = self.pool.lock().await;
                (pool.get(template).map_or(0, |p| p.len()), pool.values().map(|p| p.len()).sum::<usize>())
            };
            let busy = self.running() + self.in_flight_total();
            if pooled < size && all_pooled + busy < self.config.max_sandboxes {
                // Counted until the sandbox is in the pool (or destroyed), so a shutdown that
                // drains the pool does not miss it.
                let _filling = Filling::new(&self.filling);
                match self.runtime.create(&self.spec(template, &Checked::open())).await {
                    Ok(sandbox) => {
                        pause = FIRST_RETRY;
                        warm_init(&sandbox, self.ca_bundle()).await;
                        if template == INTERPRETER_TEMPLATE {
                            warm_interpreter(&sandbox).await;
                        }
                        let mut pool = self.pool.lock().await;
                        if self.stopping.load(Ordering::Acquire) {
                            drop(pool);
                            let _ = sandbox.destroy().await;
                            return;
                        }
                        pool.entry(template).or_default().push_back(sandbox)
                    }
                    Err(e) => {
                        drop(_filling);
                        tracing::error!(template, error = %e, retry_in_secs = pause.as_secs(), "filling the sandbox pool");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_RETRY);
                    }
                }
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.refill.notified()).await;
        }
    }

    /// Stops the fillers and waits (at most [`STOP_WAIT`]) for their creates in flight, which
    /// destroy what they made; a create still running after that (a template being built) is
    /// left to the next start's clean-up.
    pub(super) async fn stop_pool(&self) {
        self.stopping.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while self.filling.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How long a shutdown waits for the pool's creates in flight.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Counts one pool create in flight while it lives.
struct Filling<'a>(&'a AtomicUsize);

impl<'a> Filling<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs the agent's `/init` once on a pooled sandbox, with the token it already holds and the
/// identity fields a create will send (its own hostname, the host's time, fresh entropy, no env
/// vars), so that under TCG the create's `/init` finds its code already translated in this QEMU
/// process (the state-file write, clock, RNG and hostname paths) instead of paying for that on the
/// create's path. Nothing a create relies on changes: the create's `/init` sets the real identity.
async fn warm_init(sandbox: &Sandbox, ca_bundle: Option<String>) {
    let token = sandbox.agent().token().map(str::to_string);
    let request = super::init_request(sandbox.id(), Default::default(), token.clone(), ca_bundle);
    if let Err(e) = sandbox.agent().post_json("/init", &request, token.as_deref()).await {
        tracing::debug!(sandbox = %sandbox.id(), error = %e, "warming a pooled sandbox's /init");
    }
}

/// Has the code interpreter of a pooled sandbox run a cell in each of its warm contexts, outside
/// their history (`POST /warm`, the interpreter's own): under TCG a restored guest translates
/// the kernels' code afresh on their first cell, which this takes off the client's first
/// `run_code`. The execution counts and variables a client sees do not change.
async fn warm_interpreter(sandbox: &Sandbox) {
    let token = sandbox.agent().token().map(str::to_string);
    let interpreter = sandbox.agent().with_port(ember_image::template::INTERPRETER_PORT);
    if let Err(e) = interpreter.post_json("/warm", &serde_json::json!({}), token.as_deref()).await {
        tracing::debug!(sandbox = %sandbox.id(), error = %e, "warming a pooled sandbox's code interpreter");
    }
}
