//! Ephemeral VMs (`vmctl create --ephemeral`): the root disk is discarded
//! at every stop and cloned afresh from the image at each start.
//!
//! At start, before the VMM opens it, [`fresh_root`] clones the image's
//! `root.raw` beside the VM's root disk and renames it over it, so the VM
//! boots from the image as it is now, never from a half-made copy. The
//! clone is `cp --reflink=auto --sparse=always`: coreutils reflinks where
//! the file system can (its `copy_file_range` clones on btrfs and XFS even
//! across the unit's bind mounts, where `FICLONE` would refuse with EXDEV)
//! and else copies only the image's data extents. After the VMM is gone,
//! [`discard_root`] empties the disk in place (truncated to nothing, then
//! back to its size: every block freed at once), so what the guest wrote
//! does not outlive the stop; a launcher killed before that is covered by
//! the next start's fresh clone.

use std::{
    fs::OpenOptions,
    path::Path,
    process::{Command, Stdio},
};

/// Replaces `root_disk` by a fresh clone of `image_root`, `size` bytes
/// long (at least the image's size).
pub fn fresh_root(image_root: &Path, root_disk: &Path, size: u64) -> Result<(), String> {
    let fresh = root_disk.with_extension("raw.fresh");
    // A leftover of a start killed here.
    let _ = std::fs::remove_file(&fresh);
    let result = clone(image_root, &fresh, size)
        .and_then(|()| std::fs::rename(&fresh, root_disk).map_err(|e| e.to_string()));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&fresh);
        return Err(format!(
            "cannot clone a fresh root disk for this ephemeral VM from {} to {}: {e}",
            image_root.display(),
            root_disk.display()
        ));
    }
    Ok(())
}

fn clone(image_root: &Path, to: &Path, size: u64) -> Result<(), String> {
    let out = Command::new("cp")
        .args([
            "--reflink=auto",
            "--sparse=always",
            "--no-preserve=all",
            "--",
        ])
        .arg(image_root)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cp {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let file = OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    file.set_len(size.max(len)).map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

/// Frees every block of `root_disk`, keeping its size (the VM is down).
pub fn discard_root(root_disk: &Path) -> Result<(), String> {
    let discard = || -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(root_disk)?;
        let size = file.metadata()?.len();
        file.set_len(0)?;
        file.set_len(size)?;
        file.sync_all()
    };
    discard().map_err(|e| format!("cannot discard {}: {e}", root_disk.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn each_start_gets_the_image_and_a_stop_frees_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        let root = dir.path().join("root.raw");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(8 << 20).unwrap();
        file.write_all_at(b"the image", 4 << 20).unwrap();

        fresh_root(&image, &root, 16 << 20).unwrap();
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&root)
            .unwrap();
        assert_eq!(disk.metadata().unwrap().len(), 16 << 20);
        let mut buf = [0u8; 9];
        disk.read_exact_at(&mut buf, 4 << 20).unwrap();
        assert_eq!(&buf, b"the image");
        // A sparse copy (or a reflink): not 16 MiB of blocks.
        assert!(disk.metadata().unwrap().blocks() * 512 < 8 << 20);
        disk.write_all_at(b"guest wrote", 0).unwrap();
        drop(disk);

        discard_root(&root).unwrap();
        let meta = std::fs::metadata(&root).unwrap();
        assert_eq!((meta.len(), meta.blocks()), (16 << 20, 0));

        fresh_root(&image, &root, 16 << 20).unwrap();
        let disk = std::fs::File::open(&root).unwrap();
        let mut head = [1u8; 11];
        disk.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, [0u8; 11], "what the guest wrote is gone");
        disk.read_exact_at(&mut buf, 4 << 20).unwrap();
        assert_eq!(&buf, b"the image");
        assert!(!dir.path().join("root.raw.fresh").exists());
    }

    #[test]
    fn a_missing_image_names_both_files_and_leaves_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.raw");
        std::fs::write(&root, b"old").unwrap();
        let e = fresh_root(&dir.path().join("nope.raw"), &root, 1 << 20).unwrap_err();
        assert!(e.contains("nope.raw") && e.contains("root.raw"), "{e}");
        assert_eq!(std::fs::read(&root).unwrap(), b"old");
        assert!(!dir.path().join("root.raw.fresh").exists());
    }
}
