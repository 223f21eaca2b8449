//! Reconciliation: after a crash, make the store and reality agree.
//!
//! Create and remove are journaled in the store: create reserves a row as
//! 'creating', then makes the disk, the host key, the spec file and the
//! unit's drop-ins, then marks the row 'ready'; remove marks the row
//! 'removing', stops the unit, deletes the files and deletes the row last.
//! So whatever instant vmctld is killed at, the row tells what was going
//! on: at its next start vmctld undoes an interrupted create (the client
//! never got an answer) and finishes an interrupted remove (the client
//! asked for it). Then it compares the rest of reality with the rows and
//! repairs what it can: a spec file, host key or drop-in missing for a
//! VM; disks, key directories, drop-ins and NSS records that belong to no
//! VM; spec files with no row are imported (how an install from before the
//! store is upgraded). Each repair is logged as one line. `vmctl doctor`
//! shows the same report, repairing only with `--repair`.
//!
//! TAPs are not vmctld's: the launcher's TAP is non-persistent for QEMU
//! (the kernel deletes it with the last process holding it, `kill -9`
//! included) and a persistent one left by a killed cloud-hypervisor
//! launcher is replaced when the VM next starts; vmctld itself runs in a
//! network namespace of its own without CAP_NET_ADMIN.
//!
//! Running VMs are never touched: only the units of VMs being removed are
//! stopped.

mod volumes;

use std::{
    collections::HashSet,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use vmctl_api::{
    spec::{unit_name, VmSpec},
    validate_vm_name,
};

use crate::{
    authz::Action, hostkeys, limits::UnitLimits, store::VmState, Caller, Manager, ManagerError,
};

/// Where systemd keeps the drop-ins that `SetUnitProperties` writes.
pub const SYSTEM_CONTROL_DIR: &str = "/etc/systemd/system.control";

/// One disagreement between the store and reality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind: `interrupted-create`, `interrupted-remove`,
    /// `missing-spec-file`, `stale-spec-file`, `missing-host-key`,
    /// `missing-disk`, `missing-drop-in`, `unknown-spec-file`,
    /// `orphan-disk`, `orphan-host-key`, `orphan-drop-in`, `orphan-name`,
    /// `missing-owner-record`, `orphan-owner-record`,
    /// `interrupted-volume-create`, `interrupted-volume-delete`,
    /// `missing-volume`, `unknown-volume`.
    pub kind: &'static str,
    /// The VM it concerns, if any.
    pub vm: Option<String>,
    /// The file, directory or interface, if any.
    pub path: Option<String>,
    /// What is wrong, and what was done.
    pub message: String,
    /// Whether it was repaired.
    pub repaired: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(vm) = &self.vm {
            write!(f, " vm={vm}")?;
        }
        if let Some(path) = &self.path {
            write!(f, " path={path}")?;
        }
        write!(
            f,
            ": {} ({})",
            self.message,
            if self.repaired {
                "repaired"
            } else {
                "not repaired"
            }
        )
    }
}

impl From<Finding> for vmctl_api::types::Finding {
    fn from(f: Finding) -> Self {
        Self {
            kind: f.kind.to_string(),
            vm: f.vm,
            path: f.path,
            message: f.message,
            repaired: f.repaired,
        }
    }
}

/// Collects findings, repairing when asked.
struct Report {
    repair: bool,
    findings: Vec<Finding>,
}

impl Report {
    /// Records a finding; `fix` runs only when repairing, and its error
    /// becomes part of the message.
    fn found(
        &mut self,
        kind: &'static str,
        vm: Option<&str>,
        path: Option<&Path>,
        message: String,
        fix: Option<Result<(), String>>,
    ) {
        let (repaired, message) = match fix {
            Some(Ok(())) => (true, message),
            Some(Err(e)) => (false, format!("{message}; repair failed: {e}")),
            None => (false, message),
        };
        let finding = Finding {
            kind,
            vm: vm.map(str::to_string),
            path: path.map(|p| p.display().to_string()),
            message,
            repaired,
        };
        if self.repair {
            tracing::warn!("reconcile: {finding}");
        }
        self.findings.push(finding);
    }
}

