//! Is KVM usable? Decides between `-accel kvm` and TCG.
//!
//! `/dev/kvm` existing (and even `KVM_CREATE_VM` working) is not enough: some
//! hosts only have `kvm_pvm`, on which a normal guest spins forever. KVM
//! counts as usable only when `/dev/kvm` opens read-write **and** the
//! `kvm_intel` or `kvm_amd` module is loaded (listed in `/proc/modules`, or
//! built in and present under `/sys/module`).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Requested acceleration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when [`kvm_usable`], else TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG (software emulation).
    Tcg,
}

/// Acceleration actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's tiny code generator.
    Tcg,
}

impl Accel {
    /// Resolve `Auto` by probing the host.
    pub fn resolve(self) -> ResolvedAccel {
        match self {
            Accel::Kvm => ResolvedAccel::Kvm,
            Accel::Tcg => ResolvedAccel::Tcg,
            Accel::Auto if kvm_usable() => ResolvedAccel::Kvm,
            Accel::Auto => ResolvedAccel::Tcg,
        }
    }
}

/// True when a hardware KVM module (`kvm_intel` or `kvm_amd`) appears in
/// `/proc/modules` content. Pure, for testing.
pub fn hw_kvm_module_listed(proc_modules: &str) -> bool {
    proc_modules
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == "kvm_intel" || name == "kvm_amd")
}

/// True when `/dev/kvm` opens read-write and `kvm_intel` or `kvm_amd` is loaded.
pub fn kvm_usable() -> bool {
    let dev_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !dev_ok {
        return false;
    }
    let listed = std::fs::read_to_string("/proc/modules")
        .map(|m| hw_kvm_module_listed(&m))
        .unwrap_or(false);
    listed
        || Path::new("/sys/module/kvm_intel").exists()
        || Path::new("/sys/module/kvm_amd").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_parse() {
        let pvm = "kvm_pvm 98304 0 - Live 0x0000000000000000\nkvm 1142784 1 kvm_pvm, Live 0x0\n";
        assert!(!hw_kvm_module_listed(pvm));
        let intel = "kvm_intel 385024 0 - Live 0x0\nkvm 1142784 1 kvm_intel, Live 0x0\n";
        assert!(hw_kvm_module_listed(intel));
        let amd = "ccp 118784 1 kvm_amd, Live 0x0\nkvm_amd 155648 0 - Live 0x0\n";
        assert!(hw_kvm_module_listed(amd));
        // A module merely depending on kvm_intel does not count by name.
        assert!(!hw_kvm_module_listed("foo 1 1 kvm_intel, Live 0x0\n"));
        assert!(!hw_kvm_module_listed(""));
    }

    #[test]
    fn explicit_choices_win() {
        assert_eq!(Accel::Kvm.resolve(), ResolvedAccel::Kvm);
        assert_eq!(Accel::Tcg.resolve(), ResolvedAccel::Tcg);
    }
}
