//! The directory pool: volumes as raw files under the state directory.
//!
//! | volume | file |
//! |---|---|
//! | root of VM `NAME` | `disks/NAME/root.raw` (the launcher's [`Layout::root_disk`]) |
//! | data volume `VOL` | `volumes/VOL.raw` ([`Layout::volume_file`]) |
//!
//! Files are 0600 in 0700 directories (root only). Growing is
//! `ftruncate` (the new space is a hole); shrinking is refused.

use std::{
    fs::{self, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use vmctl_api::spec::Layout;

use super::{validate_volume_name, CloneMethod, PoolStatus, StorageError, Volume, VolumeInfo};
use crate::disk::{self, CopyMethod};

/// Raw files under a state directory.
#[derive(Debug, Clone)]
pub struct DirectoryPool {
    layout: Layout,
}

impl DirectoryPool {
    /// The pool under `state_dir` (created on first use).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            // The runtime directory is not used by the pool.
            layout: Layout::under(state_dir.into(), "/nonexistent"),
        }
    }

    /// The file of `volume`.
    pub fn path(&self, volume: &Volume) -> PathBuf {
        match volume {
            Volume::Root(vm) => self.layout.root_disk(vm),
            Volume::Data(name) => self.layout.volume_file(name),
        }
    }

    fn check_name(volume: &Volume) -> Result<(), StorageError> {
        validate_volume_name(volume.name())
    }

    /// Makes the directory `volume`'s file goes in (0700, with parents).
    fn make_parent(&self, volume: &Volume) -> Result<PathBuf, StorageError> {
        let path = self.path(volume);
        let parent = path.parent().unwrap_or(Path::new("/"));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(StorageError::io(parent))?;
        Ok(path)
    }

    /// See [`super::Storage::clone_image`].
    pub fn clone_image(
        &self,
        image_root: &Path,
        root: &Volume,
        size: u64,
    ) -> Result<CloneMethod, StorageError> {
        Self::check_name(root)?;
        let path = self.make_parent(root)?;
        match disk::copy_disk(image_root, &path, size) {
            Ok(CopyMethod::Reflink) => Ok(CloneMethod::Reflink),
            Ok(CopyMethod::Sparse) => {
                tracing::warn!(
                    "{} is not on a file system with reflinks (btrfs, XFS): {root} is a full \
                     copy of {}, costing time and space in proportion to the image",
                    path.display(),
                    image_root.display()
                );
                Ok(CloneMethod::SparseCopy)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StorageError::Exists(root.clone()))
            }
            Err(e) => {
                // copy_disk made the file (create_new) before failing.
                let _ = fs::remove_file(&path);
                Err(StorageError::Io { path, source: e })
            }
        }
    }

    /// See [`super::Storage::replace_root`]: a clone beside the root,
    /// renamed over it, so the VM has the old root or the new one, never a
    /// partial one.
    pub fn replace_root(
        &self,
        image_root: &Path,
        vm: &str,
        size: u64,
    ) -> Result<CloneMethod, StorageError> {
        let root = Volume::Root(vm.to_string());
        Self::check_name(&root)?;
        let path = self.path(&root);
        if !path.is_file() {
            return Err(StorageError::Missing(root));
        }
        let new = path.with_extension("raw.rebuild");
        // A leftover of an interrupted rebuild.
        let _ = fs::remove_file(&new);
        let method = match disk::copy_disk(image_root, &new, size) {
            Ok(CopyMethod::Reflink) => CloneMethod::Reflink,
            Ok(CopyMethod::Sparse) => CloneMethod::SparseCopy,
            Err(e) => {
                let _ = fs::remove_file(&new);
                return Err(StorageError::Io {
                    path: new,
                    source: e,
                });
            }
        };
        fs::rename(&new, &path).map_err(|e| {
            let _ = fs::remove_file(&new);
            StorageError::Io {
                path: path.clone(),
                source: e,
            }
        })?;
        Ok(method)
    }

    /// See [`super::Storage::create`].
    pub fn create(&self, volume: &Volume, size: u64) -> Result<(), StorageError> {
        Self::check_name(volume)?;
        let path = self.make_parent(volume)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => StorageError::Exists(volume.clone()),
                _ => StorageError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        file.set_len(size)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                let _ = fs::remove_file(&path);
                StorageError::Io {
                    path: path.clone(),
                    source: e,
                }
            })
    }

    /// See [`super::Storage::resize`].
    pub fn resize(&self, volume: &Volume, size: u64) -> Result<(), StorageError> {
        Self::check_name(volume)?;
        let path = self.path(volume);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StorageError::Missing(volume.clone()),
                _ => StorageError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let current = file.metadata().map_err(StorageError::io(&path))?.len();
        if size < current {
            return Err(StorageError::Shrink {
                volume: volume.clone(),
                current,
                requested: size,
            });
        }
        file.set_len(size)
            .and_then(|()| file.sync_all())
            .map_err(StorageError::io(&path))
    }

    /// See [`super::Storage::delete`]. A root volume's directory goes too.
    pub fn delete(&self, volume: &Volume) -> Result<(), StorageError> {
        Self::check_name(volume)?;
        let (path, result) = match volume {
            Volume::Root(vm) => {
                let dir = self.layout.disk_dir(vm);
                let result = fs::remove_dir_all(&dir);
                (dir, result)
            }
            Volume::Data(_) => {
                let path = self.path(volume);
                let result = fs::remove_file(&path);
                (path, result)
            }
        };
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StorageError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// See [`super::Storage::get`].
    pub fn get(&self, volume: &Volume) -> Result<Option<VolumeInfo>, StorageError> {
        Self::check_name(volume)?;
        let path = self.path(volume);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(VolumeInfo {
                volume: volume.clone(),
                size_bytes: m.len(),
                allocated_bytes: m.blocks() * 512,
                path,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Io { path, source: e }),
        }
    }

    /// See [`super::Storage::list`]. Files that are not volumes (bad names,
    /// temporary files) are skipped.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let mut volumes = Vec::new();
        let disks = self.layout.state_dir.join("disks");
        for name in dir_names(&disks)? {
            if let Some(info) = self.get_valid(Volume::Root(name))? {
                volumes.push(info);
            }
        }
        let data = self.layout.state_dir.join("volumes");
        for file in dir_names(&data)? {
            if let Some(name) = file.strip_suffix(".raw") {
                if let Some(info) = self.get_valid(Volume::Data(name.to_string()))? {
                    volumes.push(info);
                }
            }
        }
        volumes.sort_by(|a, b| a.volume.cmp(&b.volume));
        Ok(volumes)
    }

    fn get_valid(&self, volume: Volume) -> Result<Option<VolumeInfo>, StorageError> {
        if validate_volume_name(volume.name()).is_err() {
            return Ok(None);
        }
        self.get(&volume)
    }

    /// See [`super::Storage::status`]. Whether the pool reflinks is probed
    /// by cloning a small file in it, not guessed from the file system type
    /// (XFS reflinks only when made with `reflink=1`).
    pub fn status(&self) -> Result<PoolStatus, StorageError> {
        let dir = &self.layout.state_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(StorageError::io(dir))?;
        let stat = rustix::fs::statvfs(dir).map_err(|e| StorageError::Io {
            path: dir.clone(),
            source: e.into(),
        })?;
        Ok(PoolStatus {
            backend: "directory",
            location: dir.display().to_string(),
            total_bytes: stat.f_blocks * stat.f_frsize,
            free_bytes: stat.f_bavail * stat.f_frsize,
            reflink: probe_reflink(dir).map_err(StorageError::io(dir))?,
        })
    }
}

