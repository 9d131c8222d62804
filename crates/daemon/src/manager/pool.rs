//! The pool: sandboxes restored from the default template ahead of time, waiting unassigned for
//! a create, refilled in the background within `--max-sandboxes`.

use std::sync::Arc;
use std::time::Duration;

use ember_runtime::Sandbox;

use super::{Manager, POOL_TEMPLATE};
use crate::network::Checked;

impl Manager {
    /// A live sandbox from the pool, if the pool holds one for `template`.
    pub(super) async fn take_pooled(&self, template: &str) -> Option<Sandbox> {
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
    pub(super) async fn keep_pool_filled(self: Arc<Self>) {
        loop {
            let pooled = self.pool.lock().await.len();
            let busy = self.running() + *self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if pooled < self.config.pool_size && pooled + busy < self.config.max_sandboxes {
                match self.runtime.create(&self.spec(POOL_TEMPLATE, &Checked::open())).await {
                    Ok(sandbox) => {
                        warm_init(&sandbox, self.ca_bundle()).await;
                        self.pool.lock().await.push_back(sandbox)
                    }
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
