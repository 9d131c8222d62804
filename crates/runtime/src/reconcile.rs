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

/// Whether the process recorded as the owner of sandbox directory `dir` is alive.
pub fn owner_alive(dir: &Path) -> bool {
    alive(&std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap_or_default())
}

/// Records the sandbox's QEMU process.
pub fn record_vm(dir: &Path, pid: u32) -> Result<(), RuntimeError> {
    std::fs::write(dir.join(VM_FILE), identity(pid).unwrap_or_default()).map_err(io_err("record QEMU pid"))
}

/// Reads the recorded QEMU identity of a sandbox directory.
pub fn recorded_vm(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(VM_FILE)).ok().filter(|s| !s.trim().is_empty())
}

/// Kills every QEMU whose command line names a sandbox directory under `sandboxes` that is
/// not in `keep` and whose owner is gone (or that has no directory at all). This finds a QEMU
/// even when its owner died between starting it and recording its pid.
pub fn kill_stray_vms(sandboxes: &Path, keep: &std::collections::HashSet<String>) {
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    let prefix = format!("{}/", sandboxes.display());
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let Some(id) = sandbox_named(&cmdline, &prefix) else { continue };
        if keep.contains(&id) {
            continue;
        }
        let owner = std::fs::read_to_string(sandboxes.join(&id).join(OWNER_FILE)).unwrap_or_default();
        if alive(&owner) {
            continue;
        }
        tracing::info!(sandbox = %id, pid, "killing a QEMU left behind by a dead ember process");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// The sandbox id a QEMU command line names (in a path `PREFIX/ID/...`), if it is one.
fn sandbox_named(cmdline: &[u8], prefix: &str) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let program = std::str::from_utf8(args.first()?).ok()?;
    if !program.contains("qemu-system") {
        return None;
    }
    args.iter().filter_map(|a| std::str::from_utf8(a).ok()).find_map(|arg| {
        let rest = &arg[arg.find(prefix)? + prefix.len()..];
        let id = rest.split('/').next()?;
        (!id.is_empty() && rest.len() > id.len()).then(|| id.to_string())
    })
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
    fn qemu_command_lines_name_their_sandbox() {
        let cmd = b"qemu-system-x86_64\0-M\0microvm\0-chardev\0socket,id=serial0,path=/d/sandboxes/abc123/serial.sock,server=on\0";
        assert_eq!(sandbox_named(cmd, "/d/sandboxes/").as_deref(), Some("abc123"));
        assert_eq!(sandbox_named(b"bash\0/d/sandboxes/abc123/x\0", "/d/sandboxes/"), None, "not a QEMU");
        assert_eq!(sandbox_named(b"qemu-system-x86_64\0/elsewhere/abc/x\0", "/d/sandboxes/"), None);
        assert_eq!(sandbox_named(b"qemu-system-x86_64\0/d/sandboxes/\0", "/d/sandboxes/"), None);
    }

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
