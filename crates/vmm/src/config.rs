//! The plain description of one VM, checked by [`VmConfig::validate`] and turned into QEMU's
//! command line by [`VmConfig::qemu_args`].

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{Accel, VmmError};

pub const MIN_VCPUS: u32 = 1;
pub const MAX_VCPUS: u32 = 8;
pub const MIN_MEMORY_MIB: u32 = 128;
pub const MAX_MEMORY_MIB: u32 = 8192;
/// TCG translation cache bound per VM (MiB) unless configured: keeps each sandbox's private
/// memory small. The cache's pages stay resident once touched, so this bounds that part of a
/// sandbox's private memory; a smaller cache is flushed and refilled more often.
pub const TCG_TB_SIZE_MIB: u32 = 256;
/// Bounds on a configured translation cache (MiB).
pub const TCG_TB_MIB_RANGE: std::ops::RangeInclusive<u32> = 16..=1024;

/// A network interface attached to a tap device that exists in the VM's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: String,
}

/// Where guest RAM lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Memory {
    /// Anonymous memory (a cold boot).
    #[default]
    Anonymous,
    /// A file: `shared` writes guest RAM into it (building a template); otherwise it is mapped
    /// private, copy-on-write, so sandboxes share the template's untouched pages and the file is
    /// never written.
    File { path: PathBuf, shared: bool },
}

/// Everything QEMU needs for one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub cmdline: String,
    /// The VM's root disk (a qcow2 overlay).
    pub disk: PathBuf,
    pub net: Option<NetConfig>,
    /// Network namespace to run QEMU in (a `/run/netns/NAME` path).
    pub netns: Option<PathBuf>,
    /// The console log (capped and rotated, see [`crate::serial`]); QEMU serves the console on
    /// a socket beside it.
    pub serial_log: PathBuf,
    pub qmp_socket: PathBuf,
    pub qemu: PathBuf,
    pub accel: Accel,
    /// TCG's translation cache (MiB; ignored under KVM).
    pub tcg_tb_mib: u32,
    /// Kill QEMU when the process that started it dies.
    pub die_with_parent: bool,
    pub memory: Memory,
    /// Start paused, waiting for a device state over QMP (`migrate-incoming`).
    pub incoming: bool,
    /// Unprivileged user QEMU switches to once it has opened its devices and files: a name,
    /// or `uid:gid`.
    pub run_as: Option<String>,
    /// `cgroup.procs` files QEMU joins before it runs (its host limits, `ember-cgroup`).
    pub cgroup_procs: Vec<PathBuf>,
}

impl VmConfig {
    /// Checks the sizes; nothing is created before this passes.
    pub fn validate(&self) -> Result<(), VmmError> {
        check_sizes(self.vcpus, self.memory_mib)
    }

