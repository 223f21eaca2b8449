//! Debian packages the build machine needs, installed idempotently.
//!
//! The development host's own packages are listed in [`crate::host`]; this
//! list is for the machine that builds and drives it.

use crate::cmd;
use anyhow::{bail, Result};
use std::process::Command;

/// Packages needed on the build machine by `cargo xtask test` and `demo`.
pub const BUILD_MACHINE_PACKAGES: &[&str] = &[
    // systemd-nspawn boots the development host.
    "systemd-container",
    // debootstrap builds the development host's root filesystem.
    "debootstrap",
    // The VMM driver tests talk QMP to a real QEMU.
    "qemu-system-x86",
    // The daemon's D-Bus tests run a private bus.
    "dbus",
    "iproute2",
];

/// Installs whichever of `packages` are missing (no-op when all are there).
pub fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them with `sudo apt-get install {}` or run as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
        .unwrap_or(false)
}

/// Whether we run as root (needed for apt, debootstrap and nspawn).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
