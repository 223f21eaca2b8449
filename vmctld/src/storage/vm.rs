//! The storage side of the VM operations, as methods of [`Manager`]: the
//! root and data volumes of a new VM, removing a VM's data with it, and
//! listing volumes.

use std::{path::Path, process::Command};

use vmctl_api::{
    sizes::{format_size, MIB},
    spec::VmSpec,
};

use super::{Storage, StorageConfig, StorageError, Volume};
use crate::{
    accounts,
    authz::Action,
    limits, quota,
    store::{VolumeClaim, VolumeRow, VolumeState},
    Caller, Manager, ManagerError,
};

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

    /// The bytes this request adds to the disk use of `owner`: a new
    /// volume's size, or a kept volume's when it passes to `owner` from
    /// someone else (an admin attaching it).
    pub fn new_bytes(&self, owner: u32, volumes: &[VolumeRow]) -> u64 {
        match self {
            Self::New(bytes) => *bytes,
            Self::Existing(name) => volumes
                .iter()
                .find(|v| v.name == *name && v.owner_uid != owner)
                .map_or(0, |v| v.size),
        }
    }

    /// What the create transaction records for VM `vm`.
    pub fn claim(&self, vm: &str) -> VolumeClaim {
        match self {
            Self::New(size) => VolumeClaim::New {
                name: vm.to_string(),
                size: *size,
            },
            Self::Existing(name) => VolumeClaim::Attach { name: name.clone() },
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
    /// Its owner's uid (a root volume's: its VM's owner); `None` for a
    /// file in the pool the store has no row for (adopted by the next
    /// reconciliation).
    pub owner_uid: Option<u32>,
    /// The owner's user name (the uid in decimal when it has none).
    pub owner: Option<String>,
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
    /// `vm` of `caller`: a new volume's name is free (no row, no file); a
    /// kept volume exists and is the caller's (or the caller may manage
    /// any VM). The create transaction checks again
    /// ([`crate::store::Store::insert_claiming`]).
    pub async fn check_data_request(
        &self,
        caller: &Caller,
        vm: &str,
        request: &DataRequest,
    ) -> Result<(), ManagerError> {
        let storage = self.storage()?;
        let name = request.volume_name(vm);
        let row = self.registry().store().volume(&name)?;
        let file = storage.get(&Volume::Data(name.clone()))?.is_some();
        match request {
            DataRequest::New(_) if row.is_some() || file => Err(ManagerError::InvalidArgument {
                what: "data".into(),
                reason: format!(
                    "a data volume {vm:?} is kept from an earlier VM: attach it with \
                     --data-volume {vm}, or delete it with `vmctl volume rm {vm}`"
                ),
            }),
            DataRequest::Existing(_) => {
                let visible = match &row {
                    Some(row) if row.owner_uid == caller.uid => true,
                    Some(_) => self.may_manage_any(caller).await?,
                    None => false,
                };
                if visible && file {
                    Ok(())
                } else {
                    Err(ManagerError::InvalidArgument {
                        what: "data_volume".into(),
                        reason: format!(
                            "there is no data volume {name:?} of yours (see `vmctl volume list`)"
                        ),
                    })
                }
            }
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
    /// is used as it is. Undone by [`Manager::undo_create`] through its
    /// 'creating' row.
    pub async fn make_data_volume(
        &self,
        vm: &str,
        request: &DataRequest,
    ) -> Result<(), ManagerError> {
        let DataRequest::New(bytes) = request else {
            return Ok(());
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
        Ok(())
    }

    /// Gives stopped VM `name` a fresh root volume cloned from its image,
    /// or from `new_image` (`vmctl rebuild [--image X]`): the same name,
    /// addresses, SSH host key and data volume. Refused while the VM runs.
    /// A new image is recorded in the spec first (with the root's size, at
    /// least the new image's, checked against the disk quota), then the
    /// root is replaced atomically; a failed clone puts the spec back.
    pub async fn rebuild(
        &self,
        caller: &Caller,
        name: &str,
        new_image: Option<&str>,
    ) -> Result<(), ManagerError> {
        let spec = self.stopped_own_vm(caller, name).await?;
        let image = new_image.unwrap_or(&spec.image).to_string();
        let image_root = self.image_root(&image)?;
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
        let changed = image != spec.image || size != spec.disk_bytes;
        if changed {
            let defaults = quota::load_defaults(self.config_path())
                .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
            let updated = self.registry().store().update_spec(name, |old, now| {
                let limits = quota::effective(old.owner_uid, &defaults, now.quota.as_ref());
                let usage = quota::Usage::of(old.owner_uid, &now.vms, &now.volumes);
                let growth = quota::Usage::disk(size.saturating_sub(old.disk_bytes));
                quota::check(&limits, &usage, &growth)?;
                Ok(VmSpec {
                    image: image.clone(),
                    disk_bytes: size,
                    ..old.clone()
                })
            })?;
            self.registry().write(&updated)?;
        }
        let result = tokio::task::spawn_blocking({
            let (storage, name) = (storage.clone(), name.to_string());
            move || storage.replace_root(&image_root, &name, size)
        })
        .await
        .map_err(ManagerError::internal)?;
        let method = match result {
            Ok(method) => method,
            Err(e) => {
                if changed {
                    self.registry()
                        .store()
                        .update_spec(name, |_, _| Ok(spec.clone()))?;
                    self.registry().write(&spec)?;
                }
                return Err(e.into());
            }
        };
        tracing::info!(
            "{name}: rebuilt its root from image {image} ({})",
            method.as_str()
        );
        Ok(())
    }

    /// Grows VM `name`'s `disk` (`root` or `data`) to `size` bytes
    /// (`vmctl resize-disk`); the guest sees it after its next start. The
    /// growth counts in the owner's disk quota: the stored size (the
    /// volume's row, or the spec's `disk_bytes` for the root) is updated
    /// in the transaction that checks the quota, then the file grows.
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
            "root" => Volume::Root(name.to_string()),
            other => {
                return Err(ManagerError::InvalidArgument {
                    what: "disk".into(),
                    reason: format!("{other:?}: expected \"root\" or \"data\""),
                })
            }
        };
        if size > limits::MAX_DISK {
            return Err(ManagerError::InvalidSize {
                what: disk.into(),
                value: format_size(size),
                reason: format!(
                    "{} exceeds the limit of {}",
                    format_size(size),
                    format_size(limits::MAX_DISK)
                ),
            });
        }
        let storage = self.storage()?;
        let current = storage
            .get(&volume)?
            .ok_or_else(|| StorageError::Missing(volume.clone()))?
            .size_bytes;
        if size < current {
            return Err(StorageError::Shrink {
                volume,
                current,
                requested: size,
            }
            .into());
        }
        let defaults = quota::load_defaults(self.config_path())
            .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
        let check_growth = |owner: u32, old: u64, now: &crate::store::Snapshot| {
            let limits = quota::effective(owner, &defaults, now.quota.as_ref());
            let usage = quota::Usage::of(owner, &now.vms, &now.volumes);
            quota::check(
                &limits,
                &usage,
                &quota::Usage::disk(size.saturating_sub(old)),
            )
        };
        let store = self.registry().store();
        match &volume {
            Volume::Data(vol) => {
                let old = store.resize_volume(vol, size, |row, now| {
                    check_growth(row.owner_uid, row.size, now)
                })?;
                if let Err(e) = storage.resize(&volume, size) {
                    store.set_volume_size(vol, old.size)?;
                    return Err(e.into());
                }
            }
            Volume::Root(_) => {
                let grown = store.update_spec(name, |spec, now| {
                    check_growth(spec.owner_uid, spec.disk_bytes, now)?;
                    Ok(VmSpec {
                        disk_bytes: size.max(spec.disk_bytes),
                        ..spec.clone()
                    })
                })?;
                if let Err(e) = storage.resize(&volume, size) {
                    store.update_spec(name, |_, _| Ok(spec.clone()))?;
                    return Err(e.into());
                }
                self.registry().write(&grown)?;
            }
        }
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

    /// Deletes the data volumes a create of VM `vm` made and did not
    /// finish (rows still 'creating'): file first, row last, so a crash in
    /// between is undone again. A kept volume the create only attached is
    /// detached by the VM row's deletion (`ON DELETE SET NULL`).
    pub(crate) fn undo_data_volumes(&self, vm: &str) -> Result<(), ManagerError> {
        let store = self.registry().store();
        let storage = self.storage()?;
        for row in store
            .volumes()?
            .into_iter()
            .filter(|row| row.state == VolumeState::Creating && row.vm.as_deref() == Some(vm))
        {
            storage.delete(&Volume::Data(row.name.clone()))?;
            store.delete_volume(&row.name)?;
            tracing::info!(
                "{vm}: undo create: deleted its new data volume {}",
                row.name
            );
        }
        Ok(())
    }

    /// Removes VM `name` like [`Manager::remove`]; its data volume stays
    /// (kept, still its owner's, listed by `vmctl volume list`) unless
    /// `delete_data`. The delete is journaled before the VM goes (row
    /// 'deleting'), so a crash after the remove is finished by
    /// reconciliation.
    pub async fn remove_with_data(
        &self,
        caller: &Caller,
        name: &str,
        delete_data: bool,
    ) -> Result<(), ManagerError> {
        let spec = self.visible_spec(caller, name).await?;
        let store = self.registry().store();
        let doomed = match &spec.data_volume {
            Some(volume) if delete_data => {
                self.manageable_unit(caller, name).await?;
                store.transition_volume(volume, VolumeState::Ready, VolumeState::Deleting)?;
                Some(volume.clone())
            }
            _ => None,
        };
        if let Err(e) = self.remove(caller, name).await {
            if let Some(volume) = &doomed {
                store.transition_volume(volume, VolumeState::Deleting, VolumeState::Ready)?;
            }
            return Err(e);
        }
        match doomed {
            Some(volume) => {
                self.finish_volume_delete(&volume)?;
                tracing::info!("{name}: deleted its data volume {volume}");
            }
            None => {
                if let Some(volume) = spec.data_volume {
                    tracing::info!("{name}: kept its data volume {volume}");
                }
            }
        }
        Ok(())
    }

    /// The last steps of deleting data volume `name` (its row says
    /// 'deleting'): the file, then the row. Repeatable.
    pub(crate) fn finish_volume_delete(&self, name: &str) -> Result<(), ManagerError> {
        self.storage()?.delete(&Volume::Data(name.to_string()))?;
        self.registry().store().delete_volume(name)
    }

    /// The volumes `caller` may see, with the VM using each and its owner:
    /// the caller's own (root volumes of its VMs, data volumes it holds,
    /// kept ones too); with manage-any, every volume.
    pub async fn list_volumes(&self, caller: &Caller) -> Result<Vec<VolumeEntry>, ManagerError> {
        self.authorize(caller, Action::Create).await?;
        let see_all = self.may_manage_any(caller).await?;
        let specs = self.registry().list()?;
        let rows = self.registry().store().volumes()?;
        // (VM using it, owner) of each volume the store knows.
        let known = |volume: &Volume| -> Option<(Option<String>, u32)> {
            match volume {
                Volume::Root(vm) => specs
                    .iter()
                    .find(|s| s.name == *vm)
                    .map(|s| (Some(s.name.clone()), s.owner_uid)),
                Volume::Data(name) => rows
                    .iter()
                    .find(|r| r.name == *name)
                    .map(|r| (r.vm.clone(), r.owner_uid)),
            }
        };
        let storage = self.storage()?;
        let volumes = tokio::task::spawn_blocking(move || storage.list())
            .await
            .map_err(ManagerError::internal)??;
        Ok(volumes
            .into_iter()
            .filter_map(|info| {
                let (vm, owner_uid) = match known(&info.volume) {
                    Some((vm, owner)) => (vm, Some(owner)),
                    None => (None, None),
                };
                let visible = see_all || owner_uid == Some(caller.uid);
                visible.then(|| VolumeEntry {
                    vm,
                    owner: owner_uid.map(accounts::display_name),
                    owner_uid,
                    info,
                })
            })
            .collect())
    }

    /// The storage pool's state (`vmctl pool status`); needs the create
    /// action, like listing images.
    pub async fn pool_status(&self, caller: &Caller) -> Result<super::PoolStatus, ManagerError> {
        self.authorize(caller, Action::Create).await?;
        let storage = self.storage()?;
        tokio::task::spawn_blocking(move || storage.status())
            .await
            .map_err(ManagerError::internal)?
            .map_err(ManagerError::from)
    }

    /// Deletes the kept data volume `name`: its owner may (with the create
    /// action), others need manage-any and otherwise get "no such volume".
    /// One a VM uses is refused, naming the VM.
    pub async fn delete_volume(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        self.authorize(caller, Action::Create).await?;
        super::validate_volume_name(name)?;
        let store = self.registry().store();
        let missing = || ManagerError::InvalidArgument {
            what: "volume".into(),
            reason: format!("there is no data volume {name:?} of yours (see `vmctl volume list`)"),
        };
        let row = store.volume(name)?.ok_or_else(missing)?;
        if row.owner_uid != caller.uid {
            if !self.may_manage_any(caller).await? {
                return Err(missing());
            }
            self.authorize(caller, Action::ManageAny).await?;
        }
        if let Some(vm) = &row.vm {
            return Err(ManagerError::InvalidArgument {
                what: "volume".into(),
                reason: format!(
                    "data volume {name:?} is used by VM {vm:?}; remove the VM first \
                     (vmctl rm --delete-data {vm} removes both)"
                ),
            });
        }
        // A 'deleting' row is an interrupted delete: finished here.
        let busy = match row.state {
            VolumeState::Creating => true,
            VolumeState::Ready => !store.begin_volume_delete(name)?,
            VolumeState::Deleting => false,
        };
        if busy {
            return Err(ManagerError::InvalidArgument {
                what: "volume".into(),
                reason: format!("data volume {name:?} is being attached; try again later"),
            });
        }
        self.finish_volume_delete(name)?;
        tracing::info!("deleted data volume {name} (by uid {})", caller.uid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Authority;
    use crate::lifecycle::testing::setup;
    use std::fs;
    use vmctl_api::{sizes::GIB, CreateParams};

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
        m.rebuild(&Caller::ROOT, "web", None).await.unwrap();
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
        assert_eq!(
            m.registry().store().volume("web").unwrap().unwrap().size,
            128 * MIB
        );
        // The root grows too: file, stored spec and spec file alike.
        let bigger = before.disk_bytes + GIB;
        m.resize_disk(&Caller::ROOT, "web", "root", bigger)
            .await
            .unwrap();
        assert_eq!(fs::metadata(&root).unwrap().len(), bigger);
        let grown = VmSpec {
            disk_bytes: bigger,
            ..before.clone()
        };
        assert_eq!(m.registry().get("web").unwrap().unwrap(), grown);
        assert_eq!(
            m.registry().spec_file_contents("web").unwrap().unwrap(),
            grown
        );
        for (disk, size, error) in [
            ("data", 100 * MIB, "InvalidSize"),
            ("root", before.disk_bytes, "InvalidSize"),
            ("swap", 8 << 30, "InvalidArgument"),
            ("data", 1 << 60, "InvalidSize"),
            ("root", 1 << 60, "InvalidSize"),
        ] {
            let e = m
                .resize_disk(&Caller::ROOT, "web", disk, size)
                .await
                .unwrap_err();
            assert_eq!(e.short_name(), error, "{disk} {size}: {e}");
        }
        assert_eq!(fs::metadata(&data).unwrap().len(), 128 * MIB);
        assert_eq!(fs::metadata(&root).unwrap().len(), bigger);
        assert_eq!(m.registry().get("web").unwrap().unwrap(), grown);
        let e = m.rebuild(&Caller::ROOT, "nope", None).await.unwrap_err();
        assert_eq!(e.short_name(), "NoSuchVM", "{e}");

        // --image: a bigger image; the root grows to it, the spec says so.
        let other = m.layout().image_dir("other");
        fs::create_dir_all(&other).unwrap();
        let img = fs::File::create(other.join("root.raw")).unwrap();
        img.set_len(bigger + GIB).unwrap();
        img.write_all_at(b"other image", 0).unwrap();
        fs::write(other.join("vmlinuz"), b"k").unwrap();
        let e = m
            .rebuild(&Caller::ROOT, "web", Some("nosuch"))
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "NoSuchImage", "{e}");
        assert_eq!(m.registry().get("web").unwrap().unwrap(), grown);
        m.rebuild(&Caller::ROOT, "web", Some("other"))
            .await
            .unwrap();
        let rebuilt = VmSpec {
            image: "other".into(),
            disk_bytes: bigger + GIB,
            ..grown.clone()
        };
        assert_eq!(m.registry().get("web").unwrap().unwrap(), rebuilt);
        assert_eq!(
            m.registry().spec_file_contents("web").unwrap(),
            Some(rebuilt)
        );
        let mut head = [0u8; 11];
        fs::File::open(&root)
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert_eq!(&head, b"other image");
        assert_eq!(fs::read(&data).unwrap().len() as u64, 128 * MIB);
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

    /// nobody (65534) and daemon (1) exist on every Debian system; the
    /// guest account of a create needs a real user name.
    const ALICE: u32 = 65534;
    const BOB: u32 = 1;

    fn users() -> (tempfile::TempDir, Manager) {
        let (dir, m) = setup();
        let grants = [ALICE, BOB]
            .into_iter()
            .flat_map(|uid| [(uid, Action::Create), (uid, Action::ManageOwn)]);
        (dir, m.with_authority(Authority::fixed(grants)))
    }

    fn entries(list: &[VolumeEntry]) -> Vec<(String, &'static str, Option<String>, Option<u32>)> {
        list.iter()
            .map(|e| {
                (
                    e.info.volume.name().to_string(),
                    e.info.volume.kind(),
                    e.vm.clone(),
                    e.owner_uid,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_kept_volume_belongs_to_its_owner() {
        let (_dir, m) = users();
        let (alice, bob) = (Caller::without_subject(ALICE), Caller::without_subject(BOB));
        m.create(&alice, params("db", Some(64 * MIB), None))
            .await
            .unwrap();
        m.remove_with_data(&alice, "db", false).await.unwrap();
        let kept = ("db".to_string(), "data", None, Some(ALICE));
        assert_eq!(
            entries(&m.list_volumes(&alice).await.unwrap()),
            std::slice::from_ref(&kept)
        );
        assert_eq!(
            entries(&m.list_volumes(&Caller::ROOT).await.unwrap()),
            [kept]
        );
        // Bob neither sees, attaches nor deletes it: to him it is not there.
        assert!(m.list_volumes(&bob).await.unwrap().is_empty());
        let e = m
            .create(&bob, params("bobs", None, Some("db")))
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "InvalidArgument", "{e}");
        assert!(
            e.to_string().contains("no data volume \"db\" of yours"),
            "{e}"
        );
        assert!(m.registry().get("bobs").unwrap().is_none());
        let e = m.delete_volume(&bob, "db").await.unwrap_err();
        assert!(
            e.to_string().contains("no data volume \"db\" of yours"),
            "{e}"
        );
        // Alice attaches it to a new VM, then deletes it with that VM.
        m.create(&alice, params("db2", None, Some("db")))
            .await
            .unwrap();
        let row = m.registry().store().volume("db").unwrap().unwrap();
        assert_eq!((row.vm.as_deref(), row.owner_uid), (Some("db2"), ALICE));
        m.remove_with_data(&alice, "db2", true).await.unwrap();
        assert!(m.registry().store().volume("db").unwrap().is_none());
        assert!(!m.layout().volume_file("db").exists());
    }

    #[tokio::test]
    async fn data_volumes_count_in_the_disk_quota() {
        let (dir, m) = users();
        let alice = Caller::without_subject(ALICE);
        // Room for the root (the 64 MiB image, default size) and 256 MiB.
        let root = m
            .create(&alice, params("probe", None, None))
            .await
            .unwrap()
            .disk_bytes;
        m.remove(&alice, "probe").await.unwrap();
        fs::write(
            dir.path().join("vmctl.conf"),
            format!("[Quota]\nMaxDisk={}\n", root + 256 * MIB),
        )
        .unwrap();
        let e = m
            .create(&alice, params("big", Some(512 * MIB), None))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ManagerError::QuotaExceeded {
                resource: "disk_bytes".into(),
                limit: (root + 256 * MIB) as i64,
                requested: (root + 512 * MIB) as i64,
            }
        );
        assert!(m.registry().store().volumes().unwrap().is_empty());
        m.create(&alice, params("db", Some(128 * MIB), None))
            .await
            .unwrap();
        // Growth counts: 256 MiB fits, 512 MiB does not, and nothing
        // changes when refused.
        m.resize_disk(&alice, "db", "data", 256 * MIB)
            .await
            .unwrap();
        let e = m
            .resize_disk(&alice, "db", "data", 512 * MIB)
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "QuotaExceeded", "{e}");
        let e = m
            .resize_disk(&alice, "db", "root", root + GIB)
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "QuotaExceeded", "{e}");
        assert_eq!(
            fs::metadata(m.layout().volume_file("db")).unwrap().len(),
            256 * MIB
        );
        assert_eq!(
            m.registry().store().volume("db").unwrap().unwrap().size,
            256 * MIB
        );
        // A kept volume still counts: no new VM fits beside it.
        m.remove_with_data(&alice, "db", false).await.unwrap();
        let quota = m.get_quota(&alice, None).await.unwrap();
        assert_eq!(quota.disk_bytes, 256 * MIB);
        let e = m
            .create(&alice, params("again", Some(64 * MIB), None))
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "QuotaExceeded", "{e}");
        m.delete_volume(&alice, "db").await.unwrap();
        assert_eq!(m.get_quota(&alice, None).await.unwrap().disk_bytes, 0);
    }

    #[tokio::test]
    async fn pool_status_names_the_backend_and_its_space() {
        let (dir, m) = users();
        let pool = m
            .pool_status(&Caller::without_subject(ALICE))
            .await
            .unwrap();
        assert_eq!(pool.backend, "directory");
        assert_eq!(pool.location, dir.path().display().to_string());
        assert!(pool.total_bytes > 0 && pool.free_bytes <= pool.total_bytes);
        let e = m
            .pool_status(&Caller::without_subject(4_000_000))
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "PermissionDenied", "{e}");
    }

    #[tokio::test]
    async fn an_ephemeral_vm_says_so_in_its_spec() {
        let (_dir, m) = setup();
        let p = CreateParams {
            ephemeral: Some(true),
            ..params("eph", None, None)
        };
        m.create(&Caller::ROOT, p).await.unwrap();
        let spec = m.registry().get("eph").unwrap().unwrap();
        assert!(spec.ephemeral);
        assert_eq!(m.registry().spec_file_contents("eph").unwrap(), Some(spec));
        m.create(&Caller::ROOT, params("plain", None, None))
            .await
            .unwrap();
        assert!(!m.registry().get("plain").unwrap().unwrap().ephemeral);
    }

    #[tokio::test]
    async fn a_failed_create_deletes_the_data_volume_it_made() {
        let (_dir, m) = setup();
        // The host key directory in the way: create fails after the data
        // volume was made.
        fs::create_dir_all(m.layout().key_dir("db")).unwrap();
        let e = m
            .create(&Caller::ROOT, params("db", Some(64 * MIB), None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exists although no VM"), "{e}");
        assert!(m.registry().store().volumes().unwrap().is_empty());
        assert!(!m.layout().volume_file("db").exists());
        assert!(volumes(&m).await.is_empty());
    }
}
