//! Host limits for each sandbox's QEMU: one cgroup per VM with a CPU quota, a memory limit (no
//! swap beyond it), a pids limit and an I/O weight. cgroup v2 is used where the host has the
//! controllers there; otherwise the v1 hierarchies (`cpu`, `memory`, `pids`, and `blkio` if
//! mounted), as on hosts that mount both and leave v2 without controllers.
//!
//! A runtime's groups live under one parent, `ember/TAG` in each hierarchy (TAG names the data
//! directory, so two Ember processes never touch each other's), one child per VM named for its
//! sandbox. QEMU joins its group between fork and exec ([`Group::procs`] are opened before the
//! fork), so it never runs unlimited; the group is removed once QEMU is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CPU period the quota is a share of (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// CPU beyond the vCPUs, for QEMU's device model and I/O threads (half a core).
pub const DEVICE_MODEL_CPU_US: u64 = 50_000;
/// Memory beyond guest RAM for QEMU itself (its code, device buffers, I/O), besides TCG's
/// translation cache.
pub const QEMU_OVERHEAD_MIB: u64 = 192;
/// Threads a QEMU may have (vCPUs, I/O workers, RCU and the like).
pub const PIDS_MAX: u64 = 256;
/// The I/O weight of every sandbox (the kernel's default: sandboxes share the disk equally).
pub const IO_WEIGHT: u16 = 100;

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A group name that is not one path component of `[a-z0-9_-]`.
    #[error("invalid cgroup name '{0}'")]
    Name(String),
    /// A cgroup file could not be read or written.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CgroupError {
    let context = context.into();
    move |source| CgroupError::Io { context, source }
}

/// What one VM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per [`CPU_PERIOD_US`], in µs.
    pub cpu_quota_us: u64,
    /// Resident memory, in bytes (swap is not allowed beyond it).
    pub memory_bytes: u64,
    pub pids_max: u64,
    pub io_weight: u16,
}

impl Limits {
    /// The limits of a VM with `vcpus` and `memory_mib` of guest RAM whose QEMU also keeps
    /// `cache_mib` of its own (TCG's translation cache; 0 under KVM).
    pub fn for_vm(vcpus: u32, memory_mib: u32, cache_mib: u32) -> Self {
        let mib = u64::from(memory_mib) + u64::from(cache_mib) + QEMU_OVERHEAD_MIB;
        Self {
            cpu_quota_us: u64::from(vcpus) * CPU_PERIOD_US + DEVICE_MODEL_CPU_US,
            memory_bytes: mib << 20,
            pids_max: PIDS_MAX,
            io_weight: IO_WEIGHT,
        }
    }
}

/// Where the controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy with `cpu`, `memory` and `pids` (and `io` if `io`).
    V2 { mount: PathBuf, io: bool },
    /// One hierarchy per controller (`blkio` optional).
    V1 { cpu: PathBuf, memory: PathBuf, pids: PathBuf, blkio: Option<PathBuf> },
}

impl Layout {
    /// Chooses from `/proc/self/mountinfo`'s text: v2 if its root offers `cpu`, `memory` and
    /// `pids` (`controllers` reads a v2 mount's `cgroup.controllers`), else v1 if those three
    /// are mounted, else none.
    pub fn choose(mountinfo: &str, controllers: impl Fn(&Path) -> Option<String>) -> Option<Self> {
        let (mut v2, mut cpu, mut memory, mut pids, mut blkio) = (None, None, None, None, None);
        for line in mountinfo.lines() {
            let Some((before, after)) = line.split_once(" - ") else { continue };
            let Some(mount) = before.split(' ').nth(4) else { continue };
            let mut after = after.split(' ');
            let (fstype, options) = (after.next(), after.nth(1).unwrap_or(""));
            match fstype {
                Some("cgroup2") if v2.is_none() => v2 = Some(PathBuf::from(mount)),
                Some("cgroup") => {
                    for option in options.split(',') {
                        let slot = match option {
                            "cpu" => &mut cpu,
                            "memory" => &mut memory,
                            "pids" => &mut pids,
                            "blkio" => &mut blkio,
                            _ => continue,
                        };
                        slot.get_or_insert_with(|| PathBuf::from(mount));
                    }
                }
                _ => {}
            }
        }
        if let Some(mount) = v2 {
            let offered = controllers(&mount).unwrap_or_default();
            let has = |c: &str| offered.split_whitespace().any(|o| o == c);
            if has("cpu") && has("memory") && has("pids") {
                return Some(Layout::V2 { io: has("io"), mount });
            }
        }
        Some(Layout::V1 { cpu: cpu?, memory: memory?, pids: pids?, blkio })
    }

