//! `cargo xtask image`: the guest images, built once per content and cached
//! outside the checkout (see [`crate::paths::cache_dir`]).
//!
//! Two cached steps, so that changing the agent does not rebuild Debian:
//! 1. mkosi (configuration in `mkosi/`) builds a Debian directory tree into
//!    `<cache>/images/tree-<hash of mkosi/>/guest` (about a minute);
//! 2. that tree plus the guest agent and its unit becomes `root.raw` with
//!    `mkfs.ext4 -d` (seconds), in `<cache>/images/image-<hash>/`, where the
//!    hash covers the tree's key, the agent, its unit and the kernel's key.
//!
//! One root filesystem, two ways to boot it, one directory each (the layout
//! of an image directory in `/var/lib/vmctl/images/`):
//! - `default/`: `root.raw` and `vmlinuz` = vmctl's own kernel
//!   ([`crate::kernel`]), no initrd: `root=/dev/vda` mounts directly; also
//!   `vmlinux`, the same kernel as an ELF with a PVH entry point, which
//!   cloud-hypervisor boots directly without firmware;
//! - `debian-kernel/`: the same `root.raw` with Debian's cloud kernel and
//!   its initramfs-tools initrd from the tree's `/boot`, for images that
//!   bring their own kernel.
//!
//! A third image, built only for `cargo xtask bench` ([`ensure_stock`]):
//! `debian-stock/`, the same package set built from `mkosi/stock/` without
//! the boot trims (the image as it was when issue 8 was filed), with
//! Debian's kernel and initrd: the benchmark's old path.
//!
//! A fourth, built only for the LVM e2e test ([`ensure_lvm`]): `debian-lvm/`,
//! the default tree's configuration plus lvm2 and thin-provisioning-tools
//! (`mkosi/lvm/`), the agent and its unit, with Debian's kernel and initrd,
//! whose `dm-thin-pool` is a module (vmctl's own kernel has no
//! device-mapper).

use crate::cmd;
use crate::kernel::{self, Kernel};
use crate::paths::{cache_dir, remove_stale, target_dir, workspace_root};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the root filesystem image (sparse; the tree uses ~450 MiB).
const ROOT_SIZE: &str = "2G";

/// Bump when the files of the image directories change.
const LAYOUT: &str = "layout 2";

/// Name of the image booted with vmctl's kernel and no initrd.
pub const DEFAULT: &str = "default";

/// Name of the image booted with Debian's kernel and initrd.
pub const DEBIAN_KERNEL: &str = "debian-kernel";

/// Name of the untrimmed image booted with Debian's kernel and initrd.
pub const STOCK: &str = "debian-stock";

/// Name of the image with LVM (Debian's kernel and initrd).
pub const LVM: &str = "debian-lvm";

/// A built pair of guest images sharing one root filesystem.
#[derive(Debug, Clone)]
pub struct Image {
    /// The `default` image directory (`root.raw`, `vmlinuz`).
    pub dir: PathBuf,
}

impl Image {
    /// Directory of the image `name` ([`DEFAULT`] or [`DEBIAN_KERNEL`]).
    pub fn named(&self, name: &str) -> PathBuf {
        self.dir
            .parent()
            .expect("image directories have a parent")
            .join(name)
    }

    /// Installs both images into `images` (an `/var/lib/vmctl/images`);
    /// the second `root.raw` is a hard link to the first (images are only
    /// ever copied from, never written).
    pub fn install_into(&self, images: &Path) -> Result<()> {
        let mut first_root = None;
        for name in [DEFAULT, DEBIAN_KERNEL] {
            let from = self.named(name);
            let to = images.join(name);
            if to.exists() {
                fs::remove_dir_all(&to)?;
            }
            fs::create_dir_all(&to)?;
            for entry in fs::read_dir(&from)? {
                let entry = entry?;
                let dest = to.join(entry.file_name());
                match (&first_root, entry.file_name() == "root.raw") {
                    (Some(root), true) => fs::hard_link(root, &dest)?,
                    _ => cmd::run(
                        Command::new("cp")
                            .args(["--sparse=always", "--reflink=auto"])
                            .arg(entry.path())
                            .arg(&dest),
                    )?,
                }
                if entry.file_name() == "root.raw" {
                    first_root.get_or_insert(dest);
                }
            }
        }
        Ok(())
    }
}

