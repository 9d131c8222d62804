//! Team quotas, checked when a sandbox would get a VM (a create, a resume), and the times the
//! metering records when the daemon learns of a change late (a sandbox found dead or paused
//! at start). Metering itself is in the store: a sandbox's usage interval opens and closes
//! with its record, in the same transaction, so there is nothing to do per sandbox per second.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use ember_store::{now_ms, Quota};

use super::{LifecycleError, Manager};

/// How often the daemon records that it is alive: the most a sandbox that dies while no
/// daemon runs can be under-metered by, besides the time until the next daemon starts.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates and resumes in flight: how many in all, and per team how many and with what shape.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    total: usize,
    teams: HashMap<String, Load>,
}

/// What a team's running sandboxes hold: how many, their vCPUs and memory (MiB).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Load {
    sandboxes: u64,
    vcpus: u64,
    memory_mib: u64,
}

impl Load {
    fn of((vcpus, memory_mib): (u32, u32)) -> Self {
        Load { sandboxes: 1, vcpus: u64::from(vcpus), memory_mib: u64::from(memory_mib) }
    }

    fn plus(self, o: Load) -> Self {
        Load {
            sandboxes: self.sandboxes + o.sandboxes,
            vcpus: self.vcpus + o.vcpus,
            memory_mib: self.memory_mib + o.memory_mib,
        }
    }

    fn minus(self, o: Load) -> Self {
        Load {
            sandboxes: self.sandboxes.saturating_sub(o.sandboxes),
            vcpus: self.vcpus.saturating_sub(o.vcpus),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
        }
    }
}

/// A reserved place for a VM; given back when dropped.
pub(super) struct SlotGuard<'a> {
    in_flight: &'a Mutex<InFlight>,
    team: Option<(String, Load)>,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        f.total -= 1;
        if let Some((team, load)) = self.team.take() {
            let left = f.teams.get(&team).copied().unwrap_or_default().minus(load);
            match left.sandboxes {
                0 => f.teams.remove(&team),
                _ => f.teams.insert(team, left),
            };
        }
    }
}

impl Manager {
    /// The quota that applies to `team`: its own values over the daemon's defaults.
    pub fn quota_of(&self, team: &str) -> Result<Quota, LifecycleError> {
        Ok(self.store.quota(team)?.over(&self.config.team_quota))
    }

    /// Creates and resumes in flight, all teams together.
    pub(super) fn in_flight_total(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Reserves a place for a VM of no team (a template build): the host's limit only.
    pub(super) fn reserve_slot(&self) -> Result<SlotGuard<'_>, LifecycleError> {
        self.reserve(None)
    }

