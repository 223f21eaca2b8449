//! Reconciliation of data volumes: the `volumes` rows against the pool.
//!
//! - a 'creating' row of no create in progress (vmctld died between making
//!   the volume and the create's end, and the VM's own undo did not get to
//!   it): its file and row are removed (`interrupted-volume-create`);
//! - a 'deleting' row of no VM (a `volume rm` or `rm --delete-data` cut
//!   short): the delete is finished (`interrupted-volume-delete`); one
//!   still attached to a ready VM (an `rm --delete-data` cut short before
//!   the VM's removal began) goes back to 'ready';
//! - a 'ready' row without its file: reported (`missing-volume`), not
//!   invented;
//! - a file in the pool without a row (an install from before volume
//!   rows): adopted, owned by the VM naming it in its spec or else by root
//!   (`unknown-volume`).

use std::collections::HashSet;

use super::Report;
use crate::{
    storage::Volume,
    store::{VmState, VolumeRow, VolumeState},
    Manager, ManagerError,
};

impl Manager {
    pub(super) fn reconcile_volumes(&self, report: &mut Report) -> Result<(), ManagerError> {
        let store = self.registry().store();
        let storage = self.storage()?;
        let vms = store.vms()?;
        let busy = |row: &VolumeRow| {
            self.registry().is_in_flight(&row.name)
                || row
                    .vm
                    .as_deref()
                    .is_some_and(|vm| self.registry().is_in_flight(vm))
        };
        let rows = store.volumes()?;
        for row in rows.iter().filter(|row| !busy(row)) {
            let name = row.name.as_str();
            let path = storage.path(&Volume::Data(name.to_string()));
            let vm_state = row
                .vm
                .as_deref()
                .and_then(|vm| vms.iter().find(|r| r.spec.name == vm))
                .map(|r| r.state);
            match (row.state, vm_state) {
                // Its create is still journaled: undone with the VM.
                (VolumeState::Creating, Some(VmState::Creating)) => {}
                (VolumeState::Creating, _) => {
                    let fix = report
                        .repair
                        .then(|| self.finish_volume_delete(name).map_err(|e| e.to_string()));
                    report.found(
                        "interrupted-volume-create",
                        row.vm.as_deref(),
                        Some(&path),
                        format!("data volume {name:?} of a create that was cut short; deleted"),
                        fix,
                    );
                }
                (VolumeState::Deleting, None) => {
                    let fix = report
                        .repair
                        .then(|| self.finish_volume_delete(name).map_err(|e| e.to_string()));
                    report.found(
                        "interrupted-volume-delete",
                        None,
                        Some(&path),
                        format!("the delete of data volume {name:?} was cut short; finished"),
                        fix,
                    );
                }
                // Its VM's removal is journaled: finished first, then this.
                (VolumeState::Deleting, Some(VmState::Removing)) => {}
                (VolumeState::Deleting, Some(_)) => {
                    let fix = report.repair.then(|| {
                        store
                            .transition_volume(name, VolumeState::Deleting, VolumeState::Ready)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    });
                    report.found(
                        "interrupted-volume-delete",
                        row.vm.as_deref(),
                        Some(&path),
                        format!(
                            "data volume {name:?} was to be deleted with its VM, which was \
                             never removed; kept"
                        ),
                        fix,
                    );
                }
                (VolumeState::Ready, _) => {
                    if !path.exists() {
                        report.found(
                            "missing-volume",
                            row.vm.as_deref(),
                            Some(&path),
                            format!(
                                "data volume {name:?} is missing from the pool; restore it or \
                                 delete it with `vmctl volume rm {name}`"
                            ),
                            None,
                        );
                    }
                }
            }
        }
        self.adopt_volume_files(report, &rows)
    }

