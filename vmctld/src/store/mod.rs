//! The store: vmctld's durable state in one SQLite database
//! (`<state directory>/vmctl.db`, WAL).
//!
//! It holds what no other program reads: owners, CID and address
//! allocations, the state of every create and remove (the journal that
//! [`crate::reconcile`] reads after a crash), quota overrides and users'
//! SSH keys. Files that systemd, the launcher or a guest read (the spec
//! JSON, unit drop-ins, disks, host keys, NSS records) stay files, written
//! from the rows.
//!
//! The schema is versioned by `PRAGMA user_version`; each file under
//! `migrations/` is applied once, in order, in its own transaction.

mod publications;
mod quotas;
mod registered;
mod shares;
mod ssh_keys;
mod vms;
mod volumes;

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rusqlite::{Connection, TransactionBehavior};

pub use publications::Publication;
pub use quotas::QuotaOverride;
pub use ssh_keys::KeyAdded;
pub use vms::{Snapshot, VmRow, VmState, VmSummary};
pub use volumes::{VolumeClaim, VolumeRow, VolumeState};

use crate::ManagerError;

/// The database file under the state directory.
pub const DB_FILE: &str = "vmctl.db";

/// How long a write waits for another writer before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`Version`] of the database `conn` sees.
fn version_of(conn: &Connection) -> rusqlite::Result<Version> {
    // data_version moves with the commits of other connections only; this
    // connection's own changes are counted apart.
    let others = conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?;
    Ok(Version {
        others,
        own: conn.total_changes(),
    })
}

/// The migrations, in order: `(version, name, SQL)`. A new table is a new
/// file here with the next number, never an edit of an applied one.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (2, "ssh_keys", include_str!("migrations/0002_ssh_keys.sql")),
    (
        3,
        "publications",
        include_str!("migrations/0003_publications.sql"),
    ),
    (4, "volumes", include_str!("migrations/0004_volumes.sql")),
    (
        5,
        "registered_users",
        include_str!("migrations/0005_registered_users.sql"),
    ),
    (6, "shares", include_str!("migrations/0006_shares.sql")),
];

/// The schema version this vmctld writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The open store. Calls are short and serialised on one connection.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The last [`Store::summaries`] and the [`Version`] it was read at.
    summaries: Mutex<Option<(Version, Arc<[VmSummary]>)>>,
}

/// Which state of the database a read saw: it differs after any change,
/// through this connection or another one (see [`Store::version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// `PRAGMA data_version`: moves with commits of other connections.
    others: i64,
    /// Rows this connection inserted, updated or deleted, ever.
    own: u64,
}

impl Store {
    /// Opens (creating if needed, directory 0700) the database at `path`
    /// and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, ManagerError> {
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| store_error(path, e))?;
        }
        let conn = Connection::open(path).map_err(|e| store_error(path, e))?;
        Self::setup(conn, path)
    }

    /// A store that lives in memory (tests).
    pub fn in_memory() -> Result<Self, ManagerError> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| store_error(path, e))?;
        Self::setup(conn, path)
    }

    fn setup(mut conn: Connection, path: &Path) -> Result<Self, ManagerError> {
        let err = |e| store_error(path, e);
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // WAL: readers never block the writer. FULL: a committed create
        // survives a power cut, not only a killed vmctld.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(err)?;
        migrate(&mut conn)
            .map_err(|e| ManagerError::internal(format!("{}: {e}", path.display())))?;
        registered::announce(&conn).map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            summaries: Mutex::default(),
        })
    }

    /// The database's current [`Version`]; two equal versions mean no row
    /// changed in between (a rolled back change may still move it).
    pub fn version(&self) -> Result<Version, ManagerError> {
        version_of(&self.conn()).map_err(|e| self.error(e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, ManagerError> {
        self.conn()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.error(e))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open
        // (it rolls back on drop), so the connection is still good.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a write transaction taken at once (`BEGIN IMMEDIATE`),
    /// committed when `f` succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, ManagerError>,
    ) -> Result<T, ManagerError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(value)
    }

    fn error(&self, e: rusqlite::Error) -> ManagerError {
        store_error(&self.path, e)
    }
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::internal(format!("store {}: {e}", path.display()))
}

/// Applies the migrations newer than the database's `user_version`, each
/// in its own transaction with the version bump. A database newer than
/// this vmctld is refused rather than misread.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if current > SCHEMA_VERSION {
        return Err(format!(
            "schema version {current} is newer than this vmctld's ({SCHEMA_VERSION}); \
             a downgrade needs a backup of the older database"
        ));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, ..)| *v > current) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", version))
            .and_then(|()| tx.commit())
            .map_err(|e| format!("migration {version:04}_{name}: {e}"))?;
        tracing::info!("store: applied migration {version:04}_{name}");
    }
    Ok(())
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_new_database_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/vmctl.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
        // Opening again applies nothing (a second CREATE TABLE would fail).
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (version, ..)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmctl.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let e = Store::open(&path).unwrap_err().to_string();
        assert!(e.contains("newer than this vmctld"), "{e}");
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A table in the way: migration 1 fails part way.
        conn.execute_batch("CREATE TABLE ssh_keys (x INTEGER)")
            .unwrap();
        let e = migrate(&mut conn).unwrap_err();
        assert!(e.contains("0001_initial"), "{e}");
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
        let vms: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'vms'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            vms, 0,
            "the vms table of the failed migration was rolled back"
        );
    }
}
