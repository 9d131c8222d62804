//! Each VM's host limits and identity: the cgroup its QEMU runs in (`ember-cgroup`: CPU quota,
//! memory, pids, I/O weight) and the uid it runs as. Every QEMU gets a uid of its own from
//! [`QEMU_UIDS`] (with the QEMU user's group, which may read template images), and owns only its
//! sandbox's disk overlay (0600), so one compromised QEMU cannot open another sandbox's disk.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use ember_cgroup::{Cgroups, Group, Layout, Limits};
use ember_vmm::Accel;
use nix::unistd::Uid;

use crate::sandbox::DISK;
use crate::{private, Runtime, RuntimeError};

/// The uids QEMUs run as, one per VM: far above any account's (and above the subordinate
/// ranges container tools hand out), below `(uid_t)-1`.
pub const QEMU_UIDS: std::ops::Range<u32> = 3_000_000_000..3_016_777_216;

/// Groups of template-snapshot VMs are named with this prefix.
pub(crate) const SNAPSHOT_GROUP_PREFIX: &str = "snap-";
/// How old a template-snapshot group must be before the clean-up at start removes it.
const SNAPSHOT_GROUP_GRACE: Duration = Duration::from_secs(3600);

/// How long a group's removal waits for its QEMU's last threads to leave it.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// A VM's cgroup, removed when dropped (after the VM, which is dropped first); none when the
/// host has no cgroup controllers or they are turned off.
pub(crate) struct VmGroup(Option<Group>);

impl VmGroup {
    pub(crate) fn procs(&self) -> Vec<std::path::PathBuf> {
        self.0.as_ref().map(Group::procs).unwrap_or_default()
    }

    /// Leaves the group in place (a VM left running for a later adopt).
    pub(crate) fn keep(mut self) {
        self.0.take();
    }
}

impl Drop for VmGroup {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.remove(REMOVE_WAIT);
        }
    }
}

/// The runtime's cgroups, if the host has the controllers and they are on.
pub(crate) fn detect(on: bool, data_dir: &Path) -> Result<Option<Cgroups>, RuntimeError> {
    if !on {
        return Ok(None);
    }
    let Some(layout) = Layout::detect() else { return Ok(None) };
    // One parent per data directory: `ember run` and `ember serve` never touch each other's.
    let canonical = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    let tag = sha_tag(canonical.as_os_str().as_encoded_bytes());
    match Cgroups::new(layout, &tag) {
        Ok(c) => Ok(Some(c)),
        Err(e) => Err(RuntimeError::Io {
            context: "set up cgroups for the VMs' limits".into(),
            source: std::io::Error::other(format!(
                "{e} (set EMBER_CGROUPS=off to run QEMUs without limits of their own)"
            )),
        }),
    }
}

fn sha_tag(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..6])
}

impl Runtime {
    /// The limits of a VM with `vcpus` and `memory_mib` (TCG's translation cache counted in).
    fn vm_limits(&self, vcpus: u32, memory_mib: u32) -> Limits {
        let cache = match self.accel().accel {
            Accel::Tcg => self.config().tcg_tb_mib,
            Accel::Kvm => 0,
        };
        Limits::for_vm(vcpus, memory_mib, cache)
    }

    /// Makes the cgroup of VM `name` before it starts.
    pub(crate) fn vm_group(&self, name: &str, vcpus: u32, memory_mib: u32) -> Result<VmGroup, RuntimeError> {
        match &self.cgroups {
            Some(c) => Ok(VmGroup(Some(c.create(name, &self.vm_limits(vcpus, memory_mib))?))),
            None => Ok(VmGroup(None)),
        }
    }

    /// The cgroup of a VM an earlier process started.
    pub(crate) fn adopted_group(&self, name: &str) -> VmGroup {
        VmGroup(self.cgroups.as_ref().and_then(|c| c.existing(name).ok()))
    }

    /// Removes this runtime's parent cgroups once no VM's group is left under them (at a stop
    /// that ended every sandbox).
    pub fn release_cgroups(&self) {
        if let Some(c) = &self.cgroups {
            c.remove_parent();
        }
    }

    /// The host's cgroup version in use, if any.
    pub fn cgroup_version(&self) -> Option<u8> {
        self.cgroups.as_ref().map(|c| c.layout().version())
    }

    /// A warning when VMs run without host limits.
    pub fn cgroup_warning(&self) -> Option<&'static str> {
        self.cgroups.is_none().then_some(
            "no cgroup controllers (cpu, memory, pids) in use: sandboxes' QEMUs are not hard-limited on the host",
        )
    }

    /// Removes the groups of VMs that are gone (none of `keep`), after a crash: not those of
    /// sandboxes whose owner (another `ember` process on this data directory) is alive, nor
    /// template-snapshot groups younger than [`SNAPSHOT_GROUP_GRACE`] (one may be starting).
    pub(crate) fn clean_groups(&self, keep: &HashSet<String>) {
        let Some(c) = &self.cgroups else { return };
        for name in c.names() {
            if keep.contains(&name) || crate::reconcile::owner_alive(&self.sandbox_dir(&name)) {
                continue;
            }
            let Ok(dirs) = c.dirs(&name) else { continue };
            let age = dirs.first().and_then(|d| std::fs::metadata(d).ok()?.modified().ok()?.elapsed().ok());
            if name.starts_with(SNAPSHOT_GROUP_PREFIX) && age.is_none_or(|a| a < SNAPSHOT_GROUP_GRACE) {
                continue;
            }
            // Its QEMU was killed just before (by the orphan clean-up): wait for it to go.
            if let Ok(group) = c.existing(&name) {
                if group.remove(REMOVE_WAIT) {
                    tracing::info!(group = %name, "removed the cgroup of a VM that is gone");
                }
            }
        }
    }

    /// Hands the disk overlay at `overlay` to the QEMU that will open it and says whom QEMU runs
    /// as (`uid:gid`; none when QEMU stays root). A disk that already belongs to a QEMU uid (a
    /// paused sandbox's) keeps it; a new one gets a uid no other sandbox's disk has.
    pub(crate) fn qemu_identity(&self, overlay: &Path) -> Result<Option<String>, RuntimeError> {
        let Some((_, gid)) = self.qemu_ids else {
            private::give_to_qemu(overlay, None)?;
            return Ok(None);
        };
        let _one_at_a_time = self.uid_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = std::fs::metadata(overlay).map(|m| m.uid()).unwrap_or(0);
        let uid = if QEMU_UIDS.contains(&current) { current } else { self.free_qemu_uid(overlay) };
        private::give_to_qemu(overlay, Some((Uid::from_raw(uid), gid)))?;
        Ok(Some(format!("{uid}:{gid}")))
    }

    /// A uid in [`QEMU_UIDS`] that no sandbox's disk (nor `beside`'s neighbours) belongs to.
    fn free_qemu_uid(&self, beside: &Path) -> u32 {
        let mut used = HashSet::new();
        let sandboxes = self.sandboxes_dir();
        // A sandbox's own directory is among the sandboxes'; a template snapshot's is elsewhere.
        let neighbours = beside.parent().and_then(Path::parent).filter(|d| *d != sandboxes).map(Path::to_path_buf);
        for dir in std::iter::once(sandboxes.clone()).chain(neighbours) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Ok(meta) = std::fs::metadata(entry.path().join(DISK)) {
                    used.insert(meta.uid());
                }
            }
        }
        loop {
            let uid = QEMU_UIDS.start + rand::random::<u32>() % (QEMU_UIDS.end - QEMU_UIDS.start);
            if !used.contains(&uid) {
                return uid;
            }
        }
    }
}
