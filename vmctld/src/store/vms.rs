//! The `vms` table: one row per VM with its allocations and the state of
//! the operation on it.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Row, Transaction};
use vmctl_api::spec::VmSpec;

use super::{
    now,
    volumes::{self, ClaimError, VolumeClaim, VolumeRow},
    QuotaOverride, Store,
};
use crate::ManagerError;

/// Where a VM is in its life, as far as the store knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Create has reserved the row; its files may be partly made.
    Creating,
    /// The VM is complete.
    Ready,
    /// Remove has begun; its files may be partly gone.
    Removing,
}

impl VmState {
    /// The value in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Removing => "removing",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "creating" => Some(Self::Creating),
            "ready" => Some(Self::Ready),
            "removing" => Some(Self::Removing),
            _ => None,
        }
    }
}

/// One stored VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// Its definition (what the spec file is written from).
    pub spec: VmSpec,
    /// The state of the operation on it.
    pub state: VmState,
    /// When it was created (seconds since the epoch).
    pub created: i64,
}

/// What a create decides from, read inside its write transaction: every
/// stored VM (whatever its state: all hold their allocations), every data
/// volume and the owner's quota override.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every VM in the store.
    pub vms: Vec<VmSpec>,
    /// Every data volume in the store.
    pub volumes: Vec<VolumeRow>,
    /// The override of the new VM's owner, if one is set.
    pub quota: Option<QuotaOverride>,
}

const COLUMNS: &str = "spec, state, created";

fn row_to_vm(row: &Row<'_>) -> rusqlite::Result<VmRow> {
    let json: String = row.get(0)?;
    let state: String = row.get(1)?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
    };
    Ok(VmRow {
        spec: serde_json::from_str(&json).map_err(|e| bad(format!("bad spec JSON: {e}")))?,
        state: VmState::parse(&state).ok_or_else(|| bad(format!("bad state {state:?}")))?,
        created: row.get(2)?,
    })
}

/// What `List` shows of a stored VM, read from the row's own columns:
/// no spec JSON to parse, which was most of a `List` of 1,000 VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSummary {
    /// The VM's name.
    pub name: String,
    /// The uid that owns it.
    pub owner_uid: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Its IPv4 address, if it has a NIC.
    pub ipv4: Option<String>,
    /// Its IPv6 address, if it has a NIC.
    pub ipv6: Option<String>,
    /// Its MAC address, if it has a NIC.
    pub mac: Option<String>,
}

fn all(tx: &rusqlite::Connection) -> rusqlite::Result<Vec<VmRow>> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM vms ORDER BY name"))?;
    let rows = stmt.query_map([], row_to_vm)?;
    rows.collect()
}

fn insert(tx: &Transaction<'_>, spec: &VmSpec, state: VmState) -> rusqlite::Result<()> {
    let json = serde_json::to_string(spec)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let net = spec.network.as_ref();
    tx.execute(
        "INSERT INTO vms (name, id, owner_uid, cid, ipv4, ipv6, mac, vcpus, memory, disk, \
         image, spec, created, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
         ?12, ?13, ?14)",
        params![
            spec.name,
            spec.id,
            spec.owner_uid,
            spec.cid,
            net.map(|n| n.ipv4.to_string()),
            net.map(|n| n.ipv6.to_string()),
            net.map(|n| n.mac.clone()),
            spec.vcpus,
            spec.memory_bytes as i64,
            spec.disk_bytes as i64,
            spec.image,
            json,
            now(),
            state.as_str(),
        ],
    )
    .map(drop)
}

/// A constraint violation names the allocation that collided.
fn insert_error(store: &Store, spec: &VmSpec, e: rusqlite::Error) -> ManagerError {
    if let rusqlite::Error::SqliteFailure(err, Some(message)) = &e {
        if err.code == rusqlite::ErrorCode::ConstraintViolation {
            if message.contains("vms.name") {
                return ManagerError::VmExists {
                    name: spec.name.clone(),
                };
            }
            return ManagerError::internal(format!(
                "{}: allocation collides with another VM ({message})",
                spec.name
            ));
        }
    }
    store.error(e)
}

impl Store {
    /// Reserves a new VM: in one write transaction, refuses an existing
    /// name, lets `make` decide the spec (quota check, CID and address
    /// allocation) from a [`Snapshot`] no other create can change
    /// meanwhile, and inserts it as [`VmState::Creating`].
    pub fn insert_creating(
        &self,
        name: &str,
        owner_uid: u32,
        make: impl FnOnce(&Snapshot) -> Result<VmSpec, ManagerError>,
    ) -> Result<VmSpec, ManagerError> {
        self.insert_claiming(name, owner_uid, None, make)
    }

