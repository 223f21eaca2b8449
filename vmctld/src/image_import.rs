//! `vmctl image import NAME ROOT --kernel FILE [--initrd FILE]`: an image
//! from a raw disk with a kernel (and an initrd) beside it. With one
//! descriptor only, a container image ([`crate::container_import`]).
//!
//! The client opens the files itself and sends them as descriptors with
//! the `ImportImage` call (`SCM_RIGHTS`, in the order root disk, kernel,
//! initrd): vmctld never opens a path on a caller's behalf, so a caller
//! can import only what it can read. The files are checked before
//! anything is kept (the root disk holds a file system directly, as
//! `root=/dev/vda` mounts it; the kernel is a bzImage), copied into a
//! temporary directory beside the images (the root disk as a reflink where
//! the file system can, else sparsely) and renamed into place at the end:
//! an import that fails or is killed leaves no image, only a dot-directory
//! that is not an image and that the next import of that name removes.

use std::{
    fs::{self, File},
    io,
    os::{
        fd::OwnedFd,
        unix::fs::{FileExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use vmctl_api::validate_vm_name;

use crate::{authz::Action, container_import, disk, Caller, Manager, ManagerError};

/// How many descriptors `ImportImage` takes at most: root, kernel, initrd.
pub const MAX_FDS: usize = 3;

impl Manager {
    /// Imports image `name` from the open `files` (root disk, kernel,
    /// optionally initrd). Needs org.vmctl.image.manage.
    pub async fn import_image(
        &self,
        caller: &Caller,
        name: &str,
        files: Vec<OwnedFd>,
    ) -> Result<(), ManagerError> {
        self.authorize(caller, Action::ImageManage).await?;
        validate_vm_name(name).map_err(|e| invalid("name", format!("{name:?}: {e}")))?;
        if !(1..=MAX_FDS).contains(&files.len()) {
            return Err(invalid(
                "descriptors",
                format!(
                    "ImportImage takes a container image (a tarball or an OCI layout \
                     directory), or the root disk, the kernel and optionally the initrd, as \
                     descriptors, in that order; {} came",
                    files.len()
                ),
            ));
        }
        let images = self.layout().state_dir.join("images");
        let target = self.layout().image_dir(name);
        if target.exists() {
            return Err(invalid(
                "name",
                format!("image {name:?} exists already; remove it first: vmctl image rm {name}"),
            ));
        }
        let name = name.to_string();
        if files.len() == 1 {
            let fd = files.into_iter().next().expect("one descriptor");
            return tokio::task::spawn_blocking(move || {
                let source = container_import::Source::from_fd(fd)?;
                fs::create_dir_all(&images).map_err(io_error(&images))?;
                let inputs = container_import::Inputs {
                    images: &images,
                    name: &name,
                    agent: Path::new(container_import::GUEST_AGENT),
                };
                container_import::import(&inputs, source)
            })
            .await
            .map_err(ManagerError::internal)?;
        }
        tokio::task::spawn_blocking(move || {
            let mut files = files.into_iter().map(File::from);
            let (root, kernel) = (files.next(), files.next());
            let (Some(root), Some(kernel)) = (root, kernel) else {
                return Err(invalid(
                    "descriptors",
                    "root disk and kernel expected".into(),
                ));
            };
            import(&images, &name, root, kernel, files.next())
        })
        .await
        .map_err(ManagerError::internal)?
    }
}

fn invalid(what: &str, reason: String) -> ManagerError {
    ManagerError::InvalidArgument {
        what: what.into(),
        reason,
    }
}

fn import(
    images: &Path,
    name: &str,
    root: File,
    kernel: File,
    initrd: Option<File>,
) -> Result<(), ManagerError> {
    check_root(&root)?;
    check_kernel(&kernel)?;
    if let Some(initrd) = &initrd {
        if regular_len(initrd, "initrd")? == 0 {
            return Err(invalid("initrd", "the initrd is empty".into()));
        }
    }
    fs::create_dir_all(images).map_err(io_error(images))?;
    let tmp = images.join(format!(".{name}.import"));
    // A leftover of an import that was killed.
    let _ = fs::remove_dir_all(&tmp);
    let result = fill(&tmp, name, root, kernel, initrd).and_then(|()| {
        let target = images.join(name);
        fs::rename(&tmp, &target).map_err(|e| {
            if target.exists() {
                invalid("name", format!("image {name:?} was made meanwhile"))
            } else {
                io_error(&target)(e)
            }
        })
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Copies the files into the new directory `tmp`, each synced.
fn fill(
    tmp: &Path,
    name: &str,
    root: File,
    mut kernel: File,
    initrd: Option<File>,
) -> Result<(), ManagerError> {
    fs::create_dir(tmp).map_err(io_error(tmp))?;
    let len = root.metadata().map_err(io_error(tmp))?.len();
    tracing::info!("image import {name}: copying the root disk ({len} bytes)");
    let root_path = tmp.join("root.raw");
    let method = disk::copy_disk_from(root, &root_path, len).map_err(io_error(&root_path))?;
    tracing::info!("image import {name}: root disk copied ({method:?})");
    copy_file(&mut kernel, &tmp.join("vmlinuz"))?;
    if let Some(mut initrd) = initrd {
        copy_file(&mut initrd, &tmp.join("initrd.img"))?;
    }
    // Like the images vmctl installs: the unprivileged VMM of every VM
    // made from it reads the kernel and initrd through the unit's
    // read-only bind of the images (vmctld's umask would make them 0600).
    for entry in fs::read_dir(tmp).map_err(io_error(tmp))? {
        let path = entry.map_err(io_error(tmp))?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io_error(&path))?;
    }
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).map_err(io_error(tmp))?;
    File::open(tmp)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(tmp))?;
    tracing::info!("image import {name}: complete");
    Ok(())
}

fn copy_file(from: &mut File, to: &Path) -> Result<(), ManagerError> {
    let mut out = File::create(to).map_err(io_error(to))?;
    io::copy(from, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(io_error(to))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ManagerError {
    let path: PathBuf = path.to_path_buf();
    move |e| ManagerError::internal(format!("{}: {e}", path.display()))
}

/// The length of `file`, which must be a regular file.
fn regular_len(file: &File, what: &str) -> Result<u64, ManagerError> {
    let meta = file
        .metadata()
        .map_err(|e| invalid(what, format!("cannot read the {what}: {e}")))?;
    if !meta.is_file() {
        return Err(invalid(what, format!("the {what} is not a regular file")));
    }
    Ok(meta.len())
}

/// A root disk is a file system directly on the disk (`root=/dev/vda`):
/// ext2/3/4, XFS or btrfs, recognised by their superblock magic.
fn check_root(root: &File) -> Result<(), ManagerError> {
    let len = regular_len(root, "root disk")?;
    if len == 0 || len % 512 != 0 {
        return Err(invalid(
            "root disk",
            format!("{len} bytes is not a disk image (a multiple of 512 bytes)"),
        ));
    }
    let at = |offset: u64, n: usize| -> Vec<u8> {
        let mut buf = vec![0u8; n];
        match root.read_exact_at(&mut buf, offset) {
            Ok(()) => buf,
            Err(_) => Vec::new(),
        }
    };
    let ext = at(1080, 2) == [0x53, 0xef];
    let xfs = at(0, 4) == b"XFSB";
    let btrfs = at(0x10040, 8) == b"_BHRfS_M";
    if ext || xfs || btrfs {
        Ok(())
    } else {
        Err(invalid(
            "root disk",
            "no ext4, XFS or btrfs file system at the start of the disk (vmctl boots \
             root=/dev/vda: give a raw file system image, not a partitioned disk or a \
             qcow2/VMDK file)"
                .into(),
        ))
    }
}

/// A kernel is an x86 bzImage (`HdrS` at 0x202).
fn check_kernel(kernel: &File) -> Result<(), ManagerError> {
    regular_len(kernel, "kernel")?;
    let mut magic = [0u8; 4];
    let ok = kernel.read_exact_at(&mut magic, 0x202).is_ok() && &magic == b"HdrS";
    if !ok {
        return Err(invalid(
            "kernel",
            "the kernel is not an x86 bzImage (vmlinuz: \"HdrS\" at offset 0x202)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{lifecycle::testing::setup, Registry};

    /// A raw ext4-looking root disk, a bzImage-looking kernel, an initrd.
    fn files(dir: &Path, root_magic: bool) -> Vec<OwnedFd> {
        // Each call its own files: the descriptors of earlier calls stay
        // open on theirs.
        let dir = &tempfile::tempdir_in(dir).unwrap().keep();
        let root = dir.join("in-root.raw");
        let f = File::create(&root).unwrap();
        f.set_len(8 << 20).unwrap();
        if root_magic {
            f.write_all_at(&[0x53, 0xef], 1080).unwrap();
        }
        f.write_all_at(b"root data", 4 << 20).unwrap();
        let kernel = dir.join("in-vmlinuz");
        let mut k = vec![0u8; 4096];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&kernel, &k).unwrap();
        fs::write(dir.join("in-initrd"), b"initrd").unwrap();
        ["in-root.raw", "in-vmlinuz", "in-initrd"]
            .iter()
            .map(|f| OwnedFd::from(File::open(dir.join(f)).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn an_import_makes_a_usable_image_from_open_files() {
        let (dir, m) = setup();
        m.import_image(&Caller::ROOT, "imported", files(dir.path(), true))
            .await
            .unwrap();
        let image = m.layout().image_dir("imported");
        let mut data = [0u8; 9];
        File::open(image.join("root.raw"))
            .unwrap()
            .read_exact_at(&mut data, 4 << 20)
            .unwrap();
        assert_eq!(&data, b"root data");
        assert_eq!(fs::read(image.join("initrd.img")).unwrap(), b"initrd");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&image), 0o755);
        for f in ["root.raw", "vmlinuz", "initrd.img"] {
            assert_eq!(mode(&image.join(f)), 0o644, "{f}");
        }
        assert_eq!(
            &fs::read(image.join("vmlinuz")).unwrap()[0x202..0x206],
            b"HdrS"
        );
        let names: Vec<_> = m
            .list_images(&Caller::ROOT)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["default", "imported"]);
        // A VM can be made from it.
        m.create(
            &Caller::ROOT,
            vmctl_api::CreateParams {
                name: "fromimport".into(),
                image: Some("imported".into()),
                memory_bytes: Some(256 << 20),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Not twice.
        let e = m
            .import_image(&Caller::ROOT, "imported", files(dir.path(), true))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
    }

    #[tokio::test]
    async fn bad_imports_name_the_cause_and_leave_nothing() {
        let (dir, m) = setup();
        let before = fs::read_dir(dir.path().join("images")).unwrap().count();
        let mut none = files(dir.path(), true);
        none.clear();
        let mut bad_kernel = files(dir.path(), true);
        bad_kernel.swap(1, 2);
        for (name, fds, what) in [
            ("nomagic", files(dir.path(), false), "no ext4, XFS or btrfs"),
            ("nofile", none, "ImportImage takes a container image"),
            ("badkernel", bad_kernel, "not an x86 bzImage"),
            ("../etc", files(dir.path(), true), "\"../etc\""),
        ] {
            let e = m.import_image(&Caller::ROOT, name, fds).await.unwrap_err();
            assert_eq!(e.short_name(), "InvalidArgument", "{name}: {e}");
            assert!(e.to_string().contains(what), "{name}: {e}");
        }
        assert_eq!(
            fs::read_dir(dir.path().join("images")).unwrap().count(),
            before
        );
        // Without org.vmctl.image.manage: refused before anything is read.
        let m = Manager::new(Registry::new(dir.path()))
            .with_authority(crate::authz::Authority::fixed([(65534, Action::Create)]));
        let e = m
            .import_image(
                &Caller::without_subject(65534),
                "x",
                files(dir.path(), true),
            )
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "PermissionDenied", "{e}");
    }
}
