//! vmctl's guest kernel: Debian's `linux-source-6.12` configured with
//! `allnoconfig` plus `kernel/vmctl-guest.config`, every driver a guest
//! needs built in, so guests boot with no initrd.
//!
//! The result (`bzImage` for QEMU, `vmlinux` with its PVH entry point for
//! cloud-hypervisor, and the `.config`) lives in
//! `<cache>/kernel/vmctl-<hash>/`, where the hash covers the source
//! package's version, the fragment and the base configuration, so it is
//! built once per change (about 10 minutes on two cores).

use crate::cmd;
use crate::paths::{cache_dir, remove_stale, workspace_root};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian package holding the kernel source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// The configuration the fragment is merged onto: nothing, so whatever the
/// guest has is listed in the fragment (`merge_config.sh -n`).
const BASE: &str = "allnoconfig";

/// Bump when the build steps change in a way the inputs do not show.
const BUILD_VERSION: u32 = 1;

/// A built guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Directory holding `bzImage`, `vmlinux` and `config`.
    pub dir: PathBuf,
    /// The cache key (also part of the image's key).
    pub key: String,
}

impl Kernel {
    /// The compressed kernel with the x86 boot protocol header (QEMU
    /// `-kernel`, cloud-hypervisor with firmware).
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("bzImage")
    }

    /// The uncompressed ELF kernel with its PVH entry point
    /// (cloud-hypervisor's direct kernel boot).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
}

fn fragment() -> PathBuf {
    workspace_root().join("kernel/vmctl-guest.config")
}

fn tarball() -> PathBuf {
    Path::new("/usr/src").join(format!("{SOURCE_PACKAGE}.tar.xz"))
}

/// Builds the kernel unless one for the current inputs is cached.
pub fn ensure() -> Result<Kernel> {
    let version = source_version()?;
    let fragment_text =
        fs::read(fragment()).with_context(|| format!("cannot read {}", fragment().display()))?;
    let key = kernel_key(&version, &fragment_text);
    let kernels = cache_dir().join("kernel");
    let dir = kernels.join(format!("vmctl-{key}"));
    let kernel = Kernel {
        dir: dir.clone(),
        key: key.clone(),
    };
    if ["bzImage", "vmlinux", "config"]
        .iter()
        .all(|f| dir.join(f).exists())
    {
        return Ok(kernel);
    }
    fs::create_dir_all(&kernels)?;
    remove_stale(&kernels, "vmctl-", &dir)?;
    let build = kernels.join(format!("build-{key}"));
    remove_stale(&kernels, "build-", &build)?;
    if build.exists() {
        fs::remove_dir_all(&build)?;
    }
    fs::create_dir_all(&build)?;
    eprintln!(
        "xtask: building the guest kernel from {SOURCE_PACKAGE} {version} \
         (~10 min on 2 cores, once per change; cached in {})",
        dir.display()
    );
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball())
            .arg("-C")
            .arg(&build),
    )?;
    let src = build.join(SOURCE_PACKAGE);
    configure(&src)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    cmd::run(
        Command::new("make")
            .current_dir(&src)
            .arg(format!("-j{jobs}"))
            // Only warnings and errors: thousands of "CC" lines would bury
            // the rest of a CI log.
            .arg("-s")
            .arg("bzImage")
            // Reproducible: the same inputs give the same kernel anywhere.
            .env(
                "KBUILD_BUILD_TIMESTAMP",
                format!("{SOURCE_PACKAGE} {version}"),
            )
            .env("KBUILD_BUILD_USER", "vmctl")
            .env("KBUILD_BUILD_HOST", "vmctl"),
    )?;
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    for (from, to) in [
        ("arch/x86/boot/bzImage", "bzImage"),
        ("vmlinux", "vmlinux"),
        (".config", "config"),
    ] {
        fs::copy(src.join(from), tmp.join(to))
            .with_context(|| format!("the kernel build left no {from}"))?;
    }
    fs::rename(&tmp, &dir)?;
    fs::remove_dir_all(&build)?;
    Ok(kernel)
}

/// `allnoconfig` + the fragment; fails naming every option that did not
/// stick (a dependency missing in this kernel version): fix the fragment.
fn configure(src: &Path) -> Result<()> {
    let out = Command::new("scripts/kconfig/merge_config.sh")
        .current_dir(src)
        .arg("-n")
        .arg(fragment())
        .output()
        .context("cannot run merge_config.sh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "merge_config.sh failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lost = options_not_set(&text);
    if !lost.is_empty() {
        bail!(
            "kernel/vmctl-guest.config: {} did not stick on {BASE} (missing dependency?): {}",
            if lost.len() == 1 {
                "this option"
            } else {
                "these options"
            },
            lost.join(", ")
        );
    }
    Ok(())
}

/// The options `merge_config.sh` reports as "not in final .config".
fn options_not_set(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("Value requested for "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn source_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .context("cannot run dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() || !tarball().exists() {
        bail!(
            "{SOURCE_PACKAGE} is not installed (it provides {}); run `cargo xtask deps` as root",
            tarball().display()
        );
    }
    Ok(version)
}

fn kernel_key(version: &str, fragment: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(format!(
        "{SOURCE_PACKAGE} {version}\n{BASE}\n{BUILD_VERSION}\n"
    ));
    hash.update(fragment);
    let digest = hash.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_inputs() {
        let k = kernel_key("6.12.95-1", b"CONFIG_VSOCKETS=y\n");
        assert_eq!(k.len(), 16);
        assert_eq!(k, kernel_key("6.12.95-1", b"CONFIG_VSOCKETS=y\n"));
        assert_ne!(k, kernel_key("6.12.96-1", b"CONFIG_VSOCKETS=y\n"));
        assert_ne!(k, kernel_key("6.12.95-1", b"CONFIG_VSOCKETS=n\n"));
    }

    /// Builds the kernel for real (about 10 minutes on two cores); point
    /// `VMCTL_CACHE_DIR` at an empty directory to build it from nothing.
    #[test]
    #[ignore = "builds the guest kernel: minutes of CPU"]
    fn builds_from_the_installed_source() {
        let kernel = ensure().unwrap();
        for file in ["bzImage", "vmlinux", "config"] {
            assert!(kernel.dir.join(file).is_file(), "no {file}");
        }
        let config = fs::read_to_string(kernel.dir.join("config")).unwrap();
        assert!(config.contains("\nCONFIG_VIRTIO_VSOCKETS=y\n"));
        assert!(config.contains("\n# CONFIG_MODULES is not set\n"));
    }

    #[test]
    fn lost_options_are_named() {
        let report = "Using .config as base\n\
            Value requested for CONFIG_9P_FS not in final .config\n\
            Requested value:  CONFIG_9P_FS=y\n\
            Actual value:     \n\
            \n\
            Value requested for CONFIG_PVH not in final .config\n";
        assert_eq!(options_not_set(report), ["CONFIG_9P_FS", "CONFIG_PVH"]);
        assert!(options_not_set("#\n# configuration written to .config\n").is_empty());
    }
}