impl Manager {
    /// `vmctl doctor`: the reconciliation report, repairing with `repair`.
    /// Only root and holders of the admin action may ask.
    pub async fn doctor(
        &self,
        caller: &Caller,
        repair: bool,
    ) -> Result<Vec<Finding>, ManagerError> {
        self.authorize(caller, Action::Admin).await?;
        self.reconcile(repair).await
    }

    /// Compares the store with the files, units and interfaces of the VMs,
    /// repairing when `repair` (vmctld does at every start) and logging
    /// each repair. VMs with a create or remove in progress are skipped.
    pub async fn reconcile(&self, repair: bool) -> Result<Vec<Finding>, ManagerError> {
        let mut report = Report {
            repair,
            findings: Vec::new(),
        };
        self.adopt_spec_files(&mut report)?;
        let rows = self.registry().store().vms()?;
        let busy = |name: &str| self.registry().is_in_flight(name);
        for row in rows.iter().filter(|row| !busy(&row.spec.name)) {
            let name = row.spec.name.as_str();
            match row.state {
                VmState::Creating => {
                    let fix = if repair {
                        self.undo_create(&row.spec).await;
                        Some(Ok(()))
                    } else {
                        None
                    };
                    report.found(
                        "interrupted-create",
                        Some(name),
                        None,
                        "a create was cut short; undone (files and row removed)".into(),
                        fix,
                    );
                }
                VmState::Removing => {
                    let fix = if repair {
                        Some(
                            self.finish_remove(name, &unit_name(name))
                                .await
                                .map_err(|e| e.to_string()),
                        )
                    } else {
                        None
                    };
                    report.found(
                        "interrupted-remove",
                        Some(name),
                        None,
                        "a remove was cut short; finished".into(),
                        fix,
                    );
                }
                VmState::Ready => self.check_ready(&row.spec, &mut report).await,
            }
        }
        let known: HashSet<String> = self
            .registry()
            .store()
            .vms()?
            .into_iter()
            .map(|row| row.spec.name)
            .collect();
        self.orphan_dirs(&known, &mut report);
        self.orphan_drop_ins(&known, &mut report).await;
        self.orphan_names(&mut report)?;
        self.owner_records(&mut report)?;
        self.reconcile_volumes(&mut report)?;
        Ok(report.findings)
    }

    /// Imports spec files that have no row (an install from before the
    /// store, whose VMs must survive the upgrade).
    fn adopt_spec_files(&self, report: &mut Report) -> Result<(), ManagerError> {
        let store = self.registry().store();
        for spec in self.registry().spec_files()? {
            if store.vm(&spec.name)?.is_some() {
                continue;
            }
            let path = self.registry().spec_file(&spec.name);
            let fix = report
                .repair
                .then(|| store.adopt(&spec).map_err(|e| e.to_string()));
            report.found(
                "unknown-spec-file",
                Some(&spec.name),
                Some(&path),
                "a spec file without a store row (from an older vmctl); imported".into(),
                fix,
            );
        }
        Ok(())
    }