/// The names of the entries of `dir` (none when it does not exist).
fn dir_names(dir: &Path) -> Result<Vec<String>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StorageError::io(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Whether `FICLONE` works in `dir`: clones a one-block file made there
/// (names with the process ID, removed again).
fn probe_reflink(dir: &Path) -> io::Result<bool> {
    let pid = std::process::id();
    let src_path = dir.join(format!(".reflink-probe-{pid}"));
    let dst_path = dir.join(format!(".reflink-probe-{pid}.clone"));
    let result = (|| {
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
        };
        let src = open(&src_path)?;
        std::os::unix::fs::FileExt::write_all_at(&src, &[1u8; 4096], 0)?;
        let dst = open(&dst_path)?;
        Ok(rustix::fs::ioctl_ficlone(&dst, &src).is_ok())
    })();
    let _ = fs::remove_file(&src_path);
    let _ = fs::remove_file(&dst_path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, PermissionsExt};

    fn pool() -> (tempfile::TempDir, DirectoryPool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = DirectoryPool::new(dir.path());
        (dir, pool)
    }

    #[test]
    fn volumes_are_made_grown_listed_and_deleted() {
        let (dir, pool) = pool();
        let image = dir.path().join("image.raw");
        let f = fs::File::create(&image).unwrap();
        f.write_all_at(b"root fs", 0).unwrap();
        f.set_len(8 << 20).unwrap();
        let root = Volume::Root("blog".into());
        pool.clone_image(&image, &root, 16 << 20).unwrap();
        let data = Volume::Data("blog".into());
        pool.create(&data, 32 << 20).unwrap();

        let root_file = dir.path().join("disks/blog/root.raw");
        assert_eq!(&fs::read(&root_file).unwrap()[..7], b"root fs");
        let meta = fs::metadata(dir.path().join("volumes/blog.raw")).unwrap();
        assert_eq!(meta.len(), 32 << 20);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mode = fs::metadata(dir.path().join("volumes"))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o700);

        let list = pool.list().unwrap();
        let summary: Vec<_> = list
            .iter()
            .map(|v| (v.volume.clone(), v.size_bytes))
            .collect();
        assert_eq!(
            summary,
            [(root.clone(), 16 << 20), (data.clone(), 32 << 20)]
        );

        pool.resize(&data, 64 << 20).unwrap();
        assert_eq!(pool.get(&data).unwrap().unwrap().size_bytes, 64 << 20);
        let e = pool.resize(&data, 1 << 20).unwrap_err();
        assert!(matches!(e, StorageError::Shrink { .. }), "{e}");
        assert_eq!(pool.get(&data).unwrap().unwrap().size_bytes, 64 << 20);

        // Rebuild: the root is a fresh clone again, the data untouched.
        fs::write(pool.path(&root), b"changed by the guest").unwrap();
        pool.replace_root(&image, "blog", 16 << 20).unwrap();
        assert_eq!(&fs::read(&root_file).unwrap()[..7], b"root fs");
        assert_eq!(pool.list().unwrap().len(), 2);
        assert!(matches!(
            pool.replace_root(&image, "nope", 1),
            Err(StorageError::Missing(_))
        ));

        pool.delete(&root).unwrap();
        assert!(!dir.path().join("disks/blog").exists());
        pool.delete(&root).unwrap();
        assert_eq!(pool.list().unwrap().len(), 1);
        pool.delete(&data).unwrap();
        assert!(pool.list().unwrap().is_empty());
    }

    #[test]
    fn existing_missing_and_bad_names_change_nothing() {
        let (dir, pool) = pool();
        let data = Volume::Data("db".into());
        pool.create(&data, 1 << 20).unwrap();
        fs::write(pool.path(&data), b"keep").unwrap();
        assert!(matches!(
            pool.create(&data, 2 << 20),
            Err(StorageError::Exists(_))
        ));
        assert_eq!(fs::read(pool.path(&data)).unwrap(), b"keep");
        let image = dir.path().join("image.raw");
        fs::write(&image, b"img").unwrap();
        let root = Volume::Root("x".into());
        pool.clone_image(&image, &root, 3).unwrap();
        assert!(matches!(
            pool.clone_image(&image, &root, 3),
            Err(StorageError::Exists(_))
        ));
        assert!(matches!(
            pool.resize(&Volume::Data("nope".into()), 1),
            Err(StorageError::Missing(_))
        ));
        for bad in ["../db", "a/b", "", "-x", "x.raw"] {
            let v = Volume::Data(bad.into());
            assert!(
                matches!(pool.create(&v, 1), Err(StorageError::InvalidName { .. })),
                "{bad:?}"
            );
            assert!(matches!(
                pool.delete(&v),
                Err(StorageError::InvalidName { .. })
            ));
        }
        assert_eq!(fs::read(pool.path(&data)).unwrap(), b"keep");
        assert_eq!(pool.list().unwrap().len(), 2);
    }

    #[test]
    fn status_reports_the_file_system() {
        let (_dir, pool) = pool();
        let status = pool.status().unwrap();
        assert_eq!(status.backend, "directory");
        assert!(status.total_bytes > 0 && status.free_bytes <= status.total_bytes);
    }
}
