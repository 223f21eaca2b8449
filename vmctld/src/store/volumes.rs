//! The `volumes` table: one row per persistent data volume, with its owner,
//! size, the VM it is attached to and the state of the operation on it.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::{now, Snapshot, Store};
use crate::ManagerError;

/// Where a data volume is in its life, as far as the store knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// Made by a create that has not finished; undone with it.
    Creating,
    /// Complete (attached or kept).
    Ready,
    /// A delete was asked for; its file may still be there.
    Deleting,
}

impl VolumeState {
    /// The value in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Deleting => "deleting",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "creating" => Some(Self::Creating),
            "ready" => Some(Self::Ready),
            "deleting" => Some(Self::Deleting),
            _ => None,
        }
    }
}

/// One stored data volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// The volume's name (a file or LV name component).
    pub name: String,
    /// Who holds it: may attach it to a new VM and delete it; its size
    /// counts in this user's disk quota.
    pub owner_uid: u32,
    /// Its size in bytes (as the guest sees it).
    pub size: u64,
    /// The VM it is attached to; `None`: kept.
    pub vm: Option<String>,
    /// When it was made (seconds since the epoch).
    pub created: i64,
    /// The state of the operation on it.
    pub state: VolumeState,
}

/// The data volume a create reserves in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeClaim {
    /// A new volume `name` of `size` bytes, stored as 'creating'.
    New {
        /// Its name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The kept volume `name`, attached to the new VM (and held by its
    /// owner from then on).
    Attach {
        /// Its name.
        name: String,
    },
}

const COLUMNS: &str = "name, owner_uid, size, vm, created, state";

fn row_to_volume(row: &Row<'_>) -> rusqlite::Result<VolumeRow> {
    let state: String = row.get(5)?;
    let size: i64 = row.get(2)?;
    Ok(VolumeRow {
        name: row.get(0)?,
        owner_uid: row.get(1)?,
        size: size.max(0) as u64,
        vm: row.get(3)?,
        created: row.get(4)?,
        state: VolumeState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                5,
                rusqlite::types::Type::Text,
                format!("bad volume state {state:?}").into(),
            )
        })?,
    })
}

pub(super) fn all(conn: &Connection) -> rusqlite::Result<Vec<VolumeRow>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM volumes ORDER BY name"))?;
    let rows = stmt.query_map([], row_to_volume)?;
    rows.collect()
}

fn one(conn: &Connection, name: &str) -> rusqlite::Result<Option<VolumeRow>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM volumes WHERE name = ?1"),
        [name],
        row_to_volume,
    )
    .optional()
}

