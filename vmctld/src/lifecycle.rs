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
    cid,
    disk::{self, CopyMethod},
    hostkeys,
    limits::{self, UnitLimits},
    units::Systemd,
    Caller, Manager, ManagerError,
};

/// The image used when `Create` names none.
pub const DEFAULT_IMAGE: &str = "default";

/// The files an image directory must hold. An `initrd.img` is optional:
/// the launcher passes it when it is there (a kernel with the drivers built
/// in, like vmctl's own, mounts the root disk without one).
pub const IMAGE_FILES: [&str; 2] = ["root.raw", "vmlinuz"];

/// Files and directories made so far by a `Create`, removed again when it
/// fails (on drop) unless [`Rollback::commit`] was called.
#[derive(Debug, Default)]
struct Rollback {
    paths: Vec<PathBuf>,
}

impl Rollback {
    fn add(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    fn commit(mut self) {
        self.paths.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        for path in self.paths.iter().rev() {
            let result = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(e) = result {
                tracing::warn!("rollback: cannot remove {}: {e}", path.display());
            }
        }
    }
}

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

        // One create or remove at a time: names, CIDs and addresses stay
        // unique.
        let _guard = self.lock().await;
        if self.registry().get(&name)?.is_some() {
            return Err(ManagerError::VmExists { name });
        }
        let existing = self.registry().list()?;
        let cid = cid::smallest_free(existing.iter().map(|s| s.cid));
        let network = if networked {
            let config = NetworkConfig::load(self.config_path())
                .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
            Some(addresses::allocate(
                &config,
                self.config_path(),
                existing.iter().filter_map(|s| s.network.as_ref()),
                cid,
            )?)
        } else {
            None
        };
        let spec = VmSpec {
            name: name.clone(),
            id: random_id()?,
            owner_uid: caller.uid,
            vcpus,
            memory_bytes: memory,
            disk_bytes,
            image,
            vmm: params.vmm.unwrap_or_default(),
            cid,
            network,
            ssh_authorized_keys,
            guest_user: Some(guest_user),
        };

        let mut rollback = Rollback::default();
        let disk_dir = self.layout().disk_dir(&name);
        make_disk_dir(&disk_dir)?;
        rollback.add(disk_dir);
        let root = self.layout().root_disk(&name);
        let method = tokio::task::spawn_blocking({
            let root = root.clone();
            move || disk::copy_disk(&image_root, &root, disk_bytes)
        })
        .await
        .map_err(ManagerError::internal)?
        .map_err(|e| ManagerError::internal(format!("cannot make {}: {e}", root.display())))?;
        tracing::info!(
            "{name}: root disk {} ({})",
            root.display(),
            match method {
                CopyMethod::Reflink => "reflink",
                CopyMethod::Sparse => "sparse copy",
            }
        );
        let key_dir = self.layout().key_dir(&name);
        if key_dir.exists() {
            return Err(ManagerError::internal(format!(
                "{} exists although no VM of that name does; remove it first",
                key_dir.display()
            )));
        }
        let layout = self.layout().clone();
        let result = tokio::task::spawn_blocking({
            let name = name.clone();
            move || hostkeys::generate(&layout, &name)
        })
        .await
        .map_err(ManagerError::internal)?;
        rollback.add(key_dir);
        result.map_err(|e| ManagerError::internal(format!("{name}: SSH host key: {e}")))?;
        rollback.add(self.registry().write(&spec)?);

        if let Some(systemd) = self.systemd() {
            let unit = spec.unit();
            if let Err(e) = systemd
                .set_limits(&unit, &UnitLimits::for_vm(vcpus, memory))
                .await
            {
                // Some properties may have been written before the error.
                if let Err(revert) = systemd.revert(&unit).await {
                    tracing::warn!("rollback: {revert}");
                }
                return Err(e);
            }
        } else {
            tracing::warn!("{name}: no systemd connection, unit limits not set");
        }
        rollback.commit();
        // Names and known hosts are derived state: a failure is logged and
        // repaired by the next start of vmctld (publish_all).
        if let Err(e) = self.publish_vm(&spec, &existing) {
            tracing::warn!("{name}: {e}");
        }
        tracing::info!("created VM {name} (cid {cid}) for uid {}", caller.uid);
        self.events().added(&name);
        Ok(self.details(spec).await)
    }

    /// The root disk of `image`, checking that the image is complete.
    fn image_root(&self, image: &str) -> Result<PathBuf, ManagerError> {
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
        let _guard;
        if let Some(systemd) = self.systemd() {
            systemd.stop(&unit).await?;
            systemd.reset_failed(&unit).await?;
            systemd.revert(&unit).await?;
            _guard = self.lock().await;
            systemd.ensure_stopped(&unit).await?;
        } else {
            _guard = self.lock().await;
        }
        if let Err(e) = nss_vmctl::hostdb::withdraw(&self.layout().hosts_dir(), name) {
            tracing::warn!("{name}: cannot withdraw its host name: {e}");
        }
        remove_path(&self.layout().disk_dir(name))?;
        remove_path(&self.layout().key_dir(name))?;
        // The spec last: until it is gone the VM exists and rm can be
        // repeated after a crash.
        remove_path(&self.registry().spec_file(name))?;
        if let Err(e) = hostkeys::write_known_hosts(self.layout(), &self.registry().list()?) {
            tracing::warn!(
                "cannot rewrite {}: {e}",
                self.layout().known_hosts().display()
            );
        }
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

fn remove_path(path: &Path) -> Result<(), ManagerError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ManagerError::internal(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// A random 128-bit ID as 32 lowercase hex digits (a valid machine ID).
fn random_id() -> Result<String, ManagerError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ManagerError::internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use vmctl_api::sizes::{GIB, MIB};

    /// A manager on a temp state dir with a sparse 64 MiB image `default`.
    fn setup() -> (tempfile::TempDir, Manager) {
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
