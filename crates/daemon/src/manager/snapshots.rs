//! Snapshots of running sandboxes, usable as templates: taking one (within the team's count
//! and the host's byte quota), deleting one, and where their files live. A snapshot is written
//! into `ID.partial` and renamed when complete, so a crash leaves nothing that looks whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_store::{now_ms, SnapshotRecord};

use super::{random_hex, LifecycleError, Live, Manager};

impl Manager {
    /// Where every snapshot's files live.
    pub(super) fn snapshots_root(&self) -> PathBuf {
        self.config.data_dir.join("snapshots")
    }

    /// Where snapshot `id`'s files live.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.snapshots_root().join(id)
    }

    /// Checks the team's snapshot count and the host's snapshot bytes.
    fn check_snapshot_quota(&self, team: &str) -> Result<(), LifecycleError> {
        let count = self.store.snapshots(team)?.len();
        if count >= self.config.max_snapshots_per_team {
            return Err(LifecycleError::Quota(format!(
                "team has {count} snapshots, the most it may keep; delete one first"
            )));
        }
        self.check_snapshot_bytes()
    }

    /// Checks the host's snapshot bytes (snapshots and forks' saved states).
    pub(super) fn check_snapshot_bytes(&self) -> Result<(), LifecycleError> {
        let used = dir_bytes(&self.snapshots_root());
        if used >= self.config.max_snapshot_bytes {
            return Err(LifecycleError::Quota(format!(
                "snapshots use {} MiB, the host's limit ({} MiB); delete some first",
                used >> 20,
                self.config.max_snapshot_bytes >> 20
            )));
        }
        Ok(())
    }

    /// Saves a running sandbox as a snapshot that creates can start from; it runs on.
    pub async fn snapshot(
        self: &Arc<Self>,
        live: Arc<Live>,
        name: Option<String>,
    ) -> Result<SnapshotRecord, LifecycleError> {
        self.check_snapshot_quota(&live.record().team)?;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let id = random_hex(10);
            let partial = this.snapshots_root().join(format!("{id}.partial"));
            let result = live.unless_killed(this.snapshot_now(&live, &id, &partial, name)).await;
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&partial);
                let _ = std::fs::remove_dir_all(this.snapshot_dir(&id));
            }
            result
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))?
    }

    async fn snapshot_now(
        &self,
        live: &Live,
        id: &str,
        partial: &Path,
        name: Option<String>,
    ) -> Result<SnapshotRecord, LifecycleError> {
        let slot = live.vm.lock().await;
        let record = live.record();
        let Some(sandbox) = slot.as_ref() else {
            return Err(LifecycleError::Conflict(format!("sandbox {} is paused; resume it first", record.id)));
        };
        sandbox.save_to(partial).await?;
        let dir = self.snapshot_dir(id);
        // Published whole under the sweep's lock: a sweep sees it with its record or not at all.
        let publishing = self.saved_states.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::rename(partial, &dir).map_err(|e| LifecycleError::Io(format!("publish {}", dir.display()), e))?;
        let snapshot = SnapshotRecord {
            name: name.unwrap_or_else(|| id.to_string()),
            id: id.to_string(),
            team: record.team.clone(),
            sandbox_id: record.id.clone(),
            created_ms: now_ms(),
            agent_token: record.access_token.clone(),
        };
        self.store.insert_snapshot(&snapshot)?;
        drop(publishing);
        tracing::info!(sandbox = %record.id, snapshot = %snapshot.id, "snapshot taken");
        Ok(snapshot)
    }

    /// The team's snapshot that `key` names: its id, or its E2B name (`name`, `name:tag` or
    /// `team/name:tag`; a name without a tag means `latest`), the newest of that name.
    pub fn find_snapshot(&self, team: &str, key: &str) -> Result<Option<SnapshotRecord>, LifecycleError> {
        if let Some(found) = self.store.find_snapshot(team, key)? {
            return Ok(Some(found));
        }
        match snapshot_name(team, key) {
            Ok(name) if name != key => Ok(self.store.find_snapshot(team, &name)?),
            _ => Ok(None),
        }
    }

    /// Deletes one of the team's snapshots (by id or E2B name, [`Manager::find_snapshot`]);
    /// false if there is none. Its files go
    /// when no disk is backed by them any more (sandboxes made from it keep running, pausing
    /// and resuming): see [`Manager::sweep_saved_states`].
    pub fn delete_snapshot(&self, team: &str, id: &str) -> Result<bool, LifecycleError> {
        let Some(snapshot) = self.find_snapshot(team, id)? else { return Ok(false) };
        self.store.delete_snapshot(&snapshot.id)?;
        self.sweep_saved_states();
        Ok(true)
    }

    /// Keeps the saved state in `dir` from the sweep until the guard goes.
    pub(super) fn pin_saved_state(&self, dir: PathBuf) -> StatePin<'_> {
        *self.saved_states.lock().unwrap_or_else(|e| e.into_inner()).entry(dir.clone()).or_default() += 1;
        StatePin { manager: self, dir }
    }

    /// Removes the saved states in the snapshots directory that nothing needs: no record (a
    /// deleted snapshot, a fork's state), not pinned, not being written (`*.partial`), and no
    /// disk in the data directory backed by them (a chain of such states goes in one sweep).
    /// It holds the saved states' lock throughout.
    pub(super) fn sweep_saved_states(&self) {
        let pinned = self.saved_states.lock().unwrap_or_else(|e| e.into_inner());
        let recorded: HashSet<String> = match self.store.snapshot_ids() {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading snapshot records; saved states kept");
                return;
            }
        };
        let Ok(entries) = std::fs::read_dir(self.snapshots_root()) else { return };
        let unneeded: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                !name.ends_with(".partial") && !recorded.contains(&name) && !pinned.contains_key(p)
            })
            .collect();
        if unneeded.is_empty() {
            return;
        }
        let used = self.backing_images(&unneeded);
        for dir in unneeded {
            if used.contains(&dir.join(ember_runtime::private::SNAPSHOT_DISK)) {
                tracing::debug!(dir = %dir.display(), "a saved state without a record is kept: disks are backed by it");
            } else if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a saved state");
            } else {
                tracing::info!(dir = %dir.display(), "removed a saved state nothing needs");
            }
        }
    }
}

