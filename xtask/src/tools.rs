//! Tools from the Rust crate registry that the development host needs,
//! installed with `cargo install` into `<cache>/tools/<crate>-<version>/`
//! (the version is the cache key; see [`crate::paths::cache_dir`]).

use crate::cmd;
use crate::paths::cache_dir;
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;

/// vhost-device-vsock gives QEMU the same hybrid-vsock Unix socket as
/// cloud-hypervisor when the host has no `/dev/vhost-vsock`. 0.3.0 is the
/// newest release; it drops guest packets spread over several descriptors,
/// which the driver avoids with a smaller buffer
/// (`vmctl_vmm::qemu::VSOCK_TX_BUFFER_SIZE`): recheck that when moving on.
pub const VHOST_DEVICE_VSOCK: (&str, &str) = ("vhost-device-vsock", "0.3.0");

/// Installs `krate@version` unless cached; returns the binary's path.
pub fn ensure((krate, version): (&str, &str)) -> Result<PathBuf> {
    let root = cache_dir().join("tools").join(format!("{krate}-{version}"));
    let binary = root.join("bin").join(krate);
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!(
        "xtask: building {krate} {version} (once, cached in {})",
        root.display()
    );
    cmd::run(
        Command::new(env!("CARGO"))
            .args(["install", "--quiet", "--locked"])
            .arg(format!("{krate}@{version}"))
            .arg("--root")
            .arg(&root),
    )?;
    Ok(binary)
}