    async fn check_ready(&self, spec: &VmSpec, report: &mut Report) {
        let name = spec.name.as_str();
        let path = self.registry().spec_file(name);
        let on_disk = self.registry().spec_file_contents(name);
        let problem = match &on_disk {
            Ok(Some(file)) if file == spec => None,
            Ok(Some(_)) => Some(("stale-spec-file", "the spec file differs from the store")),
            Ok(None) => Some(("missing-spec-file", "the spec file is missing")),
            Err(_) => Some(("stale-spec-file", "the spec file is unreadable")),
        };
        if let Some((kind, message)) = problem {
            let fix = report.repair.then(|| {
                self.registry()
                    .write(spec)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            report.found(
                kind,
                Some(name),
                Some(&path),
                format!("{message}; rewritten from the store"),
                fix,
            );
        }
        let disk = self.layout().root_disk(name);
        if !disk.exists() {
            report.found(
                "missing-disk",
                Some(name),
                Some(&disk),
                "the root disk is missing; rebuild or remove the VM".into(),
                None,
            );
        }
        let key = self.layout().host_key(name);
        if !key.exists() {
            let fix = report.repair.then(|| {
                let dir = self.layout().key_dir(name);
                let _ = fs::remove_dir_all(&dir);
                hostkeys::generate(self.layout(), name).map_err(|e| e.to_string())
            });
            report.found(
                "missing-host-key",
                Some(name),
                Some(&key),
                "the SSH host key is missing; a new one made".into(),
                fix,
            );
        }
        if let Some(systemd) = self.systemd() {
            let dir = drop_in_dir(name);
            if !dir.exists() {
                let fix = if report.repair {
                    Some(
                        systemd
                            .set_limits(
                                &spec.unit(),
                                &UnitLimits::for_vm(spec.vcpus, spec.memory_bytes),
                            )
                            .await
                            .map_err(|e| e.to_string()),
                    )
                } else {
                    None
                };
                report.found(
                    "missing-drop-in",
                    Some(name),
                    Some(&dir),
                    "the unit's limit drop-ins are missing; set again".into(),
                    fix,
                );
            }
        }
    }

    /// Disk and key directories of no VM.
    fn orphan_dirs(&self, known: &HashSet<String>, report: &mut Report) {
        let state = &self.layout().state_dir;
        for (kind, sub) in [("orphan-disk", "disks"), ("orphan-host-key", "keys")] {
            for name in dir_names(&state.join(sub))
                .into_iter()
                .filter(|n| is_vm_name(n))
            {
                if known.contains(&name) || self.registry().is_in_flight(&name) {
                    continue;
                }
                let path = state.join(sub).join(&name);
                let fix = report.repair.then(|| remove_all(&path));
                report.found(
                    kind,
                    Some(&name),
                    Some(&path),
                    "belongs to no VM; removed".into(),
                    fix,
                );
            }
        }
    }

    /// Drop-in directories of `vm@NAME.service` for no VM.
    async fn orphan_drop_ins(&self, known: &HashSet<String>, report: &mut Report) {
        let Some(systemd) = self.systemd() else {
            return;
        };
        for entry in dir_names(Path::new(SYSTEM_CONTROL_DIR)) {
            let Some(name) = entry
                .strip_prefix("vm@")
                .and_then(|rest| rest.strip_suffix(".service.d"))
            else {
                continue;
            };
            if known.contains(name) || self.registry().is_in_flight(name) {
                continue;
            }
            let fix = if report.repair {
                Some(
                    systemd
                        .revert(&unit_name(name))
                        .await
                        .map_err(|e| e.to_string()),
                )
            } else {
                None
            };
            report.found(
                "orphan-drop-in",
                Some(name),
                Some(&drop_in_dir(name)),
                "unit drop-ins of no VM; reverted".into(),
                fix,
            );
        }
    }

    /// NSS name records of no VM (the records are rebuilt from the store).
    fn orphan_names(&self, report: &mut Report) -> Result<(), ManagerError> {
        let networked: HashSet<String> = self
            .registry()
            .list()?
            .into_iter()
            .filter(|s| s.network.is_some())
            .map(|s| s.name)
            .collect();
        let dir = self.layout().hosts_dir().join("name");
        let stale: Vec<String> = dir_names(&dir)
            .into_iter()
            .filter(|n| is_vm_name(n) && !networked.contains(n))
            .filter(|n| !self.registry().is_in_flight(n))
            .collect();
        for name in &stale {
            let fix = report
                .repair
                .then(|| nss_vmctl::hostdb::withdraw(&self.layout().hosts_dir(), name))
                .map(|r| r.map_err(|e| e.to_string()));
            report.found(
                "orphan-name",
                Some(name),
                Some(&dir.join(name)),
                "an NSS host record of no VM; withdrawn".into(),
                fix,
            );
        }
        Ok(())
    }

    /// Ownership records (`/run/vmctl/owners/NAME`, read by the polkit rule
    /// for `systemctl start vm@NAME`): one for every VM whose owner has a
    /// user name, none for anything else.
    fn owner_records(&self, report: &mut Report) -> Result<(), ManagerError> {
        let vms = self.registry().list()?;
        let dir = self.layout().runtime_dir.join(crate::authz::OWNERS_DIR);
        let present: HashSet<String> = dir_names(&dir).into_iter().collect();
        for spec in &vms {
            let wanted = crate::accounts::local_user_name(spec.owner_uid).map(|u| format!("{u}\n"));
            let path = dir.join(&spec.name);
            let actual = fs::read_to_string(&path).ok();
            if wanted.is_some() && actual != wanted && !self.registry().is_in_flight(&spec.name) {
                let fix = report
                    .repair
                    .then(|| self.publish_owner(spec).map_err(|e| e.to_string()));
                report.found(
                    "missing-owner-record",
                    Some(&spec.name),
                    Some(&path),
                    "the ownership record is missing or names someone else; rewritten".into(),
                    fix,
                );
            }
        }
        // Rows being created or removed are reported as such already.
        let known: HashSet<String> = self
            .registry()
            .store()
            .vms()?
            .into_iter()
            .map(|row| row.spec.name)
            .collect();
        for name in present
            .iter()
            .filter(|n| is_vm_name(n) && !known.contains(n.as_str()))
            .filter(|n| !self.registry().is_in_flight(n))
        {
            let fix = report
                .repair
                .then(|| self.withdraw_owner(name).map_err(|e| e.to_string()));
            report.found(
                "orphan-owner-record",
                Some(name),
                Some(&dir.join(name)),
                "an ownership record of no VM; removed".into(),
                fix,
            );
        }
        Ok(())
    }

    /// Undoes a create, whatever steps it got to: drop-ins, spec file,
    /// host key, disk and NSS record, then the row (last, so that a crash
    /// here is undone again at the next start). Failures are logged.
    pub(crate) async fn undo_create(&self, spec: &VmSpec) {
        let name = &spec.name;
        if let Some(systemd) = self.systemd() {
            if drop_in_dir(name).exists() {
                if let Err(e) = systemd.revert(&spec.unit()).await {
                    tracing::warn!("{name}: undo create: {e}");
                }
            }
        }
        if let Err(e) = nss_vmctl::hostdb::withdraw(&self.layout().hosts_dir(), name) {
            tracing::warn!("{name}: undo create: cannot withdraw its host name: {e}");
        }
        if let Err(e) = self.withdraw_owner(name) {
            tracing::warn!("{name}: undo create: cannot remove its ownership record: {e}");
        }
        for path in [
            self.registry().spec_file(name),
            self.layout().key_dir(name),
            self.layout().disk_dir(name),
        ] {
            if let Err(e) = remove_all(&path) {
                tracing::warn!("{name}: undo create: {e}");
            }
        }
        let tmp = self.registry().vms_dir().join(format!(".{name}.json.tmp"));
        let _ = fs::remove_file(tmp);
        // A new data volume left behind here (rows still 'creating') is
        // deleted by the volume pass of the next reconciliation.
        if let Err(e) = self.undo_data_volumes(name) {
            tracing::warn!("{name}: undo create: {e}");
        }
        if let Err(e) = self.registry().store().delete(name) {
            tracing::warn!("{name}: undo create: {e}");
        }
    }

    /// The steps of remove after the row says 'removing': stop the unit
    /// (waiting), forget its failed state, remove its drop-ins, then (once
    /// systemd, asked again, says it is down: a disk is never pulled from
    /// under a running VMM) its NSS record, disk, host key and spec file,
    /// and the row last. Repeatable: each step accepts that it was done.
    pub(crate) async fn finish_remove(&self, name: &str, unit: &str) -> Result<(), ManagerError> {
        if let Some(systemd) = self.systemd() {
            systemd.stop(unit).await?;
            systemd.reset_failed(unit).await?;
            systemd.revert(unit).await?;
            systemd.ensure_stopped(unit).await?;
        }
        if let Err(e) = nss_vmctl::hostdb::withdraw(&self.layout().hosts_dir(), name) {
            tracing::warn!("{name}: cannot withdraw its host name: {e}");
        }
        // Before the row goes: a record naming the old owner must not
        // outlive the VM (the systemd rule trusts it).
        self.withdraw_owner(name).map_err(|e| {
            ManagerError::internal(format!("{name}: cannot remove its ownership record: {e}"))
        })?;
        for path in [
            self.layout().disk_dir(name),
            self.layout().key_dir(name),
            self.registry().spec_file(name),
        ] {
            remove_all(&path).map_err(ManagerError::internal)?;
        }
        self.registry().store().delete(name)?;
        if let Err(e) = hostkeys::write_known_hosts(self.layout(), &self.registry().list()?) {
            tracing::warn!(
                "cannot rewrite {}: {e}",
                self.layout().known_hosts().display()
            );
        }
        Ok(())
    }
}

/// The drop-in directory systemd writes for VM `name`'s unit.
pub fn drop_in_dir(name: &str) -> PathBuf {
    Path::new(SYSTEM_CONTROL_DIR).join(format!("{}.d", unit_name(name)))
}

/// The names in `dir` not starting with a dot, sorted (a missing or
/// unreadable directory has none).
fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Removes a file or a directory tree; gone already is fine.
fn remove_all(path: &Path) -> Result<(), String> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Entries that are VM names: anything else under these directories is
/// not vmctld's to judge (or delete).
fn is_vm_name(name: &str) -> bool {
    validate_vm_name(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        registry::testing::{add, spec},
        store::VmState,
        Registry,
    };

    fn manager(dir: &Path) -> Manager {
        Manager::new(Registry::new(dir))
            .with_runtime_dir(dir.join("run"))
            .with_config(dir.join("vmctl.conf"))
    }

    fn kinds(findings: &[Finding]) -> Vec<(&'static str, Option<String>, bool)> {
        findings
            .iter()
            .map(|f| (f.kind, f.vm.clone(), f.repaired))
            .collect()
    }

    /// A VM's files as create makes them (disk, key dir, spec file,
    /// ownership record).
    fn make_files(m: &Manager, vm: &VmSpec) {
        m.publish_owner(vm).unwrap();
        fs::create_dir_all(m.layout().disk_dir(&vm.name)).unwrap();
        fs::write(m.layout().root_disk(&vm.name), b"disk").unwrap();
        fs::create_dir_all(m.layout().key_dir(&vm.name)).unwrap();
        fs::write(m.layout().host_key(&vm.name), b"key").unwrap();
        m.registry().write(vm).unwrap();
    }

    #[tokio::test]
    async fn a_clean_store_has_no_findings() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let vm = spec("a", 0);
        add(m.registry(), &vm);
        make_files(&m, &vm);
        assert_eq!(m.reconcile(false).await.unwrap(), []);
        assert_eq!(m.reconcile(true).await.unwrap(), []);
    }

    #[tokio::test]
    async fn interrupted_create_is_undone_and_remove_finished() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let store = m.registry().store();
        // "new": killed after its disk, key and spec were made.
        let new = store
            .insert_creating("new", 0, |_| Ok(spec("new", 0)))
            .unwrap();
        make_files(&m, &new);
        // "old": killed after its disk went, before its row did.
        let old = spec("old", 0);
        add(m.registry(), &old);
        make_files(&m, &old);
        assert!(store
            .transition("old", VmState::Ready, VmState::Removing)
            .unwrap());
        fs::remove_dir_all(m.layout().disk_dir("old")).unwrap();
        // "keep": a complete VM, untouched.
        let keep = spec("keep", 0);
        add(m.registry(), &keep);
        make_files(&m, &keep);

        // The report alone changes nothing.
        let report = m.reconcile(false).await.unwrap();
        assert_eq!(
            kinds(&report),
            [
                ("interrupted-create", Some("new".into()), false),
                ("interrupted-remove", Some("old".into()), false),
            ]
        );
        assert!(m.layout().disk_dir("new").exists());

        let repaired = m.reconcile(true).await.unwrap();
        assert_eq!(
            kinds(&repaired),
            [
                ("interrupted-create", Some("new".into()), true),
                ("interrupted-remove", Some("old".into()), true),
            ]
        );
        for name in ["new", "old"] {
            assert!(store.vm(name).unwrap().is_none(), "{name}");
            assert!(!m.layout().disk_dir(name).exists(), "{name}");
            assert!(!m.layout().key_dir(name).exists(), "{name}");
            assert!(!m.layout().spec_file(name).exists(), "{name}");
        }
        assert!(m.layout().root_disk("keep").exists());
        assert_eq!(m.registry().get("keep").unwrap(), Some(keep));
        assert_eq!(m.reconcile(false).await.unwrap(), []);
    }

