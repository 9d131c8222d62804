use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn a_v2_tree_without_controllers_falls_back_to_v1() {
    let layout = Layout::choose(HYBRID, |_| Some("hugetlb\n".into())).unwrap();
    assert_eq!(
        layout,
        Layout::V1 {
            cpu: "/sys/fs/cgroup/cpu".into(),
            memory: "/sys/fs/cgroup/memory".into(),
            pids: "/sys/fs/cgroup/pids".into(),
            blkio: Some("/sys/fs/cgroup/blkio".into()),
        }
    );
}

#[test]
fn v2_is_chosen_when_it_has_the_controllers() {
    let unified = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let layout = Layout::choose(unified, |_| Some("cpuset cpu io memory pids\n".into())).unwrap();
    assert_eq!(layout, Layout::V2 { mount: "/sys/fs/cgroup".into(), io: true });
    // The same host with cpu and memory in v1: v1 if it has all three there, else nothing.
    assert_eq!(Layout::choose(unified, |_| Some("memory pids".into())), None);
    assert!(matches!(Layout::choose(HYBRID, |_| Some("memory pids".into())), Some(Layout::V1 { .. })));
    let comounted = "32 31 0:29 / /c/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                     35 31 0:32 / /c/memory rw - cgroup cgroup rw,memory\n";
    assert_eq!(Layout::choose(comounted, |_| None), None, "no pids hierarchy");
}

#[test]
fn limits_cover_the_vcpus_ram_and_qemus_own_memory() {
    let l = Limits::for_vm(2, 512, 256);
    assert_eq!(l.cpu_quota_us, 250_000);
    assert_eq!(l.memory_bytes, (512 + 256 + QEMU_OVERHEAD_MIB) << 20);
    assert_eq!(l.pids_max, PIDS_MAX);
}

#[test]
fn names_are_one_safe_component() {
    for bad in ["", "..", "a/b", "A", "x y", &"a".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    check_name("abc-123_x").unwrap();
}

/// The v2 logic on a directory standing in for the mount (the kernel's files are plain files
/// here): controllers delegated down the parents, the limits written, removal.
#[test]
fn v2_files_on_a_stand_in_tree() {
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::V2 { mount: root.path().to_path_buf(), io: true };
    let cgroups = Cgroups::new(layout, "d1").unwrap();
    for dir in [root.path(), &root.path().join("ember"), &root.path().join("ember/d1")] {
        let control = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+cpu +memory +pids +io", "{}", dir.display());
    }
    let group = cgroups.create("sbx", &Limits::for_vm(1, 256, 0)).unwrap();
    let dir = root.path().join("ember/d1/sbx");
    assert_eq!(group.procs(), vec![dir.join("cgroup.procs")]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("cpu.max"), "150000 100000");
    assert_eq!(read("memory.max"), ((256 + QEMU_OVERHEAD_MIB) << 20).to_string());
    assert_eq!(read("pids.max"), "256");
    // No io.weight file (a kernel without blk-iocost): nothing to weigh, nothing written.
    assert!(!dir.join("io.weight").exists());
    // With one (the kernel makes it with the group), the weight is written.
    std::fs::write(dir.join("io.weight"), "default 50").unwrap();
    cgroups.create("sbx", &Limits::for_vm(1, 256, 0)).unwrap();
    assert_eq!(read("io.weight"), "default 100");
    assert_eq!(cgroups.read("sbx").unwrap(), Limits::for_vm(1, 256, 0));
    assert_eq!(cgroups.names(), vec!["sbx".to_string()]);
    for f in ["cpu.max", "memory.max", "pids.max", "io.weight"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    assert!(group.remove(Duration::ZERO));
    assert!(!dir.exists() && cgroups.names().is_empty());
    // At a stop the empty parent goes (the kernel's files do not keep a cgroup; here they
    // would); a later create makes it again.
    std::fs::remove_file(root.path().join("ember/d1/cgroup.subtree_control")).unwrap();
    cgroups.remove_parent();
    assert!(!root.path().join("ember/d1").exists());
    cgroups.create("again", &Limits::for_vm(1, 256, 0)).unwrap();
    assert!(root.path().join("ember/d1/again").is_dir());
}

#[test]
fn v1_files_on_a_stand_in_tree() {
    let root = tempfile::tempdir().unwrap();
    let m = |c: &str| root.path().join(c);
    let layout = Layout::V1 { cpu: m("cpu"), memory: m("memory"), pids: m("pids"), blkio: None };
    for c in ["cpu", "memory", "pids"] {
        std::fs::create_dir(m(c)).unwrap();
    }
    let cgroups = Cgroups::new(layout, "d2").unwrap();
    let limits = Limits::for_vm(4, 1024, 256);
    let group = cgroups.create("sbx", &limits).unwrap();
    assert_eq!(group.procs().len(), 3);
    let read = |c: &str, f: &str| std::fs::read_to_string(m(c).join("ember/d2/sbx").join(f)).unwrap();
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "450000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("memory", "memory.limit_in_bytes"), limits.memory_bytes.to_string());
    assert_eq!(read("pids", "pids.max"), "256");
    assert_eq!(cgroups.read("sbx").unwrap(), limits);
}

/// The host's own cgroups, for real (root only; skipped where the host has none).
#[test]
fn a_process_joins_and_leaves_a_real_group() {
    if effective_uid() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(layout) = Layout::detect() else {
        eprintln!("skipped: no cgroup controllers");
        return;
    };
    let tag = format!("test-{}", std::process::id());
    let cgroups = Cgroups::new(layout, &tag).unwrap();
    let limits = Limits::for_vm(1, 128, 16);
    let group = cgroups.create("probe", &limits).unwrap();
    assert_eq!(cgroups.read("probe").unwrap().cpu_quota_us, limits.cpu_quota_us);
    assert_eq!(cgroups.read("probe").unwrap().memory_bytes, limits.memory_bytes);
    assert_eq!(cgroups.read("probe").unwrap().pids_max, limits.pids_max);
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    for procs in group.procs() {
        std::fs::write(procs, child.id().to_string()).unwrap();
    }
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(membership.contains(&format!("/ember/{tag}/probe")), "{membership}");
    assert!(group.is_busy());
    assert!(!group.remove(Duration::ZERO), "a busy group stays");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(group.remove(Duration::from_secs(2)));
    assert!(!group.is_busy());
    cgroups.remove_parent();
    for mount in cgroups.layout().mounts() {
        assert!(!mount.join("ember").join(&tag).exists(), "{}", mount.display());
    }
}

fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}
