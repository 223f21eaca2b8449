//! The storage side of the VM operations, as methods of [`Manager`]: the
//! root and data volumes of a new VM, removing a VM's data with it, and
//! listing volumes.

use std::{path::Path, process::Command};

use vmctl_api::{
    sizes::{format_size, MIB},
    spec::VmSpec,
};

use super::{Storage, StorageConfig, StorageError, Volume};
use crate::{authz::Action, limits, Caller, Manager, ManagerError};

/// The smallest data volume: room for an ext4 journal and some files.
pub const MIN_DATA: u64 = 64 * MIB;

/// The data volume a create asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRequest {
    /// A new, empty ext4 volume named after the VM, of this many bytes.
    New(u64),
    /// A kept volume (from a removed VM), attached as it is.
    Existing(String),
}

impl DataRequest {
    /// The request from `Create`'s `data_bytes` and `data_volume` (at most
    /// one of them), checked: sizes in range, names valid.
    pub fn from_params(
        data_bytes: Option<u64>,
        data_volume: Option<String>,
    ) -> Result<Option<Self>, ManagerError> {
        match (data_bytes, data_volume) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ManagerError::InvalidArgument {
                what: "data_volume".into(),
                reason: "give either a size for a new data volume or the name of a kept one, \
                         not both"
                    .into(),
            }),
            (Some(bytes), None) => {
                check_data_size(bytes)?;
                Ok(Some(Self::New(bytes)))
            }
            (None, Some(name)) => {
                super::validate_volume_name(&name)?;
                Ok(Some(Self::Existing(name)))
            }
        }
    }

    /// The volume's name for VM `vm`.
    pub fn volume_name(&self, vm: &str) -> String {
        match self {
            Self::New(_) => vm.to_string(),
            Self::Existing(name) => name.clone(),
        }
    }

    /// The bytes this request adds to the owner's disk use.
    pub fn new_bytes(&self) -> u64 {
        match self {
            Self::New(bytes) => *bytes,
            Self::Existing(_) => 0,
        }
    }
}

fn check_data_size(bytes: u64) -> Result<(), ManagerError> {
    let text = format_size(bytes);
    let reason = if bytes < MIN_DATA {
        format!(
            "data volume {text} is smaller than the minimum of {}",
            format_size(MIN_DATA)
        )
    } else if bytes > limits::MAX_DISK {
        format!(
            "data volume {text} exceeds the limit of {}",
            format_size(limits::MAX_DISK)
        )
    } else {
        return Ok(());
    };
    Err(ManagerError::InvalidSize {
        what: "data".into(),
        value: text,
        reason,
    })
}

impl From<StorageError> for ManagerError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::InvalidName { name, reason } => ManagerError::InvalidArgument {
                what: "volume".into(),
                reason: format!("{name:?}: {reason}"),
            },
            StorageError::Shrink {
                volume,
                current,
                requested,
            } => ManagerError::InvalidSize {
                what: volume.kind().into(),
                value: format_size(requested),
                reason: format!("{volume} is {}; disks can only grow", format_size(current)),
            },
            other => ManagerError::internal(other),
        }
    }
}

/// One volume as `vmctl volume list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    /// The volume.
    pub info: super::VolumeInfo,
    /// The VM using it, if any.
    pub vm: Option<String>,
}

impl Manager {
    /// The configured storage backend (read from the configuration file
    /// each time, like the network settings).
    pub fn storage(&self) -> Result<Storage, ManagerError> {
        let config = StorageConfig::load(self.config_path())
            .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
        Ok(Storage::open(&config, &self.layout().state_dir)?)
    }