    #[tokio::test]
    async fn orphans_and_missing_files_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let vm = spec("a", 0);
        add(m.registry(), &vm);
        make_files(&m, &vm);
        // The spec file is gone and the host key too.
        fs::remove_file(m.layout().spec_file("a")).unwrap();
        fs::remove_dir_all(m.layout().key_dir("a")).unwrap();
        // Leftovers of a VM that no longer exists.
        let gone = spec("gone", 0);
        make_files(&m, &gone);
        fs::remove_file(m.layout().spec_file("gone")).unwrap();
        nss_vmctl::hostdb::publish(
            &m.layout().hosts_dir(),
            "gone",
            "10.77.0.9".parse().unwrap(),
            None,
        )
        .unwrap();
        // Not a VM name: not vmctld's to delete.
        fs::write(m.layout().state_dir.join("disks/README.txt"), b"x").unwrap();

        let findings = m.reconcile(true).await.unwrap();
        let mut found = kinds(&findings);
        found.sort();
        assert_eq!(
            found,
            [
                ("missing-host-key", Some("a".into()), true),
                ("missing-spec-file", Some("a".into()), true),
                ("orphan-disk", Some("gone".into()), true),
                ("orphan-host-key", Some("gone".into()), true),
                ("orphan-name", Some("gone".into()), true),
                ("orphan-owner-record", Some("gone".into()), true),
            ],
            "{findings:#?}"
        );
        assert_eq!(m.registry().spec_file_contents("a").unwrap(), Some(vm));
        assert!(m.layout().host_key("a").exists());
        assert!(!m.layout().disk_dir("gone").exists());
        assert!(!m.layout().key_dir("gone").exists());
        assert!(!m.layout().hosts_dir().join("name/gone").exists());
        assert!(!m.layout().runtime_dir.join("owners/gone").exists());
        assert!(m.layout().state_dir.join("disks/README.txt").exists());
        assert_eq!(m.reconcile(false).await.unwrap(), []);
    }

    #[tokio::test]
    async fn vms_in_flight_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let vm = m
            .registry()
            .store()
            .insert_creating("busy", 0, |_| Ok(spec("busy", 0)))
            .unwrap();
        make_files(&m, &vm);
        let guard = m.registry().begin("busy");
        assert_eq!(m.reconcile(true).await.unwrap(), []);
        assert!(m.layout().disk_dir("busy").exists());
        drop(guard);
        assert_eq!(m.reconcile(true).await.unwrap().len(), 1);
        assert!(!m.layout().disk_dir("busy").exists());
    }

    #[tokio::test]
    async fn a_spec_file_from_before_the_store_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let old = spec("old", 1000);
        crate::registry::testing::write(
            dir.path(),
            "old.json",
            &serde_json::to_string(&old).unwrap(),
        );
        let m = manager(dir.path());
        let row = m.registry().store().vm("old").unwrap().unwrap();
        assert_eq!((row.spec, row.state), (old, VmState::Ready));
    }

    #[tokio::test]
    async fn doctor_needs_admin() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path())
            .with_authority(crate::authz::Authority::fixed([(1000, Action::ManageOwn)]));
        let e = m
            .doctor(&Caller::without_subject(1000), false)
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "PermissionDenied", "{e}");
        assert_eq!(m.doctor(&Caller::ROOT, false).await.unwrap(), []);
    }
}