    /// The host's layout, if it has the controllers.
    pub fn detect() -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::choose(&mountinfo, |mount| std::fs::read_to_string(mount.join("cgroup.controllers")).ok())
    }

    pub fn version(&self) -> u8 {
        match self {
            Layout::V2 { .. } => 2,
            Layout::V1 { .. } => 1,
        }
    }

    /// Each hierarchy's mount point.
    fn mounts(&self) -> Vec<&Path> {
        match self {
            Layout::V2 { mount, .. } => vec![mount],
            Layout::V1 { cpu, memory, pids, blkio } => {
                let mut all = vec![cpu.as_path(), memory, pids];
                all.extend(blkio.as_deref());
                all.dedup();
                all
            }
        }
    }
}

/// A runtime's cgroups: the layout and the parent its VMs' groups go under.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    /// Relative to each mount, e.g. `ember/1a2b3c4d`.
    parent: PathBuf,
}

impl Cgroups {
    /// The groups of one runtime, under `ember/TAG` in each hierarchy of `layout`. Creates the
    /// parents (and, on v2, delegates the controllers down to them).
    pub fn new(layout: Layout, tag: &str) -> Result<Self, CgroupError> {
        check_name(tag)?;
        let this = Self { layout, parent: Path::new("ember").join(tag) };
        this.make_parents()?;
        Ok(this)
    }

    /// Makes the parents (again, if another process on the same data directory removed them
    /// when it ended), delegating the controllers down them on v2.
    fn make_parents(&self) -> Result<(), CgroupError> {
        for mount in self.layout.mounts() {
            let mut dir = mount.to_path_buf();
            for part in self.parent.components() {
                if let Layout::V2 { io, .. } = &self.layout {
                    enable_controllers(&dir, *io)?;
                }
                dir.push(part);
                make_dir(&dir)?;
            }
            if let Layout::V2 { io, .. } = &self.layout {
                enable_controllers(&dir, *io)?;
            }
        }
        Ok(())
    }

    /// Removes the runtime's parent groups if no VM's group is left under them (at a stop).
    pub fn remove_parent(&self) {
        for mount in self.layout.mounts() {
            // Fails (and is left) while groups remain: another process's, or adoptable VMs'.
            let _ = std::fs::remove_dir(mount.join(&self.parent));
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The directories of group `name`, one per hierarchy.
    pub fn dirs(&self, name: &str) -> Result<Vec<PathBuf>, CgroupError> {
        check_name(name)?;
        Ok(self.layout.mounts().into_iter().map(|m| m.join(&self.parent).join(name)).collect())
    }

    /// Makes (or takes over) group `name` with `limits`, before its VM starts.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
        let dirs = self.dirs(name)?;
        for dir in &dirs {
            // The parents are made at start; only if another process on the same data
            // directory removed them as it ended are they made again.
            if let Err(CgroupError::Io { source, .. }) = make_dir(dir) {
                if source.kind() != std::io::ErrorKind::NotFound {
                    return Err(io_err(format!("create cgroup {}", dir.display()))(source));
                }
                self.make_parents()?;
                make_dir(dir)?;
            }
        }
        let group = Group { dirs };
        let written = match &self.layout {
            Layout::V2 { io, .. } => write_v2(&group.dirs[0], limits, *io),
            Layout::V1 { .. } => write_v1(&self.layout, &group.dirs, limits),
        };
        if let Err(e) = written {
            group.remove(Duration::ZERO);
            return Err(e);
        }
        Ok(group)
    }

    /// Group `name` as it is (an adopted VM's), without writing anything.
    pub fn existing(&self, name: &str) -> Result<Group, CgroupError> {
        Ok(Group { dirs: self.dirs(name)? })
    }

    /// The names of this runtime's groups (in its first hierarchy).
    pub fn names(&self) -> Vec<String> {
        let Some(first) = self.layout.mounts().first().map(|m| m.join(&self.parent)) else { return Vec::new() };
        let Ok(read) = std::fs::read_dir(first) else { return Vec::new() };
        read.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect()
    }

    /// The limits group `name` has now, read back from its files.
    pub fn read(&self, name: &str) -> Result<Limits, CgroupError> {
        let dirs = self.dirs(name)?;
        let read = |dir: &Path, file: &str| -> Result<String, CgroupError> {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(io_err(format!("read {}", path.display())))
        };
        let number = |text: String, what: &str| -> Result<u64, CgroupError> {
            text.parse().map_err(|_| CgroupError::Io {
                context: format!("read {what}"),
                source: std::io::Error::other(format!("not a number: {text}")),
            })
        };
        match &self.layout {
            Layout::V2 { io, .. } => {
                let dir = &dirs[0];
                let cpu = read(dir, "cpu.max")?;
                let quota = cpu.split_whitespace().next().unwrap_or("").to_string();
                let weight = match *io && dir.join("io.weight").exists() {
                    true => read(dir, "io.weight")?.trim_start_matches("default ").to_string(),
                    false => IO_WEIGHT.to_string(),
                };
                Ok(Limits {
                    cpu_quota_us: number(quota, "cpu.max")?,
                    memory_bytes: number(read(dir, "memory.max")?, "memory.max")?,
                    pids_max: number(read(dir, "pids.max")?, "pids.max")?,
                    io_weight: u16::try_from(number(weight, "io.weight")?).unwrap_or(u16::MAX),
                })
            }
            Layout::V1 { .. } => {
                let dir = |controller: &str| self.v1_dir(&dirs, controller);
                Ok(Limits {
                    cpu_quota_us: number(read(&dir("cpu"), "cpu.cfs_quota_us")?, "cpu.cfs_quota_us")?,
                    memory_bytes: number(read(&dir("memory"), "memory.limit_in_bytes")?, "memory.limit_in_bytes")?,
                    pids_max: number(read(&dir("pids"), "pids.max")?, "pids.max")?,
                    io_weight: IO_WEIGHT,
                })
            }
        }
    }

    fn v1_dir(&self, dirs: &[PathBuf], controller: &str) -> PathBuf {
        let mount = match (&self.layout, controller) {
            (Layout::V1 { cpu, .. }, "cpu") => cpu,
            (Layout::V1 { memory, .. }, "memory") => memory,
            (Layout::V1 { pids, .. }, "pids") => pids,
            (Layout::V1 { blkio: Some(b), .. }, "blkio") => b,
            _ => return dirs[0].clone(),
        };
        dirs.iter().find(|d| d.starts_with(mount)).cloned().unwrap_or_else(|| dirs[0].clone())
    }
}

/// One VM's group, in every hierarchy.
#[derive(Debug, Clone)]
pub struct Group {
    dirs: Vec<PathBuf>,
}

impl Group {
    /// The `cgroup.procs` files a process writes `0` to in order to join the group.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether any process is in the group.
    pub fn is_busy(&self) -> bool {
        self.procs().iter().any(|p| std::fs::read_to_string(p).is_ok_and(|s| !s.trim().is_empty()))
    }