fn size_to_sql(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Records `claim` for the VM `vm` of `owner_uid`, inside the create's
/// transaction (after the VM's row, which the volume references).
pub(super) fn claim(
    tx: &Transaction<'_>,
    claim: &VolumeClaim,
    vm: &str,
    owner_uid: u32,
) -> Result<(), ClaimError> {
    match claim {
        VolumeClaim::New { name, size } => {
            if one(tx, name)?.is_some() {
                return Err(ClaimError::Exists(name.clone()));
            }
            tx.execute(
                "INSERT INTO volumes (name, owner_uid, size, vm, created, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'creating')",
                params![name, owner_uid, size_to_sql(*size), vm, now()],
            )?;
        }
        VolumeClaim::Attach { name } => {
            let n = tx.execute(
                "UPDATE volumes SET vm = ?2, owner_uid = ?3 \
                 WHERE name = ?1 AND vm IS NULL AND state = 'ready'",
                params![name, vm, owner_uid],
            )?;
            if n != 1 {
                return Err(ClaimError::Unavailable(name.clone()));
            }
        }
    }
    Ok(())
}

/// Why a claim failed.
#[derive(Debug)]
pub(super) enum ClaimError {
    /// A volume of that name exists already.
    Exists(String),
    /// The volume is missing, attached or being deleted.
    Unavailable(String),
    /// The database failed.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for ClaimError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl Store {
    /// Every data volume, sorted by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRow>, ManagerError> {
        all(&self.conn()).map_err(|e| self.error(e))
    }

    /// The data volume `name`, in whatever state.
    pub fn volume(&self, name: &str) -> Result<Option<VolumeRow>, ManagerError> {
        one(&self.conn(), name).map_err(|e| self.error(e))
    }

    /// Stores a volume found in the pool without a row (an install from
    /// before volume rows, or reconciliation's adoption) as 'ready'.
    pub fn adopt_volume(&self, row: &VolumeRow) -> Result<(), ManagerError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO volumes (name, owner_uid, size, vm, created, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'ready')",
                params![
                    row.name,
                    row.owner_uid,
                    size_to_sql(row.size),
                    row.vm,
                    row.created
                ],
            )
            .map(drop)
            .map_err(|e| self.error(e))
        })
    }

    /// Moves volume `name` from state `from` to `to`; false when it was
    /// not in `from` (or is gone).
    pub fn transition_volume(
        &self,
        name: &str,
        from: VolumeState,
        to: VolumeState,
    ) -> Result<bool, ManagerError> {
        let n = self
            .conn()
            .execute(
                "UPDATE volumes SET state = ?3 WHERE name = ?1 AND state = ?2",
                params![name, from.as_str(), to.as_str()],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Marks the kept (unattached, ready) volume `name` 'deleting': the
    /// first step of deleting it. False when it is not kept.
    pub fn begin_volume_delete(&self, name: &str) -> Result<bool, ManagerError> {
        let n = self
            .conn()
            .execute(
                "UPDATE volumes SET state = 'deleting' \
                 WHERE name = ?1 AND vm IS NULL AND state = 'ready'",
                [name],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Deletes volume `name`'s row (its file is gone).
    pub fn delete_volume(&self, name: &str) -> Result<(), ManagerError> {
        self.conn()
            .execute("DELETE FROM volumes WHERE name = ?1", [name])
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Sets volume `name`'s size to `size` in one write transaction, after
    /// `check` (the quota check) has accepted it given the volume and a
    /// [`Snapshot`] of its owner's holdings. Returns the old row.
    pub fn resize_volume(
        &self,
        name: &str,
        size: u64,
        check: impl FnOnce(&VolumeRow, &Snapshot) -> Result<(), ManagerError>,
    ) -> Result<VolumeRow, ManagerError> {
        self.write(|tx| {
            let row = one(tx, name)
                .map_err(|e| self.error(e))?
                .ok_or_else(|| ManagerError::internal(format!("volume {name}: no store row")))?;
            let snapshot = self.snapshot_in(tx, row.owner_uid)?;
            check(&row, &snapshot)?;
            tx.execute(
                "UPDATE volumes SET size = ?2 WHERE name = ?1",
                params![name, size_to_sql(size)],
            )
            .map_err(|e| self.error(e))?;
            Ok(row)
        })
    }

    /// Sets volume `name`'s recorded size back (a resize whose file
    /// operation failed).
    pub fn set_volume_size(&self, name: &str, size: u64) -> Result<(), ManagerError> {
        self.conn()
            .execute(
                "UPDATE volumes SET size = ?2 WHERE name = ?1",
                params![name, size_to_sql(size)],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::spec;
    use crate::store::VmState;

    fn new(name: &str, size: u64) -> VolumeClaim {
        VolumeClaim::New {
            name: name.into(),
            size,
        }
    }

    #[test]
    fn a_volume_is_created_with_its_vm_and_kept_when_the_vm_row_goes() {
        let store = Store::in_memory().unwrap();
        store
            .insert_claiming("a", 1000, Some(&new("a", 1 << 30)), |_| Ok(spec("a", 1000)))
            .unwrap();
        let row = store.volume("a").unwrap().unwrap();
        assert_eq!(
            (row.owner_uid, row.size, row.vm.as_deref(), row.state),
            (1000, 1 << 30, Some("a"), VolumeState::Creating)
        );
        assert!(store.mark_created("a").unwrap());
        assert_eq!(
            store.volume("a").unwrap().unwrap().state,
            VolumeState::Ready
        );
        assert_eq!(store.vm("a").unwrap().unwrap().state, VmState::Ready);
        // The VM row goes: the volume stays, kept.
        store.delete("a").unwrap();
        let kept = store.volume("a").unwrap().unwrap();
        assert_eq!((kept.vm, kept.state), (None, VolumeState::Ready));
    }

    #[test]
    fn a_claim_that_fails_stores_nothing() {
        let store = Store::in_memory().unwrap();
        store
            .insert_claiming("a", 1000, Some(&new("v", 1 << 30)), |_| Ok(spec("a", 1000)))
            .unwrap();
        // Same volume name: refused, and the VM row of b rolled back.
        let e = store
            .insert_claiming("b", 1000, Some(&new("v", 1 << 30)), |_| Ok(spec("b", 1000)))
            .unwrap_err();
        assert_eq!(e.short_name(), "InvalidArgument", "{e}");
        assert!(store.vm("b").unwrap().is_none());
        // Attached already: refused likewise.
        let attach = VolumeClaim::Attach { name: "v".into() };
        let e = store
            .insert_claiming("b", 1000, Some(&attach), |_| Ok(spec("b", 1000)))
            .unwrap_err();
        assert!(e.to_string().contains("in use by VM \"a\""), "{e}");
        assert!(store.vm("b").unwrap().is_none());
        // Kept (its VM gone): b takes it over, owner and all.
        store.mark_created("a").unwrap();
        store.delete("a").unwrap();
        store
            .insert_claiming("b", 1001, Some(&attach), |_| Ok(spec("b", 1001)))
            .unwrap();
        let row = store.volume("v").unwrap().unwrap();
        assert_eq!((row.vm.as_deref(), row.owner_uid), (Some("b"), 1001));
    }

    #[test]
    fn delete_and_resize() {
        let store = Store::in_memory().unwrap();
        store
            .adopt_volume(&VolumeRow {
                name: "k".into(),
                owner_uid: 1000,
                size: 100,
                vm: None,
                created: 1,
                state: VolumeState::Ready,
            })
            .unwrap();
        let old = store
            .resize_volume("k", 200, |row, snap| {
                assert_eq!(row.size, 100);
                assert_eq!(snap.volumes.len(), 1);
                Ok(())
            })
            .unwrap();
        assert_eq!(old.size, 100);
        assert_eq!(store.volume("k").unwrap().unwrap().size, 200);
        let e = store
            .resize_volume("k", 300, |_, _| Err(ManagerError::internal("over quota")))
            .unwrap_err();
        assert!(e.to_string().contains("over quota"));
        assert_eq!(store.volume("k").unwrap().unwrap().size, 200);
        assert!(store.begin_volume_delete("k").unwrap());
        assert!(!store.begin_volume_delete("k").unwrap());
        store.delete_volume("k").unwrap();
        assert!(store.volumes().unwrap().is_empty());
    }
}
