//! Create, start, stop, restart, remove and describe VMs: the service-layer
//! operations behind both APIs, as methods of [`Manager`].

use std::{
    fs,
    io::{self, Read},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use vmctl_api::{
    guest_credentials::is_plain_user_name,
    spec::{unit_name, VmSpec},
    ssh_keys, validate_vm_name, CreateParams, VmDetails,
};

use crate::{
    accounts,
    addresses::{self, NetworkConfig},
    authz::Action,
    cid, hostkeys,
    limits::{self, UnitLimits},
    quota,
    storage::vm::DataRequest,
    store::VmState,
    units::Systemd,
    Caller, Manager, ManagerError,
};

/// The image used when `Create` names none.
pub const DEFAULT_IMAGE: &str = "default";

/// The files an image directory must hold. An `initrd.img` is optional:
/// the launcher passes it when it is there (a kernel with the drivers built
/// in, like vmctl's own, mounts the root disk without one).
pub const IMAGE_FILES: [&str; 2] = ["root.raw", "vmlinuz"];

impl Manager {
    fn systemd_or_error(&self, unit: &str) -> Result<&Systemd, ManagerError> {
        self.systemd().ok_or_else(|| {
            ManagerError::internal(format!(
                "vmctld has no connection to systemd, cannot manage {unit}"
            ))
        })
    }

    /// Defines a new VM (stopped): validates everything first, then makes
    /// the root disk, the spec and the unit limits; any failure undoes
    /// every step, so there is never a half-created VM.
    pub async fn create(
        &self,
        caller: &Caller,
        params: CreateParams,
    ) -> Result<VmDetails, ManagerError> {
        self.authorize(caller, Action::Create).await?;
        let name = params.name;
        validate_vm_name(&name)?;
        let image = params.image.unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        let vcpus = params.vcpus.unwrap_or(limits::DEFAULT_VCPUS);
        limits::check_vcpus(vcpus)?;
        let memory = params.memory_bytes.unwrap_or(limits::DEFAULT_MEMORY);
        limits::check_memory(memory, limits::host_memory())?;
        let image_root = self.image_root(&image)?;
        let image_size = fs::metadata(&image_root)
            .map_err(|e| {
                ManagerError::internal(format!("cannot read {}: {e}", image_root.display()))
            })?
            .len();
        let disk_bytes = params
            .disk_bytes
            .unwrap_or_else(|| limits::DEFAULT_DISK.max(image_size));
        limits::check_disk(disk_bytes, image_size)?;
        let ssh_authorized_keys =
            ssh_keys::validate_public_keys(&params.ssh_authorized_keys.unwrap_or_default())
                .map_err(|reason| ManagerError::InvalidArgument {
                    what: "ssh_authorized_keys".into(),
                    reason,
                })?;
        let networked = match params.network.as_deref() {
            None | Some("default") => true,
            Some("none") => false,
            Some(other) => {
                return Err(ManagerError::InvalidArgument {
                    what: "network".into(),
                    reason: format!("unknown network {other:?}: expected \"default\" or \"none\""),
                })
            }
        };
        let guest_user = accounts::user_name(caller.uid)
            .filter(|user| is_plain_user_name(user))
            .ok_or_else(|| {
                ManagerError::internal(format!(
                    "uid {} has no user name usable as the guest account",
                    caller.uid
                ))
            })?;

        let data = DataRequest::from_params(params.data_bytes, params.data_volume)?;
        if let Some(request) = &data {
            self.check_data_request(caller, &name, request).await?;
        }
        let claim = data.as_ref().map(|d| d.claim(&name));

        let network_config = if networked {
            Some(
                NetworkConfig::load(self.config_path())
                    .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?,
            )
        } else {
            None
        };
        let quota_defaults = quota::load_defaults(self.config_path())
            .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
        let id = random_id()?;
        let owner = caller.uid;
        let vmm = params.vmm.unwrap_or_default();

        // Marked before the row exists, so a `doctor --repair` meanwhile
        // never takes this create for an interrupted one.
        let _in_flight = self.registry().begin(&name);
        // Step 1, one store transaction: the name, the quota check, the
        // CID and the addresses, recorded as a 'creating' row. Concurrent
        // creates serialise here only, not during the disk copy.
        let spec =
            self.registry()
                .store()
                .insert_claiming(&name, owner, claim.as_ref(), |now| {
                    let limits = quota::effective(owner, &quota_defaults, now.quota.as_ref());
                    let data_bytes = data
                        .as_ref()
                        .map_or(0, |d| d.new_bytes(owner, &now.volumes));
                    let request = quota::Usage {
                        vms: 1,
                        vcpus: vcpus.into(),
                        memory,
                        disk: disk_bytes.saturating_add(data_bytes),
                    };
                    let usage = quota::Usage::of(owner, &now.vms, &now.volumes);
                    quota::check(&limits, &usage, &request)?;
                    let cid = cid::smallest_free(now.vms.iter().map(|s| s.cid));
                    let network = match &network_config {
                        Some(config) => Some(addresses::allocate(
                            config,
                            self.config_path(),
                            now.vms.iter().filter_map(|s| s.network.as_ref()),
                            cid,
                        )?),
                        None => None,
                    };
                    Ok(VmSpec {
                        name: name.clone(),
                        id,
                        owner_uid: owner,
                        vcpus,
                        memory_bytes: memory,
                        disk_bytes,
                        image,
                        vmm,
                        cid,
                        network,
                        ssh_authorized_keys,
                        guest_user: Some(guest_user),
                        data_volume: data.as_ref().map(|d| d.volume_name(&name)),
                        ephemeral: params.ephemeral.unwrap_or(false),
                    })
                })?;
        // The remaining steps make files; a failure undoes all of them,
        // the data volume this create made and the row (as reconciliation
        // does after a crash in between).
        if let Some(request) = &data {
            if let Err(e) = self.make_data_volume(&name, request).await {
                self.undo_create(&spec).await;
                return Err(e);
            }
        }
        if let Err(e) = self.make_vm_files(&spec, image_root).await {
            self.undo_create(&spec).await;
            return Err(e);
        }
        if let Err(e) = self.mark_ready(&name) {
            self.undo_create(&spec).await;
            return Err(e);
        }
        // Names and known hosts are derived state: a failure is logged and
        // repaired by the next start of vmctld (publish_all).
        let others: Vec<_> = self
            .registry()
            .list()?
            .into_iter()
            .filter(|s| s.name != name)
            .collect();
        if let Err(e) = self.publish_vm(&spec, &others) {
            tracing::warn!("{name}: {e}");
        }
        tracing::info!("created VM {name} (cid {}) for uid {owner}", spec.cid);
        self.events().added(&name);
        Ok(self.details(spec).await)
    }

    /// Steps 2 to 5 of create: the root disk, the host key, the spec file
    /// (from the row) and the unit's limit drop-ins.
    async fn make_vm_files(&self, spec: &VmSpec, image_root: PathBuf) -> Result<(), ManagerError> {
        let name = &spec.name;
        let disk_dir = self.layout().disk_dir(name);
        make_disk_dir(&disk_dir)?;
        self.make_root_volume(spec, &image_root).await?;
        let key_dir = self.layout().key_dir(name);
        if key_dir.exists() {
            return Err(ManagerError::internal(format!(
                "{} exists although no VM of that name does; remove it first",
                key_dir.display()
            )));
        }
        let layout = self.layout().clone();
        tokio::task::spawn_blocking({
            let name = name.clone();
            move || hostkeys::generate(&layout, &name)
        })
        .await
        .map_err(ManagerError::internal)?
        .map_err(|e| ManagerError::internal(format!("{name}: SSH host key: {e}")))?;
        self.registry().write(spec)?;
        match self.systemd() {
            Some(systemd) => {
                systemd
                    .set_limits(
                        &spec.unit(),
                        &UnitLimits::for_vm(spec.vcpus, spec.memory_bytes),
                    )
                    .await
            }
            None => {
                tracing::warn!("{name}: no systemd connection, unit limits not set");
                Ok(())
            }
        }
    }

    /// The last step of create: the row (and the data volume it made)
    /// becomes 'ready'.
    fn mark_ready(&self, name: &str) -> Result<(), ManagerError> {
        if self.registry().store().mark_created(name)? {
            Ok(())
        } else {
            Err(ManagerError::internal(format!(
                "{name}: its store row vanished during create"
            )))
        }
    }

    /// The root disk of `image`, checking that the image is complete.
    pub(crate) fn image_root(&self, image: &str) -> Result<PathBuf, ManagerError> {
        let no_such = || ManagerError::NoSuchImage {
            image: image.to_string(),
        };
        // Image names follow the VM name rules: no paths, no dots.
        validate_vm_name(image).map_err(|_| no_such())?;
        let dir = self.layout().image_dir(image);
        if IMAGE_FILES.iter().all(|f| dir.join(f).is_file()) {
            Ok(dir.join("root.raw"))
        } else {
            Err(no_such())
        }
    }

    /// Starts VM `name` and waits until its unit is up.
    pub async fn start(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        let unit = self.manageable_unit(caller, name).await?;
        self.systemd_or_error(&unit)?.start(&unit).await
    }

    /// Stops VM `name` and waits until its unit is down.
    pub async fn stop(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        let unit = self.manageable_unit(caller, name).await?;
        self.systemd_or_error(&unit)?.stop(&unit).await
    }

    /// Restarts VM `name` and waits until its unit is up again.
    pub async fn restart(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        let unit = self.manageable_unit(caller, name).await?;
        self.systemd_or_error(&unit)?.restart(&unit).await
    }

    /// Deletes VM `name`: stops its unit (waiting), forgets its failed
    /// state, removes its limit drop-ins, then its disks and spec. The files
    /// go even when systemd no longer knows the unit, but only once systemd,
    /// asked again right before, says the unit is down: a VM's disk is never
    /// pulled from under a running VMM, whatever signal ended the wait.
    pub async fn remove(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        let unit = self.manageable_unit(caller, name).await?;
        let _in_flight = self.registry().begin(name);
        // The journal first: from here on a crash is finished at the next
        // start, and a repeated rm carries on where this one stopped.
        let store = self.registry().store();
        if !store.transition(name, VmState::Ready, VmState::Removing)?
            && store.vm(name)?.map(|row| row.state) != Some(VmState::Removing)
        {
            return Err(ManagerError::NoSuchVm { name: name.into() });
        }
        self.finish_remove(name, &unit).await?;
        tracing::info!("removed VM {name}");
        if let Err(e) = self.withdraw_owner(name) {
            tracing::warn!("{name}: cannot remove its ownership record: {e}");
        }
        self.events().removed(name);
        Ok(())
    }

    /// Everything known about VM `name`.
    pub async fn describe(&self, caller: &Caller, name: &str) -> Result<VmDetails, ManagerError> {
        let spec = self.visible_spec(caller, name).await?;
        Ok(self.details(spec).await)
    }

    async fn details(&self, spec: VmSpec) -> VmDetails {
        let state = self.vm_state(&spec.name).await;
        let shared_with = self.shared_with(&spec.name).unwrap_or_else(|e| {
            tracing::warn!("{}: cannot read its shares: {e}", spec.name);
            Vec::new()
        });
        VmDetails {
            unit: unit_name(&spec.name),
            name: spec.name,
            state,
            owner_uid: spec.owner_uid,
            owner: accounts::display_name(spec.owner_uid),
            vcpus: spec.vcpus,
            memory_bytes: spec.memory_bytes,
            disk_bytes: spec.disk_bytes,
            image: spec.image,
            vmm: spec.vmm.as_str().to_string(),
            id: spec.id,
            cid: spec.cid,
            ipv4: spec.network.as_ref().map(|n| n.ipv4.to_string()),
            ipv6: spec.network.as_ref().map(|n| n.ipv6.to_string()),
            mac: spec.network.as_ref().map(|n| n.mac.clone()),
            ssh_user: spec.guest_user,
            ssh_authorized_keys: spec.ssh_authorized_keys,
            shared_with,
        }
    }

    /// Publishes a new VM: its name for NSS and its host key in the known
    /// hosts (with the `others` already there).
    fn publish_vm(&self, spec: &VmSpec, others: &[VmSpec]) -> Result<(), String> {
        self.publish_owner(spec)
            .map_err(|e| format!("cannot write its ownership record: {e}"))?;
        if let Some(net) = &spec.network {
            nss_vmctl::hostdb::publish(
                &self.layout().hosts_dir(),
                &spec.name,
                net.ipv4,
                Some(net.ipv6),
            )
            .map_err(|e| format!("cannot publish its host name: {e}"))?;
        }
        let mut all = others.to_vec();
        all.push(spec.clone());
        hostkeys::write_known_hosts(self.layout(), &all).map_err(|e| {
            format!(
                "cannot write {}: {e}",
                self.layout().known_hosts().display()
            )
        })
    }

    /// Makes the NSS hosts directory and the known hosts match the stored
    /// VMs (at start: whatever happened while vmctld was down).
    pub fn publish_all(&self) -> Result<(), String> {
        let specs = self.registry().list().map_err(|e| e.to_string())?;
        let entries: Vec<_> = specs
            .iter()
            .filter_map(|s| {
                s.network.as_ref().map(|n| nss_vmctl::hostdb::HostEntry {
                    name: s.name.clone(),
                    ipv4: n.ipv4,
                    ipv6: Some(n.ipv6),
                })
            })
            .collect();
        let hosts = self.layout().hosts_dir();
        nss_vmctl::hostdb::replace_all(&hosts, &entries)
            .map_err(|e| format!("cannot write {}: {e}", hosts.display()))?;
        self.publish_owners(&specs)
            .map_err(|e| format!("cannot write the ownership records: {e}"))?;
        hostkeys::write_known_hosts(self.layout(), &specs).map_err(|e| {
            format!(
                "cannot write {}: {e}",
                self.layout().known_hosts().display()
            )
        })
    }
}

/// Creates the VM's disk directory (0700); it must not exist yet (a
/// leftover would be taken over otherwise).
fn make_disk_dir(dir: &Path) -> Result<(), ManagerError> {
    let parent = dir.parent().unwrap_or(dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .and_then(|()| fs::DirBuilder::new().mode(0o700).create(dir))
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => ManagerError::internal(format!(
                "{} exists although no VM of that name does; remove it first",
                dir.display()
            )),
            _ => ManagerError::internal(format!("cannot create {}: {e}", dir.display())),
        })
}

