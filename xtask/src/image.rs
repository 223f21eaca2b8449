//! `cargo xtask image`: the default guest image, built once per content.
//!
//! mkosi (configuration in `mkosi/`) builds a Debian directory tree with the
//! guest agent added as an extra tree; `mkfs.ext4 -d` turns it into a raw
//! root filesystem; the kernel and initrd are taken out of its `/boot` for
//! direct kernel boot. The result lives in `target/images/default-<hash>/`,
//! where the hash covers every file of `mkosi/`, the agent binary and its
//! unit, so an unchanged definition is never rebuilt.

use crate::cmd;
use crate::paths::{target_dir, workspace_root};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the root filesystem image (sparse; the tree uses ~450 MiB).
const ROOT_SIZE: &str = "2G";

/// The files of a built guest image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Directory holding the three files.
    pub dir: PathBuf,
}

impl Image {
    /// Files of an image, by their name in an image directory.
    pub const FILES: [&'static str; 3] = ["root.raw", "vmlinuz", "initrd.img"];
}

fn agent_binary() -> PathBuf {
    target_dir().join("debug/vmctl-guest-agent")
}

fn agent_unit() -> PathBuf {
    workspace_root().join("guest/vmctl-guest-agent.service")
}

/// Builds the default image unless one for the current content exists.
pub fn ensure_default() -> Result<Image> {
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "vmctl-guest",
                "--bin",
                "vmctl-guest-agent",
            ]),
    )?;
    let key = content_key()?;
    let images = target_dir().join("images");
    let dir = images.join(format!("default-{key}"));
    if Image::FILES.iter().all(|f| dir.join(f).exists()) {
        return Ok(Image { dir });
    }
    fs::create_dir_all(&images)?;
    for entry in fs::read_dir(&images)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("default-") && entry.path() != dir {
            eprintln!("xtask: removing stale image {}", entry.path().display());
            fs::remove_dir_all(entry.path())?;
        }
    }
    eprintln!("xtask: building the guest image with mkosi (~30 s, cached by content)");
    let work = images.join(format!("build-{key}"));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let extra = work.join("agent-tree");
    stage_agent(&extra)?;
    cmd::run(
        Command::new("mkosi")
            .arg("--directory")
            .arg(workspace_root().join("mkosi"))
            .arg("--output-dir")
            .arg(&work)
            .arg("--extra-tree")
            .arg(&extra)
            .args(["--force", "build"]),
    )?;
    let tree = work.join("guest");
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    copy_boot_file(&tree, "vmlinuz-", &tmp.join("vmlinuz"))?;
    copy_boot_file(&tree, "initrd.img-", &tmp.join("initrd.img"))?;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&tree)
            .arg(tmp.join("root.raw"))
            .arg(ROOT_SIZE),
    )?;
    fs::rename(&tmp, &dir)?;
    fs::remove_dir_all(&work)?;
    Ok(Image { dir })
}

fn stage_agent(extra: &Path) -> Result<()> {
    let bin = extra.join("usr/libexec/vmctl-guest-agent");
    let unit = extra.join("usr/lib/systemd/system/vmctl-guest-agent.service");
    for (from, to) in [(agent_binary(), &bin), (agent_unit(), &unit)] {
        fs::create_dir_all(to.parent().expect("staged paths have parents"))?;
        fs::copy(&from, to).with_context(|| format!("cannot stage {}", from.display()))?;
    }
    Ok(())
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

/// Hash of everything that defines the image.
fn content_key() -> Result<String> {
    let mut files = Vec::new();
    collect_files(&workspace_root().join("mkosi"), &mut files)?;
    files.sort();
    files.push(agent_binary());
    files.push(agent_unit());
    let mut hash = Sha256::new();
    let root = workspace_root();
    for file in files {
        let name = file.strip_prefix(&root).unwrap_or(&file);
        hash.update(name.to_string_lossy().as_bytes());
        hash.update(fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
    }
    let digest = hash.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
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
