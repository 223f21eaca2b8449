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
    // mkfs.ext4 -d turns the guest tree into a root filesystem image.
    "e2fsprogs",
    // mkfs.btrfs and `btrfs filesystem du`: the storage pool's reflink test.
    "btrfs-progs",
    // The daemon's D-Bus tests run a private bus.
    "dbus",
    "iproute2",
    // nft: the launcher's isolation tests (real sets in a private network
    // namespace) run instead of skipping.
    "nftables",
    // The guest kernel build (crate::kernel): compiler, make, Kconfig's
    // parser generators, objtool's libelf, and lz4 for the compressed image.
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    // vmctld's store links the system SQLite (rusqlite without "bundled").
    "libsqlite3-dev",
    "lz4",
    "xz-utils",
    // ssh, ssh-keygen: vmctld's host keys and the SSH gateway's loopback
    // test (ssh-gateway/tests/loopback.rs), which runs the real client.
    "openssh-client",
    // sshd: the SSH gateway's guest client against a real OpenSSH server
    // on loopback, started by the test itself (ssh-gateway/tests/
    // guest_sshd.rs). Where PID 1 is systemd the package also enables its
    // own ssh.service; on the build machines (no systemd) nothing starts.
    "openssh-server",
    // The ACME test server (and its DNS stub) the HTTPS proxy's e2e test
    // copies into the dev host: static binaries, bookworm 2.4.0.
    "pebble",
];

/// Packages `cargo xtask deb` needs: dpkg-shlibdeps, strip, lintian.
pub const PACKAGING_PACKAGES: &[&str] = &["dpkg-dev", "binutils", "lintian"];

/// Packages taken from bookworm-backports: mkosi 24 builds the guest image
/// (bookworm's mkosi 14 is too old), QEMU 10 boots trixie guests under
/// TCG where bookworm's 7.2 crashes them (ENVIRONMENT.md), and the guest
/// kernel is built from the 6.12 source the trixie userspace was made for.
pub const BACKPORTS_PACKAGES: &[&str] =
    &["mkosi", "qemu-system-x86", crate::kernel::SOURCE_PACKAGE];

const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/vmctl-bookworm-backports.sources";

/// Everything the build machine needs: Debian packages, backports included.
pub fn ensure_build_machine() -> Result<()> {
    ensure_debian_packages(BUILD_MACHINE_PACKAGES)?;
    ensure_debian_packages(PACKAGING_PACKAGES)?;
    let missing: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p) || !installed_from_backports(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages from bookworm-backports: {}; run `cargo xtask deps` as root",
            missing.join(" ")
        );
    }
    let mirror = crate::host::debian_mirror();
    let source = format!(
        "# Written by `cargo xtask deps` for mkosi and QEMU from backports.\n\
         Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    if std::fs::read_to_string(BACKPORTS_SOURCE).ok().as_deref() != Some(source.as_str()) {
        std::fs::write(BACKPORTS_SOURCE, source)?;
    }
    eprintln!(
        "xtask: installing from bookworm-backports: {}",
        missing.join(" ")
    );
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["-t", "bookworm-backports"])
            .args(&missing),
    )
}

fn installed_from_backports(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("bpo"))
        .unwrap_or(false)
}

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