    /// [`Store::insert_creating`] that also records the data volume
    /// `claim` in the same transaction: a new one as 'creating' (undone
    /// with the VM), or a kept one attached to the new VM.
    pub fn insert_claiming(
        &self,
        name: &str,
        owner_uid: u32,
        claim: Option<&VolumeClaim>,
        make: impl FnOnce(&Snapshot) -> Result<VmSpec, ManagerError>,
    ) -> Result<VmSpec, ManagerError> {
        self.write(|tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM vms WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(|e| self.error(e))?;
            if exists.is_some() {
                return Err(ManagerError::VmExists { name: name.into() });
            }
            let snapshot = self.snapshot_in(tx, owner_uid)?;
            let spec = make(&snapshot)?;
            insert(tx, &spec, VmState::Creating).map_err(|e| insert_error(self, &spec, e))?;
            if let Some(claim) = claim {
                volumes::claim(tx, claim, &spec.name, spec.owner_uid)
                    .map_err(|e| self.claim_error(&snapshot, e))?;
            }
            Ok(spec)
        })
    }

    /// Everything a quota check of `owner_uid` reads, inside `tx`.
    pub(super) fn snapshot_in(
        &self,
        tx: &Transaction<'_>,
        owner_uid: u32,
    ) -> Result<Snapshot, ManagerError> {
        Ok(Snapshot {
            vms: all(tx)
                .map_err(|e| self.error(e))?
                .into_iter()
                .map(|row| row.spec)
                .collect(),
            volumes: volumes::all(tx).map_err(|e| self.error(e))?,
            quota: Self::quota_in(tx, owner_uid).map_err(|e| self.error(e))?,
        })
    }

    fn claim_error(&self, snapshot: &Snapshot, e: ClaimError) -> ManagerError {
        let invalid = |reason: String| ManagerError::InvalidArgument {
            what: "data_volume".into(),
            reason,
        };
        match e {
            ClaimError::Exists(name) => invalid(format!(
                "a data volume {name:?} exists already (kept from an earlier VM?): attach it \
                 with --data-volume {name}, or delete it with `vmctl volume rm {name}`"
            )),
            ClaimError::Unavailable(name) => {
                match snapshot.volumes.iter().find(|v| v.name == name) {
                    Some(VolumeRow { vm: Some(vm), .. }) => {
                        invalid(format!("data volume {name:?} is in use by VM {vm:?}"))
                    }
                    Some(row) => invalid(format!(
                        "data volume {name:?} is being {}; try again later",
                        if row.state == volumes::VolumeState::Creating {
                            "created"
                        } else {
                            "deleted"
                        }
                    )),
                    None => invalid(format!(
                        "there is no data volume {name:?} (see `vmctl volume list`)"
                    )),
                }
            }
            ClaimError::Sql(e) => self.error(e),
        }
    }

    /// The last step of a create: VM `name` and the data volume it made
    /// become 'ready' together. False when its row was not 'creating'.
    pub fn mark_created(&self, name: &str) -> Result<bool, ManagerError> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE vms SET state = 'ready' WHERE name = ?1 AND state = 'creating'",
                    [name],
                )
                .map_err(|e| self.error(e))?;
            tx.execute(
                "UPDATE volumes SET state = 'ready' WHERE vm = ?1 AND state = 'creating'",
                [name],
            )
            .map_err(|e| self.error(e))?;
            Ok(n == 1)
        })
    }

    /// Stores `spec` as a complete VM (the import of a spec file that has
    /// no row: an install from before the store).
    pub fn adopt(&self, spec: &VmSpec) -> Result<(), ManagerError> {
        self.write(|tx| insert(tx, spec, VmState::Ready).map_err(|e| insert_error(self, spec, e)))
    }

    /// The VM `name`, in whatever state.
    pub fn vm(&self, name: &str) -> Result<Option<VmRow>, ManagerError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE name = ?1"),
                [name],
                row_to_vm,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Every VM, sorted by name.
    pub fn vms(&self) -> Result<Vec<VmRow>, ManagerError> {
        all(&self.conn()).map_err(|e| self.error(e))
    }

    /// Every VM not being created, sorted by name, as [`VmSummary`]s
    /// (cheaper than [`Store::vms`]). Read again only after a change to
    /// the database: with 1,000 VMs the query took about 1 ms of each
    /// `List`, which is most of what `List` may cost.
    pub fn summaries(&self) -> Result<Arc<[VmSummary]>, ManagerError> {
        let conn = self.conn();
        let version = super::version_of(&conn).map_err(|e| self.error(e))?;
        let mut cached = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, summaries)) = cached.as_ref() {
            if *at == version {
                return Ok(summaries.clone());
            }
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, owner_uid, vcpus, memory, ipv4, ipv6, mac FROM vms \
                 WHERE state != 'creating' ORDER BY name",
            )
            .map_err(|e| self.error(e))?;
        let summaries: Arc<[VmSummary]> = stmt
            .query_map([], |r| {
                Ok(VmSummary {
                    name: r.get(0)?,
                    owner_uid: r.get(1)?,
                    vcpus: r.get(2)?,
                    memory_bytes: r.get::<_, i64>(3)? as u64,
                    ipv4: r.get(4)?,
                    ipv6: r.get(5)?,
                    mac: r.get(6)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.error(e))?;
        *cached = Some((version, summaries.clone()));
        Ok(summaries)
    }

    /// The names of every VM (cheaper than [`Store::vms`]).
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM vms")
            .map_err(|e| self.error(e))?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.error(e));
        names
    }

    /// Moves VM `name` from state `from` to `to`; false when it was not in
    /// `from` (or is gone), so two removes cannot both proceed.
    pub fn transition(&self, name: &str, from: VmState, to: VmState) -> Result<bool, ManagerError> {
        let n = self
            .conn()
            .execute(
                "UPDATE vms SET state = ?3 WHERE name = ?1 AND state = ?2",
                params![name, from.as_str(), to.as_str()],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Replaces the spec of the ready VM `name` by what `change` makes of
    /// it, given a [`Snapshot`] for a quota check of its owner, in one
    /// write transaction (the `disk` column follows the spec). Returns the
    /// new spec; the caller rewrites the spec file from it.
    pub fn update_spec(
        &self,
        name: &str,
        change: impl FnOnce(&VmSpec, &Snapshot) -> Result<VmSpec, ManagerError>,
    ) -> Result<VmSpec, ManagerError> {
        self.write(|tx| {
            let row = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM vms WHERE name = ?1"),
                    [name],
                    row_to_vm,
                )
                .optional()
                .map_err(|e| self.error(e))?
                .filter(|row| row.state == VmState::Ready)
                .ok_or_else(|| ManagerError::NoSuchVm { name: name.into() })?;
            let snapshot = self.snapshot_in(tx, row.spec.owner_uid)?;
            let spec = change(&row.spec, &snapshot)?;
            if spec.name != row.spec.name || spec.owner_uid != row.spec.owner_uid {
                return Err(ManagerError::internal(format!(
                    "{name}: an update may not change the name or owner"
                )));
            }
            let json = serde_json::to_string(&spec).map_err(ManagerError::internal)?;
            tx.execute(
                "UPDATE vms SET spec = ?2, disk = ?3, image = ?4 WHERE name = ?1",
                params![name, json, spec.disk_bytes as i64, spec.image],
            )
            .map_err(|e| self.error(e))?;
            Ok(spec)
        })
    }

    /// Deletes VM `name`'s row, freeing its name, CID and addresses.
    pub fn delete(&self, name: &str) -> Result<(), ManagerError> {
        self.conn()
            .execute("DELETE FROM vms WHERE name = ?1", [name])
            .map(drop)
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::spec;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use vmctl_api::spec::VmNetwork;

    fn networked(name: &str, cid: u32, host: u8) -> VmSpec {
        let mut s = spec(name, 1000);
        s.id = format!("{:032x}", cid);
        s.cid = cid;
        s.network = Some(VmNetwork {
            ipv4: Ipv4Addr::new(10, 77, 0, host),
            ipv4_prefix: 16,
            ipv6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, host.into()),
            ipv6_prefix: 64,
            mac: crate::addresses::mac_for_cid(cid),
            gateway4: Ipv4Addr::new(10, 77, 0, 1),
            gateway6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1),
        });
        s
    }

    #[test]
    fn insert_transition_delete() {
        let store = Store::in_memory().unwrap();
        let a = store
            .insert_creating("a", 1000, |snap| {
                assert!(snap.vms.is_empty());
                Ok(networked("a", 3, 2))
            })
            .unwrap();
        let row = store.vm("a").unwrap().unwrap();
        assert_eq!((row.spec, row.state), (a.clone(), VmState::Creating));
        assert!(store
            .transition("a", VmState::Creating, VmState::Ready)
            .unwrap());
        assert!(!store
            .transition("a", VmState::Creating, VmState::Ready)
            .unwrap());
        let e = store
            .insert_creating("a", 1000, |_| Ok(networked("a", 4, 3)))
            .unwrap_err();
        assert_eq!(e, ManagerError::VmExists { name: "a".into() });
        store
            .insert_creating("b", 1000, |snap| {
                assert_eq!(snap.vms, std::slice::from_ref(&a));
                Ok(networked("b", 4, 3))
            })
            .unwrap();
        store.delete("a").unwrap();
        let names: Vec<_> = store
            .vms()
            .unwrap()
            .into_iter()
            .map(|r| r.spec.name)
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn summaries_match_the_specs_and_skip_creates() {
        let store = Store::in_memory().unwrap();
        let a = store
            .insert_creating("a", 1000, |_| Ok(networked("a", 3, 2)))
            .unwrap();
        store
            .transition("a", VmState::Creating, VmState::Ready)
            .unwrap();
        let mut b = spec("b", 1001);
        b.cid = 4;
        b.id = format!("{:032x}", 4);
        b.memory_bytes = 5 << 30;
        store.adopt(&b).unwrap();
        store
            .insert_creating("c", 1000, |_| Ok(networked("c", 5, 5)))
            .unwrap();
        let net = a.network.as_ref().unwrap();
        assert_eq!(
            *store.summaries().unwrap(),
            [
                VmSummary {
                    name: "a".into(),
                    owner_uid: a.owner_uid,
                    vcpus: a.vcpus,
                    memory_bytes: a.memory_bytes,
                    ipv4: Some(net.ipv4.to_string()),
                    ipv6: Some(net.ipv6.to_string()),
                    mac: Some(net.mac.clone()),
                },
                VmSummary {
                    name: "b".into(),
                    owner_uid: 1001,
                    vcpus: b.vcpus,
                    memory_bytes: 5 << 30,
                    ipv4: None,
                    ipv6: None,
                    mac: None,
                },
            ]
        );
    }

    #[test]
    fn summaries_follow_every_change_of_either_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::DB_FILE);
        let store = Store::open(&path).unwrap();
        let other = Store::open(&path).unwrap();
        let names = |store: &Store| -> Vec<String> {
            store
                .summaries()
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        store.adopt(&spec("a", 0)).unwrap();
        assert_eq!(names(&store), ["a"]);
        // Unchanged: the very same rows, not read again.
        let first = store.summaries().unwrap();
        assert!(Arc::ptr_eq(&first, &store.summaries().unwrap()));
        // A change through this connection...
        store.adopt(&spec("b", 0)).unwrap();
        assert_eq!(names(&store), ["a", "b"]);
        // ...and one committed by another connection (another process).
        other.adopt(&spec("c", 0)).unwrap();
        assert_eq!(names(&store), ["a", "b", "c"]);
        store.delete("b").unwrap();
        assert_eq!(names(&store), ["a", "c"]);
        other.delete("a").unwrap();
        assert_eq!(names(&store), ["c"]);
    }

    #[test]
    fn unique_constraints_catch_a_colliding_allocation() {
        let store = Store::in_memory().unwrap();
        store
            .insert_creating("a", 0, |_| Ok(networked("a", 3, 2)))
            .unwrap();
        // Each case collides in exactly one allocation.
        let mut same_cid = networked("b", 3, 3);
        same_cid.network.as_mut().unwrap().mac = crate::addresses::mac_for_cid(4);
        let mut same_ipv4 = networked("c", 5, 5);
        same_ipv4.network.as_mut().unwrap().ipv4 = Ipv4Addr::new(10, 77, 0, 2);
        let mut same_ipv6 = networked("d", 6, 6);
        same_ipv6.network.as_mut().unwrap().ipv6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
        let mut same_mac = networked("e", 7, 7);
        same_mac.network.as_mut().unwrap().mac = crate::addresses::mac_for_cid(3);
        for (bad, column) in [
            (same_cid, "vms.cid"),
            (same_ipv4, "vms.ipv4"),
            (same_ipv6, "vms.ipv6"),
            (same_mac, "vms.mac"),
        ] {
            let name = bad.name.clone();
            let e = store
                .insert_creating(&name, 0, move |_| Ok(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("collides") && e.contains(column), "{e}");
            assert!(store.vm(&name).unwrap().is_none());
        }
        // VMs without a network do not collide on NULL addresses.
        let mut x = spec("x", 0);
        x.id = "1".repeat(32);
        x.cid = 10;
        let mut y = spec("y", 0);
        y.id = "2".repeat(32);
        y.cid = 11;
        store.insert_creating("x", 0, |_| Ok(x)).unwrap();
        store.insert_creating("y", 0, |_| Ok(y)).unwrap();
    }

    #[test]
    fn a_refused_create_leaves_no_row() {
        let store = Store::in_memory().unwrap();
        let e = store
            .insert_creating("a", 0, |_| {
                Err(ManagerError::QuotaExceeded {
                    resource: "vms".into(),
                    limit: 0,
                    requested: 1,
                })
            })
            .unwrap_err();
        assert_eq!(e.short_name(), "QuotaExceeded");
        assert!(store.vms().unwrap().is_empty());
    }
}