    /// Reserves a place for a VM of `team` with `shape` (vCPUs, MiB): the host's limit and the
    /// team's quotas (concurrent sandboxes, vCPUs, memory, minutes this month). Checked and
    /// counted under one lock, so concurrent creates cannot pass a limit together.
    pub(super) fn reserve_for(&self, team: &str, shape: (u32, u32)) -> Result<SlotGuard<'_>, LifecycleError> {
        let quota = self.quota_of(team)?;
        if let Some(max) = quota.max_minutes_month {
            let used = self.store.minutes_this_month(team, now_ms())?;
            if used >= max {
                return Err(LifecycleError::Quota(format!(
                    "team quota: {max} sandbox-minutes per month, and team '{team}' has used {used} this month"
                )));
            }
        }
        self.reserve(Some((team, shape, quota)))
    }

    fn reserve(&self, team: Option<(&str, (u32, u32), Quota)>) -> Result<SlotGuard<'_>, LifecycleError> {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // The team's quota first: it is the more specific answer.
        let team = match team {
            None => None,
            Some((team, shape, quota)) => {
                let load = Load::of(shape);
                let held = self.team_load(team).plus(f.teams.get(team).copied().unwrap_or_default());
                check_quota(team, &quota, held, load)?;
                Some((team.to_string(), load))
            }
        };
        if self.running() + f.total >= self.config.max_sandboxes {
            return Err(LifecycleError::TooMany(format!(
                "at most {} sandboxes may run at once",
                self.config.max_sandboxes
            )));
        }
        if let Some((team, load)) = &team {
            let entry = f.teams.entry(team.clone()).or_default();
            *entry = entry.plus(*load);
        }
        f.total += 1;
        Ok(SlotGuard { in_flight: &self.in_flight, team })
    }

    /// What `team`'s sandboxes with a VM hold now.
    fn team_load(&self, team: &str) -> Load {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.values()
            .map(|l| l.record())
            .filter(|r| r.team == team && r.state == ember_store::SandboxState::Running)
            .fold(Load::default(), |acc, r| acc.plus(Load::of((r.vcpus, r.memory_mib))))
    }

    /// When a sandbox found dead at start stopped, as best known: the earlier daemon's last
    /// heartbeat (`alive_until`; had the sandbox died before, that daemon would have seen it)
    /// or the last write to its serial console, whichever is later; now if neither is known.
    pub(super) fn died_at(&self, id: &str, alive_until: Option<i64>) -> i64 {
        let dir = self.runtime.sandbox_dir(id);
        let console = ["serial.log", "serial.qemu.log"].iter().filter_map(|f| mtime_ms(&dir.join(f))).max();
        console.max(alive_until).map_or_else(now_ms, |t| t.min(now_ms()))
    }

    /// Records every [`HEARTBEAT`] that the daemon is alive (one row, whatever the number of
    /// sandboxes), for [`Manager::died_at`] of the next daemon.
    pub(super) async fn keep_heartbeat(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            if let Err(e) = self.store.heartbeat(now_ms()) {
                tracing::warn!(error = %e, "recording the daemon's heartbeat");
            }
        }
    }

    /// When a sandbox found paused at start (a pause that completed as the daemon died) stopped
    /// running: when its saved state was written, or now.
    pub(super) fn paused_at(&self, id: &str) -> i64 {
        let dir = self.runtime.sandbox_dir(id);
        ["pause.state", "pause.disk"].iter().filter_map(|f| mtime_ms(&dir.join(f))).max().unwrap_or_else(now_ms)
    }
}

/// Whether one more VM of `load` fits `team`'s `quota` beside what it `held`.
fn check_quota(team: &str, quota: &Quota, held: Load, load: Load) -> Result<(), LifecycleError> {
    let over = |max: Option<u64>, held: u64, more: u64| max.filter(|&max| held + more > max);
    if let Some(max) = over(quota.max_sandboxes, held.sandboxes, load.sandboxes) {
        return Err(LifecycleError::Quota(format!(
            "team quota: at most {max} concurrent sandboxes (team '{team}' has {} running)",
            held.sandboxes
        )));
    }
    if let Some(max) = over(quota.max_vcpus, held.vcpus, load.vcpus) {
        return Err(LifecycleError::Quota(format!(
            "team quota: at most {max} vCPUs in running sandboxes (team '{team}' has {}, this needs {})",
            held.vcpus, load.vcpus
        )));
    }
    if let Some(max) = over(quota.max_memory_mib, held.memory_mib, load.memory_mib) {
        return Err(LifecycleError::Quota(format!(
            "team quota: at most {max} MiB of memory in running sandboxes (team '{team}' has {}, this needs {})",
            held.memory_mib, load.memory_mib
        )));
    }
    Ok(())
}

fn mtime_ms(path: &Path) -> Option<i64> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_quota_names_itself_and_unset_ones_do_not_limit() {
        let held = Load { sandboxes: 2, vcpus: 4, memory_mib: 1024 };
        let one = Load::of((2, 512));
        assert!(check_quota("t", &Quota::default(), held, one).is_ok());
        let q = |f: fn(&mut Quota)| {
            let mut q = Quota::default();
            f(&mut q);
            check_quota("t", &q, held, one).map_err(|e| e.to_string())
        };
        assert!(q(|q| q.max_sandboxes = Some(2)).unwrap_err().contains("at most 2 concurrent sandboxes"));
        assert!(q(|q| q.max_sandboxes = Some(3)).is_ok());
        assert!(q(|q| q.max_vcpus = Some(5)).unwrap_err().contains("at most 5 vCPUs"));
        assert!(q(|q| q.max_vcpus = Some(6)).is_ok());
        assert!(q(|q| q.max_memory_mib = Some(1500)).unwrap_err().contains("at most 1500 MiB"));
        assert!(q(|q| q.max_memory_mib = Some(1536)).is_ok());
    }
}
