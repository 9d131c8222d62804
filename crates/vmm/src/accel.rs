//! Chooses the accelerator at run time: KVM where `/dev/kvm` is backed by hardware
//! virtualisation (VMX or SVM), TCG (software emulation) otherwise, with the reason.

use std::fmt;
use std::path::Path;

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The chosen accelerator and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelInfo {
    pub accel: Accel,
    pub reason: String,
}

impl AccelInfo {
    /// A warning to show the user, if the accelerator deserves one.
    pub fn warning(&self) -> Option<String> {
        (self.accel == Accel::Tcg).then(|| {
            "guests run under TCG software emulation: slower, and the emulator is not a security boundary; \
             use a host with VMX/SVM for KVM isolation"
                .to_string()
        })
    }
}

impl fmt::Display for AccelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.accel, self.reason)
    }
}

/// Detects the accelerator on this host.
pub fn detect() -> AccelInfo {
    detect_in(Path::new("/"))
}

/// The accelerator to use: `forced` if the settings name one (`EMBER_ACCEL`), else detected.
pub fn choose(forced: Option<Accel>) -> AccelInfo {
    match forced {
        Some(accel) => AccelInfo { accel, reason: format!("EMBER_ACCEL={accel}") },
        None => detect(),
    }
}

/// Detection against a root directory (tests pass a fake one).
pub fn detect_in(root: &Path) -> AccelInfo {
    let has = |p: &str| root.join(p).exists();
    let tcg = |reason: &str| AccelInfo { accel: Accel::Tcg, reason: reason.into() };
    if !has("dev/kvm") {
        return tcg("/dev/kvm is absent");
    }
    if has("sys/module/kvm_intel") {
        return AccelInfo { accel: Accel::Kvm, reason: "/dev/kvm backed by Intel VMX".into() };
    }
    if has("sys/module/kvm_amd") {
        return AccelInfo { accel: Accel::Kvm, reason: "/dev/kvm backed by AMD SVM".into() };
    }
    if has("sys/module/kvm_pvm") {
        return tcg("/dev/kvm is backed by PVM, which runs only PVM-patched guest kernels");
    }
    tcg("/dev/kvm has no VMX/SVM backend")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(paths: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in paths {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        dir
    }

    #[test]
    fn picks_kvm_only_with_hardware_virtualisation() {
        assert_eq!(detect_in(fake(&["dev/kvm", "sys/module/kvm_intel"]).path()).accel, Accel::Kvm);
        assert_eq!(detect_in(fake(&["dev/kvm", "sys/module/kvm_amd"]).path()).accel, Accel::Kvm);
        let pvm = detect_in(fake(&["dev/kvm", "sys/module/kvm_pvm"]).path());
        assert_eq!(pvm.accel, Accel::Tcg);
        assert!(pvm.reason.contains("PVM"));
        assert!(pvm.warning().unwrap().contains("not a security boundary"));
        assert_eq!(detect_in(fake(&[]).path()).accel, Accel::Tcg);
    }

    #[test]
    fn a_forced_accelerator_is_named_as_forced() {
        let tcg = choose(Some(Accel::Tcg));
        assert_eq!((tcg.accel, tcg.reason.as_str()), (Accel::Tcg, "EMBER_ACCEL=tcg"));
        assert_eq!(choose(Some(Accel::Kvm)).accel, Accel::Kvm);
    }
}
