//! Network slots made ahead of time: namespaces with their tap, each named for the sandbox id
//! that will use it (`ember-ID`), so a create takes one instead of spending two `ip` calls.
//! Each waiting slot has an owner marker in `DATA/slots/ID`, so that a crash never leaks one:
//! the next start removes slots whose owner is gone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ember_net::Netns;

use crate::sandbox::new_id;
use crate::{io_err, reconcile, RuntimeError};

/// A slot handed to a new sandbox; its marker goes once the sandbox's directory exists.
pub(crate) struct Slot {
    pub id: String,
    pub netns: Netns,
    marker: PathBuf,
}

impl Slot {
    /// Drops the waiting-slot marker (the sandbox directory owns the namespace now).
    pub fn claim(&self) {
        let _ = std::fs::remove_dir_all(&self.marker);
    }
}

pub(crate) struct Slots {
    dir: PathBuf,
    pool: Arc<Pool>,
    target: usize,
    /// nftables rules every slot starts with (the open policy's).
    rules: Arc<String>,
}

/// The waiting slots and the one thread that tops them up, under one lock so that a take
/// never misses a filler that is about to stop, and a release can wait for it.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    /// Signalled when the filler stops.
    idle: Condvar,
}

#[derive(Default)]
struct PoolState {
    ready: Vec<(String, Netns)>,
    /// A filler thread is running.
    filling: bool,
    /// Set by [`Slots::release`]: no slot is made or kept after it.
    closed: bool,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a release waits for a slot being made to be finished (and deleted).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

impl Slots {
    pub fn new(data_dir: &Path, target: usize, rules: String) -> Result<Self, RuntimeError> {
        let dir = data_dir.join("slots");
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(Self { dir, pool: Arc::default(), target, rules: Arc::new(rules) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A ready slot, or a new one made now; then the pool is topped up in the background.
    pub fn take(&self) -> Result<Slot, RuntimeError> {
        let ready = self.pool.lock().ready.pop();
        let (id, netns) = match ready {
            Some(slot) => slot,
            None => make(&self.dir, &self.rules)?,
        };
        self.fill();
        Ok(Slot { marker: self.dir.join(&id), id, netns })
    }

    /// Makes slots up to the target on a thread of its own (one at a time).
    pub fn fill(&self) {
        {
            let mut state = self.pool.lock();
            if state.filling || state.closed || state.ready.len() >= self.target {
                return;
            }
            state.filling = true;
        }
        let (dir, pool, target, rules) =
            (self.dir.clone(), Arc::clone(&self.pool), self.target, Arc::clone(&self.rules));
        std::thread::spawn(move || {
            let stop = |mut state: std::sync::MutexGuard<'_, PoolState>| {
                state.filling = false;
                drop(state);
                pool.idle.notify_all();
            };
            let mut state = pool.lock();
            loop {
                if state.closed || state.ready.len() >= target {
                    return stop(state);
                }
                drop(state);
                let made = make(&dir, &rules);
                state = pool.lock();
                match made {
                    Ok((id, netns)) if state.closed => {
                        // Released meanwhile: this one goes too.
                        drop(netns);
                        let _ = std::fs::remove_dir_all(dir.join(&id));
                    }
                    Ok(slot) => state.ready.push(slot),
                    Err(e) => {
                        tracing::warn!(error = %e, "making a network slot ahead of time");
                        return stop(state);
                    }
                }
            }
        });
    }

    /// Deletes the waiting slots, after waiting (a while) for one being made; none is made
    /// after this.
    pub fn release(&self) {
        let mut state = self.pool.lock();
        state.closed = true;
        for (id, netns) in state.ready.drain(..) {
            drop(netns);
            let _ = std::fs::remove_dir_all(self.dir.join(id));
        }
        let (state, waited) = self
            .pool
            .idle
            .wait_timeout_while(state, RELEASE_WAIT, |state| state.filling)
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() {
            tracing::warn!("a network slot was still being made at release; the next start removes it");
        }
        drop(state);
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.release();
    }
}

fn make(dir: &Path, rules: &str) -> Result<(String, Netns), RuntimeError> {
    let id = new_id();
    let marker = dir.join(&id);
    std::fs::create_dir(&marker).map_err(io_err(format!("create {}", marker.display())))?;
    reconcile::record_owner(&marker)?;
    match Netns::create(&ember_net::name_for(&id), rules) {
        Ok(netns) => Ok((id, netns)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&marker);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True, after saying so, when the test cannot run: network namespaces need root.
    fn skip_without_root() -> bool {
        let skip = !nix::unistd::geteuid().is_root();
        if skip {
            eprintln!("skipped: needs root (network namespaces)");
        }
        skip
    }

    fn open_rules() -> String {
        ember_net::nft::namespace_rules(&crate::EgressPolicy::allow_all(), &Default::default())
    }

    fn exists(id: &str) -> bool {
        ember_net::path_of(&ember_net::name_for(id)).exists()
    }

    #[test]
    fn slots_are_made_ahead_taken_and_released() {
        if skip_without_root() {
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let slots = Slots::new(data.path(), 2, open_rules()).unwrap();
        slots.fill();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while slots.pool.lock().ready.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let waiting: Vec<String> = slots.pool.lock().ready.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(waiting.len(), 2);
        assert!(waiting.iter().all(|id| exists(id) && slots.dir().join(id).join("owner").exists()));
        let slot = slots.take().unwrap();
        assert!(waiting.contains(&slot.id), "a ready slot was handed out");
        slot.claim();
        assert!(!slots.dir().join(&slot.id).exists(), "claimed: the marker is gone");
        assert!(exists(&slot.id));
        drop(slot);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let left: Vec<String> = slots.pool.lock().ready.iter().map(|(id, _)| id.clone()).collect();
        slots.release();
        assert!(left.iter().all(|id| !exists(id) && !slots.dir().join(id).exists()), "released slots are deleted");
        assert!(!waiting.iter().any(|id| exists(id)));
    }

    #[test]
    fn a_release_during_a_fill_leaves_nothing() {
        if skip_without_root() {
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let slots = Slots::new(data.path(), 4, open_rules()).unwrap();
        slots.fill();
        // Let the filler get into making a slot, then release under it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        slots.release();
        let left: Vec<_> = std::fs::read_dir(slots.dir()).unwrap().collect();
        assert!(left.is_empty(), "markers left after release: {left:?}");
        slots.fill();
        assert!(!slots.pool.lock().filling, "no slot is made after a release");
    }

    #[test]
    fn a_crashed_owners_slots_are_cleaned_up() {
        if skip_without_root() {
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let slots = Slots::new(data.path(), 0, open_rules()).unwrap();
        let (id, netns) = make(slots.dir(), &open_rules()).unwrap();
        // As if the owner died: forget the namespace and point the marker at a dead process.
        netns.detach();
        std::fs::write(slots.dir().join(&id).join("owner"), "999999999 5").unwrap();
        assert!(exists(&id));
        crate::reconcile::clean_orphans(slots.dir(), &Default::default());
        assert!(!exists(&id) && !slots.dir().join(&id).exists());
    }
}