/// The agent goes into the image release-built: it is on every boot's
/// path to READY, and under TCG the debug build took 0.9-1.1 s from start
/// to listening where the release build takes 0.4-0.6 s.
fn agent_binary() -> PathBuf {
    target_dir().join("release/vmctl-guest-agent")
}

fn agent_unit() -> PathBuf {
    workspace_root().join("guest/vmctl-guest-agent.service")
}

const AGENT_UNIT_NAME: &str = "vmctl-guest-agent.service";

/// Builds the release guest agent (cargo decides whether it is current).
fn build_agent() -> Result<()> {
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "vmctl-guest",
                "--bin",
                "vmctl-guest-agent",
            ]),
    )
}

/// Builds the guest kernel, the mkosi tree and the images unless cached.
pub fn ensure_default() -> Result<Image> {
    build_agent()?;
    let kernel = kernel::ensure()?;
    let images = cache_dir().join("images");
    let tree = ensure_tree(&images, &mkosi_dir(), &default_inputs()?, "tree-")?;
    let key = image_key(&tree.key, &kernel)?;
    let top = images.join(format!("image-{key}"));
    let image = Image {
        dir: top.join(DEFAULT),
    };
    if top.join(DEBIAN_KERNEL).join("initrd.img").exists() {
        return Ok(image);
    }
    fs::create_dir_all(&images)?;
    remove_stale(&images, "image-", &top)?;
    eprintln!("xtask: making the guest images from the cached tree and the agent");
    let tmp = top.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let default = tmp.join(DEFAULT);
    let debian = tmp.join(DEBIAN_KERNEL);
    fs::create_dir_all(&default)?;
    fs::create_dir_all(&debian)?;
    make_root(
        &tree.dir,
        &tmp.join("stage"),
        true,
        &default.join("root.raw"),
    )?;
    fs::hard_link(default.join("root.raw"), debian.join("root.raw"))?;
    fs::copy(kernel.bzimage(), default.join("vmlinuz"))?;
    fs::copy(kernel.vmlinux(), default.join("vmlinux"))?;
    copy_boot_file(&tree.dir, "vmlinuz-", &debian.join("vmlinuz"))?;
    copy_boot_file(&tree.dir, "initrd.img-", &debian.join("initrd.img"))?;
    fs::rename(&tmp, &top)?;
    Ok(image)
}

/// Builds the benchmark's stock image (`mkosi/stock/`, the release agent,
/// Debian's kernel and initrd) unless cached; returns its directory.
pub fn ensure_stock() -> Result<PathBuf> {
    build_agent()?;
    let images = cache_dir().join("images");
    let tree = ensure_tree(&images, &stock_config(), &stock_inputs()?, "stock-tree-")?;
    let key = hash_strings(&[LAYOUT, &tree.key, &hash_files(&[agent_binary()])?]);
    let top = images.join(format!("stock-image-{key}"));
    let dir = top.join(STOCK);
    if dir.join("initrd.img").exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&images)?;
    remove_stale(&images, "stock-image-", &top)?;
    eprintln!("xtask: making the stock image from the cached stock tree and the agent");
    let tmp = top.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let out = tmp.join(STOCK);
    fs::create_dir_all(&out)?;
    // The tree has the agent's unit of that time (mkosi enabled it).
    make_root(&tree.dir, &tmp.join("stage"), false, &out.join("root.raw"))?;
    copy_boot_file(&tree.dir, "vmlinuz-", &out.join("vmlinuz"))?;
    copy_boot_file(&tree.dir, "initrd.img-", &out.join("initrd.img"))?;
    fs::rename(&tmp, &top)?;
    Ok(dir)
}

/// Builds the LVM test image (`mkosi/lvm/`, the release agent and its
/// unit, Debian's kernel and initrd) unless cached; returns its directory.
pub fn ensure_lvm() -> Result<PathBuf> {
    build_agent()?;
    let images = cache_dir().join("images");
    let tree = ensure_tree(&images, &lvm_config(), &lvm_inputs()?, "lvm-tree-")?;
    let key = hash_strings(&[
        LAYOUT,
        &tree.key,
        &hash_files(&[agent_binary(), agent_unit()])?,
    ]);
    let top = images.join(format!("lvm-image-{key}"));
    let dir = top.join(LVM);
    if dir.join("initrd.img").exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&images)?;
    remove_stale(&images, "lvm-image-", &top)?;
    eprintln!("xtask: making the LVM test image from the cached LVM tree and the agent");
    let tmp = top.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let out = tmp.join(LVM);
    fs::create_dir_all(&out)?;
    make_root(&tree.dir, &tmp.join("stage"), true, &out.join("root.raw"))?;
    copy_boot_file(&tree.dir, "vmlinuz-", &out.join("vmlinuz"))?;
    copy_boot_file(&tree.dir, "initrd.img-", &out.join("initrd.img"))?;
    fs::rename(&tmp, &top)?;
    Ok(dir)
}