    /// Checks, before anything is made, that `request` can be met for VM
    /// `vm` of `caller`: a new volume's name is free; a kept volume exists
    /// and (as only root may attach a kept volume: the pool does not record
    /// owners yet) the caller is root. Whether another VM uses a kept
    /// volume is checked in the store transaction with
    /// [`check_unattached`].
    pub fn check_data_request(
        &self,
        caller: &Caller,
        vm: &str,
        request: &DataRequest,
    ) -> Result<(), ManagerError> {
        let storage = self.storage()?;
        let volume = Volume::Data(request.volume_name(vm));
        let exists = storage.get(&volume)?.is_some();
        match request {
            DataRequest::New(_) if exists => Err(ManagerError::InvalidArgument {
                what: "data".into(),
                reason: format!(
                    "a data volume {vm:?} is kept from an earlier VM: attach it with \
                     --data-volume {vm}, or delete it with `vmctl volume rm {vm}`"
                ),
            }),
            DataRequest::Existing(name) if !exists => Err(ManagerError::InvalidArgument {
                what: "data_volume".into(),
                reason: format!("there is no data volume {name:?} (see `vmctl volume list`)"),
            }),
            DataRequest::Existing(_) if !caller.is_root() => Err(ManagerError::PermissionDenied {
                action: "attach a kept data volume (root only)".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Makes the root volume of `spec` from `image_root`; logs how.
    pub async fn make_root_volume(
        &self,
        spec: &VmSpec,
        image_root: &Path,
    ) -> Result<(), ManagerError> {
        let storage = self.storage()?;
        let root = Volume::Root(spec.name.clone());
        let size = spec.disk_bytes;
        let image_root = image_root.to_path_buf();
        let method = tokio::task::spawn_blocking({
            let (storage, root) = (storage.clone(), root.clone());
            move || storage.clone_image(&image_root, &root, size)
        })
        .await
        .map_err(ManagerError::internal)??;
        tracing::info!(
            "{}: root disk {} ({})",
            spec.name,
            storage.path(&root).display(),
            method.as_str()
        );
        Ok(())
    }

    /// Makes the new data volume `request` asks for (an empty ext4 file
    /// system made on the host, so the image needs no mkfs); a kept volume
    /// is used as it is. Returns the volume when it was made here, for
    /// the caller to undo.
    pub async fn make_data_volume(
        &self,
        vm: &str,
        request: &DataRequest,
    ) -> Result<Option<Volume>, ManagerError> {
        let DataRequest::New(bytes) = request else {
            return Ok(None);
        };
        let storage = self.storage()?;
        let volume = Volume::Data(vm.to_string());
        storage.create(&volume, *bytes)?;
        let path = storage.path(&volume);
        let result = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-L", "vmctl-data", "-m", "0"])
                    .arg(&path)
                    .output()
            }
        })
        .await
        .map_err(ManagerError::internal)?;
        let failure = match result {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            storage.delete(&volume)?;
            return Err(ManagerError::internal(format!(
                "mkfs.ext4 {}: {why}",
                path.display()
            )));
        }
        tracing::info!("{vm}: data volume {} ({bytes} bytes)", path.display());
        Ok(Some(volume))
    }

    /// Gives stopped VM `name` a fresh root volume cloned from its image
    /// (`vmctl rebuild`): same spec, so the same name, addresses, SSH host
    /// key and data volume. Refused while the VM runs.
    pub async fn rebuild(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        let spec = self.stopped_own_vm(caller, name).await?;
        let image_dir = self.layout().image_dir(&spec.image);
        let image_root = image_dir.join("root.raw");
        if !image_root.is_file() || !image_dir.join("vmlinuz").is_file() {
            return Err(ManagerError::NoSuchImage { image: spec.image });
        }
        let image_size = std::fs::metadata(&image_root)
            .map_err(|e| ManagerError::internal(format!("{}: {e}", image_root.display())))?
            .len();
        // The root keeps its size (it may have been grown), at least the
        // image's.
        let storage = self.storage()?;
        let current = storage
            .get(&Volume::Root(name.to_string()))?
            .map_or(spec.disk_bytes, |v| v.size_bytes);
        let size = current.max(image_size);
        let method = tokio::task::spawn_blocking({
            let (storage, name) = (storage.clone(), name.to_string());
            move || storage.replace_root(&image_root, &name, size)
        })
        .await
        .map_err(ManagerError::internal)??;
        tracing::info!(
            "{name}: rebuilt its root from image {} ({})",
            spec.image,
            method.as_str()
        );
        Ok(())
    }

    /// Grows VM `name`'s `disk` (`root` or `data`) to `size` bytes
    /// (`vmctl resize-disk`); the guest sees it after its next start.
    /// Only the data volume can be grown for now: the root's size is part
    /// of the stored spec, which has no update operation yet.
    pub async fn resize_disk(
        &self,
        caller: &Caller,
        name: &str,
        disk: &str,
        size: u64,
    ) -> Result<(), ManagerError> {
        let spec = self.stopped_own_vm(caller, name).await?;
        let volume = match disk {
            "data" => Volume::Data(spec.data_volume.clone().ok_or_else(|| {
                ManagerError::InvalidArgument {
                    what: "disk".into(),
                    reason: format!("VM {name:?} has no data volume"),
                }
            })?),
            "root" => {
                return Err(ManagerError::InvalidArgument {
                    what: "disk".into(),
                    reason: "growing the root disk is not supported yet; only \"data\"".into(),
                })
            }
            other => {
                return Err(ManagerError::InvalidArgument {
                    what: "disk".into(),
                    reason: format!("{other:?}: expected \"root\" or \"data\""),
                })
            }
        };
        if size > limits::MAX_DISK {
            return Err(ManagerError::InvalidSize {
                what: "data".into(),
                value: format_size(size),
                reason: format!(
                    "{} exceeds the limit of {}",
                    format_size(size),
                    format_size(limits::MAX_DISK)
                ),
            });
        }
        self.storage()?.resize(&volume, size)?;
        tracing::info!("{name}: {volume} grown to {size} bytes");
        Ok(())
    }

    /// The spec of `caller`'s (or, with manage-any, anyone's) VM `name`,
    /// which must be stopped.
    async fn stopped_own_vm(&self, caller: &Caller, name: &str) -> Result<VmSpec, ManagerError> {
        let spec = self.visible_spec(caller, name).await?;
        self.manageable_unit(caller, name).await?;
        let state = self.vm_state(name).await;
        if !matches!(state.as_str(), "stopped" | "failed") && self.systemd().is_some() {
            return Err(ManagerError::InvalidArgument {
                what: "name".into(),
                reason: format!("VM {name} is {state}; stop it first: vmctl stop {name}"),
            });
        }
        Ok(spec)
    }

    /// Deletes `volume` if a failed create made it (a kept volume it only
    /// attached is never passed here).
    pub fn discard_volume(&self, volume: Option<Volume>) {
        if let Some(volume) = volume {
            if let Err(e) = self.storage().and_then(|s| Ok(s.delete(&volume)?)) {
                tracing::warn!("rollback: cannot delete {volume}: {e}");
            }
        }
    }

    /// Removes VM `name` like [`Manager::remove`]; its data volume stays
    /// (listed by `vmctl volume list`) unless `delete_data`.
    pub async fn remove_with_data(
        &self,
        caller: &Caller,
        name: &str,
        delete_data: bool,
    ) -> Result<(), ManagerError> {
        let spec = self.visible_spec(caller, name).await?;
        self.remove(caller, name).await?;
        if let Some(volume) = spec.data_volume {
            if delete_data {
                self.storage()?.delete(&Volume::Data(volume.clone()))?;
                tracing::info!("{name}: deleted its data volume {volume}");
            } else {
                tracing::info!("{name}: kept its data volume {volume}");
            }
        }
        Ok(())
    }

    /// The volumes `caller` may see, with the VM using each: those of the
    /// caller's VMs; for root (or manage-any) every volume, kept ones too.
    pub async fn list_volumes(&self, caller: &Caller) -> Result<Vec<VolumeEntry>, ManagerError> {
        self.authorize(caller, Action::Create).await?;
        let see_all = self.may_manage_any(caller).await?;
        let specs = self.registry().list()?;
        let user_of = |volume: &Volume| -> Option<&VmSpec> {
            specs.iter().find(|s| match volume {
                Volume::Root(vm) => s.name == *vm,
                Volume::Data(name) => s.data_volume.as_deref() == Some(name),
            })
        };
        let storage = self.storage()?;
        let volumes = tokio::task::spawn_blocking(move || storage.list())
            .await
            .map_err(ManagerError::internal)??;
        Ok(volumes
            .into_iter()
            .filter_map(|info| {
                let user = user_of(&info.volume);
                let visible = see_all || user.is_some_and(|s| s.owner_uid == caller.uid);
                visible.then(|| VolumeEntry {
                    vm: user.map(|s| s.name.clone()),
                    info,
                })
            })
            .collect())
    }

    /// Deletes the kept data volume `name` (root only: kept volumes have no
    /// recorded owner); one a VM uses is refused, naming the VM.
    pub async fn delete_volume(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        self.authorize(caller, Action::Admin).await?;
        super::validate_volume_name(name)?;
        let volume = Volume::Data(name.to_string());
        if let Some(vm) = self
            .registry()
            .list()?
            .into_iter()
            .find(|s| s.data_volume.as_deref() == Some(name))
        {
            return Err(ManagerError::InvalidArgument {
                what: "volume".into(),
                reason: format!(
                    "data volume {name:?} is used by VM {:?}; remove the VM first",
                    vm.name
                ),
            });
        }
        let storage = self.storage()?;
        if storage.get(&volume)?.is_none() {
            return Err(ManagerError::InvalidArgument {
                what: "volume".into(),
                reason: format!("there is no data volume {name:?}"),
            });
        }
        storage.delete(&volume)?;
        tracing::info!("deleted data volume {name}");
        Ok(())
    }
}

/// In the create transaction: a kept volume must not be in use by any of
/// the stored VMs.
pub fn check_unattached<'a>(
    volume: &str,
    vms: impl IntoIterator<Item = &'a VmSpec>,
) -> Result<(), ManagerError> {
    match vms
        .into_iter()
        .find(|s| s.data_volume.as_deref() == Some(volume))
    {
        Some(vm) => Err(ManagerError::InvalidArgument {
            what: "data_volume".into(),
            reason: format!("data volume {volume:?} is in use by VM {:?}", vm.name),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::testing::setup;
    use std::fs;
    use vmctl_api::CreateParams;

    fn params(name: &str, data_bytes: Option<u64>, data_volume: Option<&str>) -> CreateParams {
        CreateParams {
            name: name.into(),
            memory_bytes: Some(256 * MIB),
            data_bytes,
            data_volume: data_volume.map(str::to_string),
            ..Default::default()
        }
    }

    /// (name, kind, vm) of every volume root sees.
    async fn volumes(m: &Manager) -> Vec<(String, &'static str, Option<String>)> {
        m.list_volumes(&Caller::ROOT)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.info.volume.name().to_string(), e.info.volume.kind(), e.vm))
            .collect()
    }

    fn owned(
        items: &[(&str, &'static str, Option<&str>)],
    ) -> Vec<(String, &'static str, Option<String>)> {
        items
            .iter()
            .map(|(n, k, vm)| (n.to_string(), *k, vm.map(str::to_string)))
            .collect()
    }

    #[tokio::test]
    async fn a_data_volume_is_ext4_kept_by_rm_and_attached_again() {
        let (_dir, m) = setup();
        m.create(&Caller::ROOT, params("db", Some(128 * MIB), None))
            .await
            .unwrap();
        let spec = m.registry().get("db").unwrap().unwrap();
        assert_eq!(spec.data_volume.as_deref(), Some("db"));
        let file = m.layout().volume_file("db");
        assert_eq!(fs::metadata(&file).unwrap().len(), 128 * MIB);
        // An ext4 superblock: magic 0xEF53 at byte 1024 + 56.
        let bytes = fs::read(&file).unwrap();
        assert_eq!(&bytes[1080..1082], &[0x53, 0xef], "ext4 magic");
        assert_eq!(
            volumes(&m).await,
            owned(&[("db", "root", Some("db")), ("db", "data", Some("db"))])
        );

        // rm keeps the data volume, unattached.
        m.remove_with_data(&Caller::ROOT, "db", false)
            .await
            .unwrap();
        assert_eq!(volumes(&m).await, owned(&[("db", "data", None)]));
        // A new VM of that name cannot make a new volume over it...
        let e = m
            .create(&Caller::ROOT, params("db", Some(128 * MIB), None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--data-volume db"), "{e}");
        assert_eq!(volumes(&m).await, owned(&[("db", "data", None)]));
        // ...but another VM attaches it, and it is still the same file system.
        m.create(&Caller::ROOT, params("db2", None, Some("db")))
            .await
            .unwrap();
        assert_eq!(fs::read(&file).unwrap(), bytes);
        // One VM at a time: a second attach and deleting it are refused.
        let e = m
            .create(&Caller::ROOT, params("db3", None, Some("db")))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("in use by VM \"db2\""), "{e}");
        let e = m.delete_volume(&Caller::ROOT, "db").await.unwrap_err();
        assert!(e.to_string().contains("used by VM \"db2\""), "{e}");
        assert!(m.registry().get("db3").unwrap().is_none());

        // rm --delete-data deletes it.
        m.remove_with_data(&Caller::ROOT, "db2", true)
            .await
            .unwrap();
        assert!(!file.exists());
        assert!(volumes(&m).await.is_empty());
    }

    #[tokio::test]
    async fn rebuild_gives_a_fresh_root_and_keeps_the_data() {
        let (_dir, m) = setup();
        m.create(&Caller::ROOT, params("web", Some(64 * MIB), None))
            .await
            .unwrap();
        let before = m.registry().get("web").unwrap().unwrap();
        let root = m.layout().root_disk("web");
        let data = m.layout().volume_file("web");
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new()
            .write(true)
            .open(&root)
            .unwrap()
            .write_all_at(b"guest wrote this", 0)
            .unwrap();
        let data_before = fs::read(&data).unwrap();
        m.rebuild(&Caller::ROOT, "web").await.unwrap();
        let mut head = [1u8; 16];
        fs::File::open(&root)
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert_eq!(head, [0u8; 16], "a fresh clone of the (empty) image");
        assert_eq!(fs::read(&data).unwrap(), data_before);
        assert_eq!(m.registry().get("web").unwrap().unwrap(), before);

        m.resize_disk(&Caller::ROOT, "web", "data", 128 * MIB)
            .await
            .unwrap();
        assert_eq!(fs::metadata(&data).unwrap().len(), 128 * MIB);
        for (disk, size, error) in [
            ("data", 100 * MIB, "InvalidSize"),
            ("root", 8 << 30, "InvalidArgument"),
            ("swap", 8 << 30, "InvalidArgument"),
            ("data", 1 << 60, "InvalidSize"),
        ] {
            let e = m
                .resize_disk(&Caller::ROOT, "web", disk, size)
                .await
                .unwrap_err();
            assert_eq!(e.short_name(), error, "{disk} {size}: {e}");
        }
        assert_eq!(fs::metadata(&data).unwrap().len(), 128 * MIB);
        let e = m.rebuild(&Caller::ROOT, "nope").await.unwrap_err();
        assert_eq!(e.short_name(), "NoSuchVM", "{e}");
    }

    #[tokio::test]
    async fn bad_data_requests_change_nothing() {
        let (dir, m) = setup();
        let cases = [
            (params("x", Some(MIB), None), "InvalidSize"),
            (params("x", Some(1 << 60), None), "InvalidSize"),
            (params("x", Some(128 * MIB), Some("x")), "InvalidArgument"),
            (params("x", None, Some("../etc")), "InvalidArgument"),
            (params("x", None, Some("nope")), "InvalidArgument"),
        ];
        for (p, error) in cases {
            let e = m.create(&Caller::ROOT, p).await.unwrap_err();
            assert_eq!(e.short_name(), error, "{e}");
        }
        assert!(m.registry().get("x").unwrap().is_none());
        assert!(volumes(&m).await.is_empty());
        assert!(!dir.path().join("volumes").exists());
        let e = m.delete_volume(&Caller::ROOT, "nope").await.unwrap_err();
        assert_eq!(e.short_name(), "InvalidArgument", "{e}");
    }
}