/// A saved state kept from the sweep ([`Manager::pin_saved_state`]).
pub(super) struct StatePin<'a> {
    manager: &'a Manager,
    dir: PathBuf,
}

impl Drop for StatePin<'_> {
    fn drop(&mut self) {
        let mut pins = self.manager.saved_states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pins.get_mut(&self.dir) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.dir);
            }
        }
    }
}

/// The tag of a snapshot name that names none (E2B's).
pub const DEFAULT_TAG: &str = "latest";

/// A snapshot name as stored: `name:tag` (the tag `latest` if none), from `name`, `name:tag` or
/// `team/name:tag` (another team's namespace is refused). Names are 1-128 letters, digits and
/// `-_.`, tags the same.
pub fn snapshot_name(team: &str, given: &str) -> Result<String, LifecycleError> {
    let invalid = || {
        LifecycleError::Invalid(format!(
            "snapshot name '{given}': use NAME, NAME:TAG or {team}/NAME:TAG (letters, digits and -_., at most 128)"
        ))
    };
    let rest = match given.split_once('/') {
        Some((namespace, rest)) if namespace == team => rest,
        Some(_) => return Err(invalid()),
        None => given,
    };
    let (name, tag) = rest.split_once(':').unwrap_or((rest, DEFAULT_TAG));
    let ok =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok(name) || !ok(tag) {
        return Err(invalid());
    }
    Ok(format!("{name}:{tag}"))
}

/// Bytes of the files under `dir` (allocated blocks, so sparse files count what they use).
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_get_a_tag_and_lose_their_own_namespace() {
        assert_eq!(snapshot_name("team", "snap").unwrap(), "snap:latest");
        assert_eq!(snapshot_name("team", "snap:v2").unwrap(), "snap:v2");
        assert_eq!(snapshot_name("team", "team/snap:v2").unwrap(), "snap:v2");
        for bad in ["other/snap", "", ":v1", "snap:", "a b", "snap:v:2", "team/", &"x".repeat(129)] {
            assert!(snapshot_name("team", bad).is_err(), "{bad:?}");
        }
    }
}