/// Makes `root` (an ext4 image) from `tree` plus the agent (and its unit
/// from `guest/` when `with_unit`), staged in `stage`.
fn make_root(tree: &Path, stage: &Path, with_unit: bool, root: &Path) -> Result<()> {
    // A tree of hard links (instant): adding the agent must not touch the
    // cached tree, so files are only ever added to the stage, never
    // rewritten in place.
    cmd::run(Command::new("cp").arg("-al").arg(tree).arg(stage))?;
    stage_agent(stage, with_unit)?;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(stage)
            .arg(root)
            .arg(ROOT_SIZE),
    )?;
    fs::remove_dir_all(stage)?;
    Ok(())
}

fn mkosi_dir() -> PathBuf {
    workspace_root().join("mkosi")
}

fn stock_config() -> PathBuf {
    mkosi_dir().join("stock")
}

fn lvm_config() -> PathBuf {
    mkosi_dir().join("lvm")
}

/// What the default tree is built from: `mkosi/` but its documentation and
/// the stock and LVM variants.
fn default_inputs() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    collect_files(&mkosi_dir(), &mut files)?;
    let (stock, lvm) = (stock_config(), lvm_config());
    files.retain(|f| !f.starts_with(&stock) && !f.starts_with(&lvm));
    Ok(files)
}

/// What the LVM tree is built from: everything of the default tree (its
/// `mkosi.conf` includes `mkosi/` whole) and `mkosi/lvm/`.
fn lvm_inputs() -> Result<Vec<PathBuf>> {
    let mut files = default_inputs()?;
    collect_files(&lvm_config(), &mut files)?;
    Ok(files)
}

/// What the stock tree is built from: `mkosi/stock/`, the `mkosi.conf` it
/// includes and the repository list.
fn stock_inputs() -> Result<Vec<PathBuf>> {
    let mut files = vec![mkosi_dir().join("mkosi.conf")];
    collect_files(&stock_config(), &mut files)?;
    collect_files(&mkosi_dir().join("mkosi.pkgmngr"), &mut files)?;
    Ok(files)
}

/// The cached mkosi output tree.
struct Tree {
    /// The root of the guest's filesystem.
    dir: PathBuf,
    /// Hash of its inputs.
    key: String,
}

/// Runs mkosi on `config` unless a tree `<prefix><hash of inputs>` exists.
fn ensure_tree(images: &Path, config: &Path, inputs: &[PathBuf], prefix: &str) -> Result<Tree> {
    // Documentation does not go into the tree.
    let mut files: Vec<PathBuf> = inputs
        .iter()
        .filter(|f| f.extension().is_none_or(|e| e != "md"))
        .cloned()
        .collect();
    files.sort();
    let key = hash_files(&files)?;
    let out = images.join(format!("{prefix}{key}"));
    let tree = Tree {
        dir: out.join("guest"),
        key,
    };
    if tree.dir.join("usr/lib/systemd/systemd").exists() {
        return Ok(tree);
    }
    fs::create_dir_all(images)?;
    remove_stale(images, prefix, &out)?;
    eprintln!(
        "xtask: building the guest tree {} with mkosi (~1 min, cached by its content)",
        config.display()
    );
    let tmp = out.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    cmd::run(
        Command::new("mkosi")
            .arg("--directory")
            .arg(config)
            .arg("--output-dir")
            .arg(&tmp)
            .args(["--force", "build"]),
    )?;
    fs::rename(&tmp, &out)?;
    Ok(tree)
}