    /// QEMU's arguments: microvm, no firmware or PCI, virtio-mmio devices, QMP on a socket.
    pub fn qemu_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        fn push(a: &mut Vec<OsString>, parts: &[&str]) {
            a.extend(parts.iter().map(OsString::from));
        }
        let machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off";
        // Guest RAM is always the backend named `mem`, so that migration streams (which name
        // RAM blocks) load into any VM whatever backend it has.
        push(&mut a, &["-M", &format!("{machine},memory-backend=mem")]);
        match &self.memory {
            Memory::Anonymous => {
                push(&mut a, &["-object", &format!("memory-backend-ram,id=mem,size={}M", self.memory_mib)])
            }
            Memory::File { path, shared } => {
                a.push("-object".into());
                let mut backend = OsString::from(format!(
                    "memory-backend-file,id=mem,size={}M,share={},mem-path=",
                    self.memory_mib,
                    if *shared { "on" } else { "off" }
                ));
                backend.push(path.as_os_str());
                a.push(backend);
            }
        }
        push(&mut a, &["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        match self.accel {
            Accel::Kvm => push(&mut a, &["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&mut a, &["-accel", &format!("tcg,tb-size={}", self.tcg_tb_mib), "-cpu", "max"]),
        }
        push(&mut a, &["-smp", &self.vcpus.to_string(), "-m", &format!("{}M", self.memory_mib)]);
        // The switch to `run_as` itself needs set*id; after it QEMU holds no privilege to regain,
        // and `spawn=deny` keeps it from executing anything that could.
        match &self.run_as {
            Some(user) => {
                push(&mut a, &["-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"]);
                push(&mut a, &["-runas", user]);
            }
            None => {
                push(&mut a, &["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"])
            }
        }
        a.push("-kernel".into());
        a.push(self.kernel.clone().into());
        push(&mut a, &["-append", &self.cmdline]);
        // The console goes to a socket that Ember's pump copies into a capped log
        // (`crate::serial`); QEMU waits for the pump before it starts the guest, so nothing is lost.
        a.push("-chardev".into());
        let mut serial = kv("socket,id=serial0,path=", &crate::serial::socket_path(&self.serial_log));
        serial.push(",server=on,wait=on");
        a.push(serial);
        push(&mut a, &["-serial", "chardev:serial0"]);
        a.push("-drive".into());
        a.push(kv("id=root,format=qcow2,if=none,discard=unmap,file=", &self.disk));
        push(&mut a, &["-device", "virtio-blk-device,drive=root"]);
        if let Some(net) = &self.net {
            push(&mut a, &["-netdev", &format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap)]);
            push(&mut a, &["-device", &format!("virtio-net-device,netdev=net0,mac={}", net.mac)]);
        }
        push(&mut a, &["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0"]);
        a.push("-qmp".into());
        let mut qmp = kv("unix:", &self.qmp_socket);
        qmp.push(",server=on,wait=off");
        a.push(qmp);
        if self.incoming {
            push(&mut a, &["-incoming", "defer"]);
        }
        a
    }
}

/// Checks vCPU and memory sizes against the supported ranges.
pub fn check_sizes(vcpus: u32, memory_mib: u32) -> Result<(), VmmError> {
    if !(MIN_VCPUS..=MAX_VCPUS).contains(&vcpus) {
        return Err(VmmError::Vcpus(vcpus));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(VmmError::Memory(memory_mib));
    }
    Ok(())
}

fn kv(prefix: &str, path: &std::path::Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinux".into(),
            cmdline: "console=ttyS0".into(),
            disk: "/d/overlay.qcow2".into(),
            net: Some(NetConfig { tap: "tap0".into(), mac: "02:fc:00:00:00:05".into() }),
            netns: None,
            serial_log: "/d/serial.log".into(),
            qmp_socket: "/d/qmp.sock".into(),
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            tcg_tb_mib: TCG_TB_SIZE_MIB,
            die_with_parent: true,
            memory: Memory::Anonymous,
            incoming: false,
            run_as: None,
            cgroup_procs: Vec::new(),
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(cfg().validate().is_ok());
        assert!(matches!(check_sizes(0, 512), Err(VmmError::Vcpus(0))));
        assert!(matches!(check_sizes(9, 512), Err(VmmError::Vcpus(9))));
        assert!(matches!(check_sizes(1, 127), Err(VmmError::Memory(127))));
        assert!(matches!(check_sizes(1, 8193), Err(VmmError::Memory(8193))));
        assert!(check_sizes(8, 8192).is_ok() && check_sizes(1, 128).is_ok());
    }

    #[test]
    fn command_line_names_devices_and_accelerator() {
        let args: Vec<String> = cfg().qemu_args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg,tb-size=256 -cpu max"), "{joined}");
        assert!(joined.contains("-smp 2 -m 512M"));
        assert!(joined.contains("virtio-net-device,netdev=net0,mac=02:fc:00:00:00:05"));
        assert!(joined.contains("file=/d/overlay.qcow2"));
        assert!(joined.contains("-qmp unix:/d/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("-chardev socket,id=serial0,path=/d/serial.sock,server=on,wait=on"), "{joined}");
        let mut kvm = cfg();
        kvm.accel = Accel::Kvm;
        let kvm_args: Vec<String> = kvm.qemu_args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert!(kvm_args.join(" ").contains("-accel kvm -cpu host"));
        let mut restore = cfg();
        restore.memory = Memory::File { path: "/t/ram".into(), shared: false };
        restore.incoming = true;
        let r: Vec<String> = restore.qemu_args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let r = r.join(" ");
        assert!(r.contains("acpi=off,memory-backend=mem"), "{r}");
        assert!(r.contains("memory-backend-file,id=mem,size=512M,share=off,mem-path=/t/ram"), "{r}");
        assert!(r.ends_with("-incoming defer"), "{r}");
        assert!(r.contains("elevateprivileges=deny") && !r.contains("-runas"), "{r}");
        let mut unprivileged = cfg();
        unprivileged.run_as = Some("ember-qemu".into());
        let u: Vec<String> = unprivileged.qemu_args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert!(u.join(" ").contains("elevateprivileges=allow,spawn=deny,resourcecontrol=deny -runas ember-qemu"));
    }
}