    /// Removes the group once it is empty, waiting up to `wait` for exiting processes to leave
    /// it. A group still busy after that is left (and logged); one already gone is fine.
    pub fn remove(&self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        let mut all = true;
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "removing a cgroup");
                        all = false;
                        break;
                    }
                }
            }
        }
        all
    }
}

fn write_v2(dir: &Path, limits: &Limits, io: bool) -> Result<(), CgroupError> {
    write(dir, "cpu.max", &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us))?;
    write(dir, "memory.max", &limits.memory_bytes.to_string())?;
    if dir.join("memory.swap.max").exists() {
        write(dir, "memory.swap.max", "0")?;
    }
    write(dir, "pids.max", &limits.pids_max.to_string())?;
    // io.weight needs blk-iocost in the kernel; without it there is nothing to weigh.
    if io && dir.join("io.weight").exists() {
        write(dir, "io.weight", &format!("default {}", limits.io_weight))?;
    }
    Ok(())
}

fn write_v1(layout: &Layout, dirs: &[PathBuf], limits: &Limits) -> Result<(), CgroupError> {
    let Layout::V1 { cpu, memory, pids, blkio } = layout else { return Ok(()) };
    let under = |mount: &Path| dirs.iter().find(|d| d.starts_with(mount)).cloned().unwrap_or_default();
    let cpu = under(cpu);
    write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
    write(&cpu, "cpu.cfs_quota_us", &limits.cpu_quota_us.to_string())?;
    let memory = under(memory);
    // memsw (memory + swap) must stay at least the memory limit: set memory first, both equal.
    write(&memory, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
    if memory.join("memory.memsw.limit_in_bytes").exists() {
        write(&memory, "memory.memsw.limit_in_bytes", &limits.memory_bytes.to_string())?;
    }
    write(&under(pids), "pids.max", &limits.pids_max.to_string())?;
    if let Some(blkio) = blkio {
        // Only the CFQ and BFQ schedulers weigh I/O; with others there is no file to write.
        let blkio = under(blkio);
        for file in ["blkio.weight", "blkio.bfq.weight"] {
            if blkio.join(file).exists() {
                write(&blkio, file, &limits.io_weight.to_string())?;
            }
        }
    }
    Ok(())
}

fn enable_controllers(dir: &Path, io: bool) -> Result<(), CgroupError> {
    let wanted = if io { "+cpu +memory +pids +io" } else { "+cpu +memory +pids" };
    let have = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing = wanted.split(' ').any(|c| !have.split_whitespace().any(|h| h == c.trim_start_matches('+')));
    if missing {
        write(dir, "cgroup.subtree_control", wanted)?;
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_err(format!("write {value} to {}", path.display())))
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(format!("create cgroup {}", dir.display()))(e)),
    }
}

/// A group name: one path component of `[a-z0-9_-]`, 1 to 64 characters.
pub fn check_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::Name(name.to_string()))
    }
}

#[cfg(test)]
mod tests;
