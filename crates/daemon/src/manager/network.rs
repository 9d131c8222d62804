//! Network changes of a live sandbox: its policy replaced (`PUT .../network`), and a pooled
//! sandbox given the create's policy before anyone's code runs in it.

use ember_runtime::{EgressPolicy, Sandbox};

use super::{LifecycleError, Live, Manager};
use crate::network::Checked;

impl Manager {
    /// Puts `net` in force for the sandbox: in its namespace first when it runs (a paused one
    /// gets it when resumed), then in the database and the record.
    pub async fn set_network(&self, live: &Live, net: Checked) -> Result<(), LifecycleError> {
        let slot = live.vm.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            self.runtime.set_policy(sandbox, net.policy.clone())?;
        }
        let network = serde_json::to_string(&net.config).unwrap_or_else(|_| "{}".into());
        let mut record = live.record.lock().unwrap_or_else(|e| e.into_inner());
        self.store.set_sandbox_network(&record.id, &network, net.allow_internet)?;
        record.network = network;
        record.allow_internet = net.allow_internet;
        tracing::info!(sandbox = %record.id, "network policy replaced");
        Ok(())
    }

    /// A pooled sandbox (made with the open policy, nothing of a client's run in it yet) with
    /// the create's policy in force; torn down if that fails.
    pub(super) async fn with_policy(&self, sandbox: Sandbox, net: &Checked) -> Result<Sandbox, LifecycleError> {
        if net.policy == EgressPolicy::allow_all() {
            return Ok(sandbox);
        }
        match self.runtime.set_policy(&sandbox, net.policy.clone()) {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                let _ = sandbox.destroy().await;
                Err(e.into())
            }
        }
    }
}
