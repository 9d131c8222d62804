//! Finds and removes what an `ember` process that died left behind: each sandbox directory
//! records its owner (pid and start time) and its QEMU pid; a directory whose owner is gone has
//! its QEMU killed, its namespace deleted and itself removed.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{io_err, RuntimeError};

const OWNER_FILE: &str = "owner";
const VM_FILE: &str = "qemu.pid";

use ember_vmm::vm::{alive, identity};

/// Records the current process as the owner of sandbox directory `dir`.
pub fn record_owner(dir: &Path) -> Result<(), RuntimeError> {
    let me = identity(std::process::id()).unwrap_or_default();
    std::fs::write(dir.join(OWNER_FILE), me).map_err(io_err("record sandbox owner"))
}

/// Records the sandbox's QEMU process.
pub fn record_vm(dir: &Path, pid: u32) -> Result<(), RuntimeError> {
    std::fs::write(dir.join(VM_FILE), identity(pid).unwrap_or_default()).map_err(io_err("record QEMU pid"))
}

/// Reads the recorded QEMU identity of a sandbox directory.
pub fn recorded_vm(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(VM_FILE)).ok().filter(|s| !s.trim().is_empty())
}

/// Removes every sandbox under `sandboxes` whose owner is no longer running, except `keep`.
pub fn clean_orphans(sandboxes: &Path, keep: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(sandboxes) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let id = entry.file_name().to_string_lossy().into_owned();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap_or_default();
        if alive(&owner) || keep.contains(&id) {
            continue;
        }
        tracing::info!(sandbox = %id, "removing sandbox left behind by a dead ember process");
        let vm = std::fs::read_to_string(dir.join(VM_FILE)).unwrap_or_default();
        if alive(&vm) {
            if let Some(pid) = vm.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Err(e) = ember_net::Netns::delete_by_name(&ember_net::name_for(&id)) {
            tracing::warn!(sandbox = %id, error = %e, "deleting leftover namespace");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_are_removed_and_live_or_kept_sandboxes_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sandboxes = dir.path();
        let dead = sandboxes.join("deadsandbox");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(OWNER_FILE), "999999999 5").unwrap();
        let live = sandboxes.join("livesandbox");
        std::fs::create_dir(&live).unwrap();
        record_owner(&live).unwrap();
        let kept = sandboxes.join("keptsandbox");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join(OWNER_FILE), "999999999 5").unwrap();
        clean_orphans(sandboxes, &["keptsandbox".to_string()].into_iter().collect());
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(kept.exists());
    }
}