/// Adds the agent to `root`, and with `with_unit` its unit, enabled as its
/// `[Install]` section says (mkosi applied the presets before the unit was
/// there).
fn stage_agent(root: &Path, with_unit: bool) -> Result<()> {
    let bin = root.join("usr/libexec/vmctl-guest-agent");
    let unit = root.join("usr/lib/systemd/system").join(AGENT_UNIT_NAME);
    let mut files = vec![(agent_binary(), &bin)];
    if with_unit {
        files.push((agent_unit(), &unit));
    }
    for (from, to) in files {
        fs::create_dir_all(to.parent().expect("staged paths have parents"))?;
        // Unlink first: the path may be a hard link into the cached tree.
        let _ = fs::remove_file(to);
        fs::copy(&from, to).with_context(|| format!("cannot stage {}", from.display()))?;
    }
    if !with_unit {
        return Ok(());
    }
    let text = fs::read_to_string(agent_unit())?;
    for target in wanted_by(&text) {
        let wants = root
            .join("etc/systemd/system")
            .join(format!("{target}.wants"));
        fs::create_dir_all(&wants)?;
        let link = wants.join(AGENT_UNIT_NAME);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(
            Path::new("/usr/lib/systemd/system").join(AGENT_UNIT_NAME),
            link,
        )?;
    }
    Ok(())
}

/// The targets of the `WantedBy=` lines of a unit file.
fn wanted_by(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("WantedBy="))
        .flat_map(str::split_whitespace)
        .collect()
}

fn copy_boot_file(tree: &Path, prefix: &str, to: &Path) -> Result<()> {
    let boot = tree.join("boot");
    let mut found: Vec<PathBuf> = fs::read_dir(&boot)
        .with_context(|| format!("the image has no {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    let Some(newest) = found.pop() else {
        bail!("the image has no {prefix}* in {}", boot.display());
    };
    fs::copy(&newest, to).with_context(|| format!("cannot copy {}", newest.display()))?;
    Ok(())
}

/// Key of the images: the tree, the agent, its unit and the kernel.
fn image_key(tree_key: &str, kernel: &Kernel) -> Result<String> {
    let files = [agent_binary(), agent_unit()];
    Ok(hash_strings(&[
        LAYOUT,
        tree_key,
        &kernel.key,
        &hash_files(&files)?,
    ]))
}

fn hash_strings(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update(p.as_bytes());
        hash.update(b"\n");
    }
    short(hash)
}

/// Hash of the names (relative to the workspace) and contents of `files`.
fn hash_files(files: &[PathBuf]) -> Result<String> {
    let mut hash = Sha256::new();
    let root = workspace_root();
    for file in files {
        let name = file.strip_prefix(&root).unwrap_or(file);
        hash.update(name.to_string_lossy().as_bytes());
        hash.update(fs::read(file).with_context(|| format!("cannot read {}", file.display()))?);
    }
    Ok(short(hash))
}

fn short(hash: Sha256) -> String {
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_by_targets() {
        let unit = "[Unit]\nDescription=x\n[Install]\nWantedBy=sysinit.target\nWantedBy=a.target b.target\n";
        assert_eq!(wanted_by(unit), ["sysinit.target", "a.target", "b.target"]);
        assert!(wanted_by("[Service]\nExecStart=/bin/true\n").is_empty());
    }

    #[test]
    fn stock_inputs_do_not_key_the_default_tree() {
        let stock = stock_config();
        let default = default_inputs().unwrap();
        assert!(default.contains(&mkosi_dir().join("mkosi.conf")));
        assert!(default.contains(&mkosi_dir().join("mkosi.finalize")));
        assert!(!default.iter().any(|f| f.starts_with(&stock)));
        let stock_files = stock_inputs().unwrap();
        assert!(stock_files.contains(&stock.join("mkosi.conf")));
        assert!(stock_files.contains(&mkosi_dir().join("mkosi.conf")));
        assert!(!stock_files.contains(&mkosi_dir().join("mkosi.finalize")));
        assert!(!stock_files
            .iter()
            .any(|f| f.starts_with(mkosi_dir().join("mkosi.extra"))));
    }

    #[test]
    fn lvm_inputs_do_not_key_the_default_tree() {
        let lvm = lvm_config();
        assert!(lvm.join("mkosi.conf").exists());
        assert!(!default_inputs()
            .unwrap()
            .iter()
            .any(|f| f.starts_with(&lvm)));
        let lvm_files = lvm_inputs().unwrap();
        assert!(lvm_files.contains(&lvm.join("mkosi.conf")));
        assert!(lvm_files.contains(&mkosi_dir().join("mkosi.finalize")));
        assert!(!lvm_files.iter().any(|f| f.starts_with(stock_config())));
    }

    #[test]
    fn named_images_are_siblings() {
        let image = Image {
            dir: "/c/images/image-1/default".into(),
        };
        assert_eq!(
            image.named(DEBIAN_KERNEL),
            Path::new("/c/images/image-1/debian-kernel")
        );
    }
}