    /// Data volumes in the pool that have no row.
    fn adopt_volume_files(
        &self,
        report: &mut Report,
        rows: &[VolumeRow],
    ) -> Result<(), ManagerError> {
        let store = self.registry().store();
        let known: HashSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let specs = self.registry().list()?;
        for info in self.storage()?.list()? {
            let Volume::Data(name) = &info.volume else {
                continue;
            };
            if known.contains(name.as_str()) || self.registry().is_in_flight(name) {
                continue;
            }
            let user = specs
                .iter()
                .find(|s| s.data_volume.as_deref() == Some(name.as_str()));
            let row = VolumeRow {
                name: name.clone(),
                owner_uid: user.map_or(0, |s| s.owner_uid),
                size: info.size_bytes,
                vm: user.map(|s| s.name.clone()),
                created: crate::store::now(),
                state: VolumeState::Ready,
            };
            let fix = report
                .repair
                .then(|| store.adopt_volume(&row).map_err(|e| e.to_string()));
            report.found(
                "unknown-volume",
                row.vm.as_deref(),
                Some(&info.path),
                format!(
                    "data volume {name:?} has no store row; recorded as {}",
                    match &row.vm {
                        Some(vm) => format!("attached to VM {vm:?}, owned by its owner"),
                        None => "kept, owned by root".into(),
                    }
                ),
                fix,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::{
        registry::testing::{add, spec},
        store::{VolumeClaim, VolumeRow, VolumeState},
        Manager, Registry,
    };

    fn manager(dir: &std::path::Path) -> Manager {
        Manager::new(Registry::new(dir))
            .with_runtime_dir(dir.join("run"))
            .with_config(dir.join("vmctl.conf"))
    }

    fn kinds(m: &[super::super::Finding]) -> Vec<(&'static str, bool)> {
        let mut kinds: Vec<_> = m.iter().map(|f| (f.kind, f.repaired)).collect();
        kinds.sort();
        kinds
    }

    /// vmctld killed inside a create, after the data volume was made:
    /// the VM and its new volume are undone; a kept volume it was only
    /// attaching stays, kept.
    #[tokio::test]
    async fn an_interrupted_create_loses_its_new_data_volume_only() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let store = m.registry().store();
        let volumes = dir.path().join("volumes");
        fs::create_dir_all(&volumes).unwrap();
        let new = VolumeClaim::New {
            name: "fresh".into(),
            size: 1 << 20,
        };
        store
            .insert_claiming("fresh", 0, Some(&new), |_| Ok(spec("fresh", 0)))
            .unwrap();
        fs::write(volumes.join("fresh.raw"), b"half made").unwrap();
        store
            .adopt_volume(&VolumeRow {
                name: "old".into(),
                owner_uid: 0,
                size: 4,
                vm: None,
                created: 1,
                state: VolumeState::Ready,
            })
            .unwrap();
        fs::write(volumes.join("old.raw"), b"data").unwrap();
        let attach = VolumeClaim::Attach { name: "old".into() };
        store
            .insert_claiming("reuse", 0, Some(&attach), |_| Ok(spec("reuse", 0)))
            .unwrap();

        let report = m.reconcile(false).await.unwrap();
        assert_eq!(
            kinds(&report),
            [("interrupted-create", false), ("interrupted-create", false)]
        );
        m.reconcile(true).await.unwrap();
        assert!(store.volume("fresh").unwrap().is_none());
        assert!(!volumes.join("fresh.raw").exists());
        let old = store.volume("old").unwrap().unwrap();
        assert_eq!((old.vm, old.state), (None, VolumeState::Ready));
        assert_eq!(fs::read(volumes.join("old.raw")).unwrap(), b"data");
        assert_eq!(m.reconcile(false).await.unwrap(), []);
    }

    #[tokio::test]
    async fn volume_rows_and_files_are_brought_into_line() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let store = m.registry().store();
        let volumes = dir.path().join("volumes");
        fs::create_dir_all(&volumes).unwrap();
        let row = |name: &str, vm: Option<&str>, state| VolumeRow {
            name: name.into(),
            owner_uid: 1000,
            size: 4,
            vm: vm.map(str::to_string),
            created: 1,
            state,
        };
        // A VM from before volume rows, its volume a bare file.
        let mut db = spec("db", 1000);
        db.data_volume = Some("dbdata".into());
        add(m.registry(), &db);
        fs::write(volumes.join("dbdata.raw"), b"data").unwrap();
        // A stray file of no VM; a delete cut short; a lost file.
        fs::write(volumes.join("stray.raw"), b"data").unwrap();
        store
            .adopt_volume(&row("gone", None, VolumeState::Ready))
            .unwrap();
        store
            .transition_volume("gone", VolumeState::Ready, VolumeState::Deleting)
            .unwrap();
        fs::write(volumes.join("gone.raw"), b"data").unwrap();
        store
            .adopt_volume(&row("lost", None, VolumeState::Ready))
            .unwrap();

        let found = m.reconcile(true).await.unwrap();
        let mut lines: Vec<String> = found
            .iter()
            .filter(|f| f.kind.contains("volume"))
            .map(|f| f.to_string())
            .collect();
        lines.sort();
        let vol = |n: &str| volumes.join(format!("{n}.raw")).display().to_string();
        assert_eq!(
            lines,
            [
                format!(
                    "interrupted-volume-delete path={}: the delete of data volume \"gone\" \
                     was cut short; finished (repaired)",
                    vol("gone")
                ),
                format!(
                    "missing-volume path={}: data volume \"lost\" is missing from the pool; \
                     restore it or delete it with `vmctl volume rm lost` (not repaired)",
                    vol("lost")
                ),
                format!(
                    "unknown-volume path={}: data volume \"stray\" has no store row; \
                     recorded as kept, owned by root (repaired)",
                    vol("stray")
                ),
                format!(
                    "unknown-volume vm=db path={}: data volume \"dbdata\" has no store row; \
                     recorded as attached to VM \"db\", owned by its owner (repaired)",
                    vol("dbdata")
                ),
            ]
        );
        assert!(store.volume("gone").unwrap().is_none());
        assert!(!volumes.join("gone.raw").exists());
        let dbdata = store.volume("dbdata").unwrap().unwrap();
        assert_eq!(
            (dbdata.owner_uid, dbdata.vm.as_deref(), dbdata.size),
            (1000, Some("db"), 4)
        );
        assert_eq!(store.volume("stray").unwrap().unwrap().owner_uid, 0);
    }
}
