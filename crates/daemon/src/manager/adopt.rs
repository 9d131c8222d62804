//! At start: adopt what an earlier daemon left running, keep what it left paused, and remove
//! everything else a crash may have left (records without a VM, sandbox directories and QEMUs
//! without a record, half-written snapshots, saved states without a record that no disk is backed by).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ember_runtime::Sandbox;

use ember_store::SandboxState;

use super::Manager;

/// How long an adopted sandbox's agent may take to answer (with retries and backoff) before
/// the sandbox is given up: a loaded host can be slow right after a restart.
const ADOPT_AGENT_WAIT: Duration = Duration::from_secs(30);

impl Manager {
    pub(super) async fn adopt_all(self: &Arc<Self>) {
        let records = match self.store.sandboxes() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading sandbox records; none adopted");
                Vec::new()
            }
        };
        // The earlier daemon's last sign of life: sandboxes found dead died after it.
        let alive_until = self.store.last_heartbeat().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the last heartbeat");
            None
        });
        let mut kept = HashSet::new();
        let mut adopting = tokio::task::JoinSet::new();
        for record in records {
            let id = record.id.clone();
            if self.runtime.is_paused(&id) && !self.runtime.vm_recorded_alive(&id) {
                // Paused, or a pause that saved its state completely before the daemon died.
                // Metered as paused from when its state was saved (a no-op if it was already).
                if let Err(e) = self.store.set_sandbox_state_at(&id, SandboxState::Paused, self.paused_at(&id)) {
                    tracing::error!(sandbox = %id, error = %e, "recording a paused sandbox");
                }
                tracing::info!(sandbox = %id, "kept paused sandbox");
                kept.insert(id);
                self.insert(record, None);
                continue;
            }
            let this = Arc::clone(self);
            adopting.spawn(async move {
                let policy = crate::network::stored(&record).policy;
                let adopted = Sandbox::adopt(&this.runtime, &record.id, ADOPT_AGENT_WAIT, policy).await;
                (record, adopted)
            });
        }
        while let Some(joined) = adopting.join_next().await {
            let Ok((record, adopted)) = joined else { continue };
            let id = record.id.clone();
            match adopted {
                Ok(sandbox) => {
                    tracing::info!(sandbox = %id, "adopted sandbox left running by an earlier daemon");
                    // Its open usage interval goes on (one is opened if an older Ember left none).
                    if let Err(e) = self.store.set_sandbox_state(&id, SandboxState::Running) {
                        tracing::error!(sandbox = %id, error = %e, "recording an adopted sandbox");
                    }
                    kept.insert(id);
                    self.insert(record, Some(sandbox));
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "sandbox from an earlier daemon is gone; removing it");
                    // Metered up to the last time it is known to have been alive.
                    if let Err(e) = self.store.delete_sandbox_at(&id, self.died_at(&id, alive_until)) {
                        tracing::error!(sandbox = %id, error = %e, "deleting a sandbox record");
                    }
                }
            }
        }
        self.runtime.clean_orphans(&kept);
        self.clean_snapshot_leftovers();
    }

    /// Removes half-written snapshots (a crash while taking one), saved states nothing needs
    /// ([`Manager::sweep_saved_states`]) and records whose files are gone.
    fn clean_snapshot_leftovers(&self) {
        let ids: HashSet<String> = match self.store.snapshot_ids() {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading snapshot records; leftovers kept");
                return;
            }
        };
        let root = self.snapshots_root();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".partial") {
                    tracing::info!(dir = %entry.path().display(), "removing a snapshot left by a crash");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        self.sweep_saved_states();
        for id in ids {
            if !self.snapshot_dir(&id).join("state").is_file() {
                tracing::warn!(snapshot = %id, "snapshot files are gone; removing its record");
                let _ = self.store.delete_snapshot(&id);
            }
        }
    }
}