/// A random 128-bit ID as 32 lowercase hex digits (a valid machine ID).
fn random_id() -> Result<String, ManagerError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ManagerError::internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Test helpers shared by the unit tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::Registry;
    use vmctl_api::sizes::MIB;

    /// A manager on a temp state dir with a sparse 64 MiB image `default`.
    pub fn setup() -> (tempfile::TempDir, Manager) {
        let dir = tempfile::tempdir().unwrap();
        let m = Manager::new(Registry::new(dir.path()))
            .with_runtime_dir(dir.path().join("run"))
            .with_config(dir.path().join("vmctl.conf"));
        let image = m.layout().image_dir("default");
        fs::create_dir_all(&image).unwrap();
        let root = fs::File::create(image.join("root.raw")).unwrap();
        root.set_len(64 * MIB).unwrap();
        fs::write(image.join("vmlinuz"), b"k").unwrap();
        fs::write(image.join("initrd.img"), b"i").unwrap();
        (dir, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use vmctl_api::sizes::{GIB, MIB};

    use testing::setup;

    fn params(name: &str) -> CreateParams {
        CreateParams {
            name: name.into(),
            memory_bytes: Some(256 * MIB),
            ..Default::default()
        }
    }

    /// Everything under the state dir except the images.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["vms", "disks", "keys"] {
            if let Ok(entries) = fs::read_dir(dir.join(sub)) {
                for e in entries {
                    out.push(e.unwrap().path().display().to_string());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn creates_spec_and_sparse_disk_with_fresh_cids() {
        let (dir, m) = setup();
        let a = m.create(&Caller::ROOT, params("a")).await.unwrap();
        assert_eq!((a.cid, a.vcpus, a.disk_bytes), (3, 1, 4 * GIB));
        assert_eq!(a.unit, "vm@a.service");
        assert_eq!(a.id.len(), 32);
        let b = m.create(&Caller::ROOT, params("b")).await.unwrap();
        assert_eq!(b.cid, 4);
        assert_ne!(a.id, b.id);
        let disk = fs::metadata(m.layout().root_disk("a")).unwrap();
        assert_eq!(disk.len(), 4 * GIB);
        assert!(disk.blocks() * 512 < MIB, "not sparse");
        let spec = fs::metadata(m.layout().spec_file("a")).unwrap();
        assert_eq!(spec.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.describe(&Caller::ROOT, "a").await.unwrap(), a);

        m.remove(&Caller::ROOT, "a").await.unwrap();
        let c = m.create(&Caller::ROOT, params("c")).await.unwrap();
        assert_eq!(c.cid, 3, "freed CID is reused");
        drop(dir);
    }

    #[tokio::test]
    async fn bad_input_creates_nothing() {
        let (dir, m) = setup();
        let cases: Vec<(CreateParams, &str)> = vec![
            (params("../x"), "InvalidName"),
            (
                CreateParams {
                    image: Some("nope".into()),
                    ..params("x")
                },
                "NoSuchImage",
            ),
            (
                CreateParams {
                    image: Some("../default".into()),
                    ..params("x")
                },
                "NoSuchImage",
            ),
            (
                CreateParams {
                    memory_bytes: Some(1 << 50),
                    ..params("x")
                },
                "InvalidSize",
            ),
            (
                CreateParams {
                    vcpus: Some(0),
                    ..params("x")
                },
                "InvalidSize",
            ),
            (
                CreateParams {
                    disk_bytes: Some(MIB),
                    ..params("x")
                },
                "InvalidSize",
            ),
            (
                CreateParams {
                    ssh_authorized_keys: Some(vec![format!("{KEY}\nssh-ed25519 AAAAinjected")]),
                    ..params("x")
                },
                "InvalidArgument",
            ),
            (
                CreateParams {
                    ssh_authorized_keys: Some(vec!["-----BEGIN OPENSSH PRIVATE KEY-----".into()]),
                    ..params("x")
                },
                "InvalidArgument",
            ),
            (
                CreateParams {
                    network: Some("bridged".into()),
                    ..params("x")
                },
                "InvalidArgument",
            ),
        ];
        for (p, error) in cases {
            let e = m.create(&Caller::ROOT, p).await.unwrap_err();
            assert_eq!(e.short_name(), error, "{e}");
        }
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e me@host";

    #[tokio::test]
    async fn addresses_mac_keys_and_names_are_allocated_published_and_freed() {
        let (dir, m) = setup();
        let a = m
            .create(
                &Caller::ROOT,
                CreateParams {
                    ssh_authorized_keys: Some(vec![format!(" {KEY}\n")]),
                    ..params("a")
                },
            )
            .await
            .unwrap();
        assert_eq!(a.ipv4.as_deref(), Some("10.77.0.2"));
        assert_eq!(a.ipv6.as_deref(), Some("fd77:766d:6374::2"));
        assert_eq!(a.mac.as_deref(), Some("02:76:6d:00:00:03"));
        assert_eq!(a.ssh_user.as_deref(), Some("root"));
        assert_eq!(a.ssh_authorized_keys, [KEY]);
        let spec = m.registry().get("a").unwrap().unwrap();
        assert_eq!(
            spec.network.as_ref().unwrap().gateway4.to_string(),
            "10.77.0.1"
        );
        let b = m.create(&Caller::ROOT, params("b")).await.unwrap();
        assert_eq!(b.ipv4.as_deref(), Some("10.77.0.3"));
        let none = CreateParams {
            network: Some("none".into()),
            ..params("c")
        };
        let c = m.create(&Caller::ROOT, none).await.unwrap();
        assert_eq!((c.ipv4, c.ipv6, c.mac), (None, None, None));

        // Published: NSS records and known hosts with the host key.
        let run = dir.path().join("run");
        assert_eq!(
            fs::read_to_string(run.join("hosts/name/a")).unwrap(),
            "10.77.0.2 fd77:766d:6374::2\n"
        );
        assert_eq!(
            fs::read_to_string(run.join("hosts/addr/10.77.0.3")).unwrap(),
            "b\n"
        );
        let known = fs::read_to_string(run.join("ssh_known_hosts")).unwrap();
        let public = hostkeys::public_key(m.layout(), "a").unwrap();
        let key = public.split(' ').take(2).collect::<Vec<_>>().join(" ");
        assert!(
            known.contains(&format!("a.vm,10.77.0.2,fd77:766d:6374::2 {key}\n")),
            "{known}"
        );
        assert!(known.contains("\nc.vm ssh-ed25519 "), "{known}");

        // rm frees everything; the next VM gets a's addresses.
        m.remove(&Caller::ROOT, "a").await.unwrap();
        assert!(!run.join("hosts/name/a").exists());
        assert!(!run.join("hosts/addr/10.77.0.2").exists());
        assert!(!m.layout().key_dir("a").exists());
        assert!(!fs::read_to_string(run.join("ssh_known_hosts"))
            .unwrap()
            .contains("a.vm"));
        let d = m.create(&Caller::ROOT, params("d")).await.unwrap();
        assert_eq!(d.ipv4.as_deref(), Some("10.77.0.2"));
        assert_eq!(d.ipv6.as_deref(), Some("fd77:766d:6374::2"));
        assert_eq!(
            d.mac.as_deref(),
            Some("02:76:6d:00:00:03"),
            "from the reused CID"
        );
    }

    #[tokio::test]
    async fn a_full_subnet_or_a_bad_config_creates_nothing() {
        let (dir, m) = setup();
        fs::write(
            dir.path().join("vmctl.conf"),
            "[Network]\nIPv4Subnet=10.9.0.0/30\n",
        )
        .unwrap();
        m.create(&Caller::ROOT, params("a")).await.unwrap();
        let e = m.create(&Caller::ROOT, params("b")).await.unwrap_err();
        assert_eq!(e.short_name(), "NoFreeAddress", "{e}");
        assert!(e.to_string().contains("10.9.0.0/30"), "{e}");
        assert!(e.to_string().contains("IPv4Subnet="), "{e}");
        fs::write(
            dir.path().join("vmctl.conf"),
            "[Network]\nIPv4Subnet=10.9.0.1/30\n",
        )
        .unwrap();
        let e = m.create(&Caller::ROOT, params("b")).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("vmctl.conf:2: IPv4Subnet=10.9.0.1/30"),
            "{e}"
        );
        assert!(m.registry().get("b").unwrap().is_none());
        assert!(!m.layout().disk_dir("b").exists());
        assert!(!m.layout().key_dir("b").exists());
    }

    #[tokio::test]
    async fn publish_all_rebuilds_names_and_known_hosts() {
        let (dir, m) = setup();
        m.create(&Caller::ROOT, params("a")).await.unwrap();
        let run = dir.path().join("run");
        fs::remove_dir_all(run.join("hosts")).unwrap();
        fs::write(run.join("ssh_known_hosts"), "stale\n").unwrap();
        m.publish_all().unwrap();
        assert!(run.join("hosts/name/a").exists());
        assert!(fs::read_to_string(run.join("ssh_known_hosts"))
            .unwrap()
            .contains("a.vm,"));
    }

    #[tokio::test]
    async fn failure_after_the_disk_copy_is_rolled_back() {
        let (dir, m) = setup();
        // The spec cannot be written (its directory is a file), after the
        // disk was made.
        fs::write(dir.path().join("vms"), b"in the way").unwrap();
        let e = m.create(&Caller::ROOT, params("x")).await.unwrap_err();
        assert_eq!(e.short_name(), "InternalError", "{e}");
        assert!(!m.layout().disk_dir("x").exists());
        assert!(!dir.path().join("vms/.x.json.tmp").exists());
    }

    #[tokio::test]
    async fn concurrent_creates_stay_within_the_quota_and_unique() {
        let (_dir, m) = setup();
        // Root is exempt unless a quota is set for uid 0 explicitly.
        let q = crate::store::QuotaOverride {
            vms: Some(2),
            ..Default::default()
        };
        m.registry().store().set_quota(0, &q).unwrap();
        let results = futures_util::future::join_all(
            (0..10).map(|i| m.create(&Caller::ROOT, params(&format!("q{i}")))),
        )
        .await;
        let (ok, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
        assert_eq!(ok.len(), 2, "{refused:?}");
        for e in refused {
            assert_eq!(
                e.unwrap_err(),
                ManagerError::QuotaExceeded {
                    resource: "vms".into(),
                    limit: 2,
                    requested: 3
                }
            );
        }
        // Without the override root has no limit; every VM is unique.
        m.registry()
            .store()
            .set_quota(0, &Default::default())
            .unwrap();
        let results = futures_util::future::join_all(
            (0..8).map(|i| m.create(&Caller::ROOT, params(&format!("u{i}")))),
        )
        .await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let vms = m.registry().list().unwrap();
        assert_eq!(vms.len(), 10);
        let unique = |f: fn(&VmSpec) -> String| {
            vms.iter()
                .map(f)
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert_eq!(unique(|s| s.cid.to_string()), 10);
        assert_eq!(unique(|s| s.network.as_ref().unwrap().ipv4.to_string()), 10);
        assert_eq!(unique(|s| s.network.as_ref().unwrap().ipv6.to_string()), 10);
        assert_eq!(unique(|s| s.network.as_ref().unwrap().mac.clone()), 10);
    }

    #[tokio::test]
    async fn a_quota_from_the_configuration_names_the_resource() {
        let (dir, m) = setup();
        fs::write(dir.path().join("vmctl.conf"), "[Quota]\nMaxMemory=1G\n").unwrap();
        let q = crate::store::QuotaOverride {
            vcpus: Some(4),
            ..Default::default()
        };
        // An override for root: its unset limits stay unlimited.
        m.registry().store().set_quota(0, &q).unwrap();
        let big = CreateParams {
            vcpus: Some(5),
            ..params("big")
        };
        let e = m.create(&Caller::ROOT, big).await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::QuotaExceeded {
                resource: "vcpus".into(),
                limit: 4,
                requested: 5
            }
        );
        assert!(m.registry().store().vm("big").unwrap().is_none());
        assert!(!m.layout().disk_dir("big").exists());
        let quota = m.get_quota(&Caller::ROOT, None).await.unwrap();
        assert_eq!((quota.max_vcpus, quota.max_memory_bytes), (Some(4), None));
        assert!(quota.overridden);
    }

    #[tokio::test]
    async fn duplicates_and_permissions() {
        let (_dir, m) = setup();
        m.create(&Caller::ROOT, params("a")).await.unwrap();
        let e = m.create(&Caller::ROOT, params("a")).await.unwrap_err();
        assert_eq!(e, ManagerError::VmExists { name: "a".into() });
        let user = Caller::without_subject(1000);
        let e = m.create(&user, params("b")).await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::PermissionDenied {
                action: "org.vmctl.vm.create".into()
            }
        );
        // Not the owner: the VM is invisible.
        let e = m.remove(&user, "a").await.unwrap_err();
        assert_eq!(e, ManagerError::NoSuchVm { name: "a".into() });
        let e = m.remove(&Caller::ROOT, "zzz").await.unwrap_err();
        assert_eq!(e, ManagerError::NoSuchVm { name: "zzz".into() });
        // Without systemd, start says so instead of pretending.
        let e = m.start(&Caller::ROOT, "a").await.unwrap_err();
        assert!(e.to_string().contains("systemd"), "{e}");
    }
}
