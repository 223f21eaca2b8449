//! VM storage: where root and data volumes live and how they are made.
//!
//! One interface, [`Storage`], over the configured backend (`[Storage]` in
//! `/etc/vmctl/vmctl.conf`, see [`config`]):
//!
//! - the **directory pool** ([`directory`], the default): volumes are raw
//!   files under the state directory; a root volume is a `FICLONE` of the
//!   image's `root.raw` on btrfs/XFS (O(1) whatever the size), a sparse copy
//!   with one warning line elsewhere;
//! - **LVM thin** (`Backend=lvm-thin`, [`lvm`]): the backend's code runs
//!   against real LVM in a VM (e2e `storage_lvm.rs`), but opening the
//!   storage refuses it (vmctld's unit has no capabilities or devices for
//!   LVM, and the launcher opens files, not LVs) rather than pretending.
//!
//! The interface is store-agnostic: callers record which volumes a VM
//! uses; the pool only makes, grows, lists and deletes them.

pub mod config;
pub mod directory;
pub mod lvm;
pub mod vm;

use std::{fmt, io, path::PathBuf};

pub use config::{Backend, StorageConfig};
pub use directory::DirectoryPool;

/// Which volume of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Volume {
    /// The root disk of VM `.0`: made from an image, removed with the VM.
    Root(String),
    /// The persistent data volume `.0`: outlives the VMs it is attached to
    /// until it is deleted explicitly.
    Data(String),
}

impl Volume {
    /// The kind as shown to users: `root` or `data`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Root(_) => "root",
            Self::Data(_) => "data",
        }
    }

    /// The VM name (root) or the volume name (data).
    pub fn name(&self) -> &str {
        match self {
            Self::Root(name) | Self::Data(name) => name,
        }
    }
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} volume {:?}", self.kind(), self.name())
    }
}

/// How a root volume was made from its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// A copy-on-write clone (`FICLONE`): shares every extent with the image.
    Reflink,
    /// A sparse copy of the image's data (the file system cannot reflink).
    SparseCopy,
}

impl CloneMethod {
    /// `reflink` or `sparse copy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reflink => "reflink",
            Self::SparseCopy => "sparse copy",
        }
    }
}

/// One volume as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Which volume.
    pub volume: Volume,
    /// Its size as the guest sees it, in bytes.
    pub size_bytes: u64,
    /// Bytes it occupies in the pool (shared extents counted in full).
    pub allocated_bytes: u64,
    /// Where the VMM opens it.
    pub path: PathBuf,
}

/// The pool's capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// `directory` or `lvm-thin`.
    pub backend: &'static str,
    /// The pool's location (a directory, or `VG/thinpool`).
    pub location: String,
    /// Size of the file system or pool, in bytes.
    pub total_bytes: u64,
    /// Bytes still free.
    pub free_bytes: u64,
    /// Whether clones of images are O(1) copy-on-write.
    pub reflink: bool,
}

/// Errors of the storage layer; each names the volume or path.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The volume exists already.
    #[error("{0} exists already")]
    Exists(Volume),
    /// The volume does not exist.
    #[error("{0} does not exist")]
    Missing(Volume),
    /// A volume name is not usable (see [`validate_volume_name`]).
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A resize would shrink the volume (only growing is supported).
    #[error("{volume} is {current} bytes; it can only grow, not shrink to {requested} bytes")]
    Shrink {
        /// The volume.
        volume: Volume,
        /// Its size now.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// The configured backend cannot be used.
    #[error("{0}")]
    Unavailable(String),
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Checks a data volume name: the VM name rules (a hostname label), so it
/// is a safe file name and LV name component.
pub fn validate_volume_name(name: &str) -> Result<(), StorageError> {
    vmctl_api::validate_vm_name(name).map_err(|e| StorageError::InvalidName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// The configured storage backend.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Raw files in a directory.
    Directory(DirectoryPool),
}

impl Storage {
    /// Opens the backend `config` names, with the directory pool under
    /// `state_dir`. `lvm-thin` is refused with a message saying so.
    pub fn open(
        config: &StorageConfig,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Self, StorageError> {
        match &config.backend {
            Backend::Directory => Ok(Self::Directory(DirectoryPool::new(state_dir))),
            Backend::LvmThin { pool } => Err(StorageError::Unavailable(format!(
                "[Storage] Backend=lvm-thin (Pool={pool}) is not implemented in this vmctl; \
                 use Backend=directory"
            ))),
        }
    }

    /// Makes `root` (a [`Volume::Root`]) from the image disk `image_root`,
    /// `size` bytes long (at least the image's size).
    pub fn clone_image(
        &self,
        image_root: &std::path::Path,
        root: &Volume,
        size: u64,
    ) -> Result<CloneMethod, StorageError> {
        match self {
            Self::Directory(pool) => pool.clone_image(image_root, root, size),
        }
    }

    /// Replaces VM `vm`'s existing root volume by a fresh clone of
    /// `image_root` (`vmctl rebuild`), atomically.
    pub fn replace_root(
        &self,
        image_root: &std::path::Path,
        vm: &str,
        size: u64,
    ) -> Result<CloneMethod, StorageError> {
        match self {
            Self::Directory(pool) => pool.replace_root(image_root, vm, size),
        }
    }

    /// Makes an empty (sparse) volume of `size` bytes.
    pub fn create(&self, volume: &Volume, size: u64) -> Result<(), StorageError> {
        match self {
            Self::Directory(pool) => pool.create(volume, size),
        }
    }

    /// Grows `volume` to `size` bytes; refuses to shrink it.
    pub fn resize(&self, volume: &Volume, size: u64) -> Result<(), StorageError> {
        match self {
            Self::Directory(pool) => pool.resize(volume, size),
        }
    }

    /// Deletes `volume`; a missing one is not an error (so a removal can
    /// be repeated after a crash).
    pub fn delete(&self, volume: &Volume) -> Result<(), StorageError> {
        match self {
            Self::Directory(pool) => pool.delete(volume),
        }
    }

    /// The volume, or `None` when it does not exist.
    pub fn get(&self, volume: &Volume) -> Result<Option<VolumeInfo>, StorageError> {
        match self {
            Self::Directory(pool) => pool.get(volume),
        }
    }

    /// Every volume in the pool, sorted.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        match self {
            Self::Directory(pool) => pool.list(),
        }
    }

    /// The pool's capacity.
    pub fn status(&self) -> Result<PoolStatus, StorageError> {
        match self {
            Self::Directory(pool) => pool.status(),
        }
    }

    /// Where the VMM opens `volume`.
    pub fn path(&self, volume: &Volume) -> PathBuf {
        match self {
            Self::Directory(pool) => pool.path(volume),
        }
    }
}
