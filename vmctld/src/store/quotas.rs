//! The `quotas` table (per-user overrides of the configured defaults) and
//! reading the `ssh_keys` table (see [`super::ssh_keys`]).

use rusqlite::{params, Connection, OptionalExtension};

use super::Store;
use crate::ManagerError;

/// A user's quota override: each limit that is set replaces the default of
/// `[Quota]` in vmctl.conf; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaOverride {
    /// Number of VMs.
    pub vms: Option<u64>,
    /// vCPUs over all VMs.
    pub vcpus: Option<u64>,
    /// Memory in bytes over all VMs.
    pub memory: Option<u64>,
    /// Disk in bytes over all VMs.
    pub disk: Option<u64>,
}

fn to_sql(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn from_sql(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

impl Store {
    pub(super) fn quota_in(conn: &Connection, uid: u32) -> rusqlite::Result<Option<QuotaOverride>> {
        conn.query_row(
            "SELECT max_vms, max_vcpus, max_memory, max_disk FROM quotas WHERE uid = ?1",
            [uid],
            |r| {
                Ok(QuotaOverride {
                    vms: from_sql(r.get(0)?),
                    vcpus: from_sql(r.get(1)?),
                    memory: from_sql(r.get(2)?),
                    disk: from_sql(r.get(3)?),
                })
            },
        )
        .optional()
    }

    /// The quota override of `uid`, if one is set.
    pub fn quota(&self, uid: u32) -> Result<Option<QuotaOverride>, ManagerError> {
        Self::quota_in(&self.conn(), uid).map_err(|e| self.error(e))
    }

    /// Sets the override of `uid` to `quota`; an override with no limit
    /// set is deleted (the user is back on the defaults).
    pub fn set_quota(&self, uid: u32, quota: &QuotaOverride) -> Result<(), ManagerError> {
        let conn = self.conn();
        let result = if *quota == QuotaOverride::default() {
            conn.execute("DELETE FROM quotas WHERE uid = ?1", [uid])
        } else {
            conn.execute(
                "INSERT INTO quotas (uid, max_vms, max_vcpus, max_memory, max_disk) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (uid) DO UPDATE SET \
                 max_vms = ?2, max_vcpus = ?3, max_memory = ?4, max_disk = ?5",
                params![
                    uid,
                    to_sql(quota.vms),
                    to_sql(quota.vcpus),
                    to_sql(quota.memory),
                    to_sql(quota.disk)
                ],
            )
        };
        result.map(drop).map_err(|e| self.error(e))
    }

    /// Stores an SSH public key of `uid` (once; adding it again, or a key
    /// another user has, is a no-op: see [`Store::add_user_ssh_key`]).
    pub fn add_ssh_key(&self, uid: u32, key: &str) -> Result<(), ManagerError> {
        self.add_user_ssh_key(uid, key).map(drop)
    }

    /// The SSH public keys of `uid`, oldest first.
    pub fn ssh_keys(&self, uid: u32) -> Result<Vec<String>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT CASE comment WHEN '' THEN key ELSE key || ' ' || comment END \
                 FROM ssh_keys WHERE uid = ?1 ORDER BY added, key",
            )
            .map_err(|e| self.error(e))?;
        let keys = stmt
            .query_map([uid], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.error(e));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_set_replaced_and_cleared() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.quota(1000).unwrap(), None);
        let q = QuotaOverride {
            vms: Some(2),
            memory: Some(u64::MAX),
            ..Default::default()
        };
        store.set_quota(1000, &q).unwrap();
        let stored = store.quota(1000).unwrap().unwrap();
        assert_eq!(stored.vms, Some(2));
        assert_eq!(stored.vcpus, None);
        assert_eq!(stored.memory, Some(i64::MAX as u64), "clamped, not wrapped");
        store
            .set_quota(
                1000,
                &QuotaOverride {
                    vcpus: Some(4),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(store.quota(1000).unwrap().unwrap().vms, None, "replaced");
        store.set_quota(1000, &QuotaOverride::default()).unwrap();
        assert_eq!(store.quota(1000).unwrap(), None);
        assert_eq!(store.quota(1001).unwrap(), None);
    }

    #[test]
    fn ssh_keys_per_user() {
        let store = Store::in_memory().unwrap();
        store.add_ssh_key(1000, "ssh-ed25519 AAAA a").unwrap();
        store.add_ssh_key(1000, "ssh-ed25519 AAAA a").unwrap();
        store.add_ssh_key(1001, "ssh-ed25519 BBBB b").unwrap();
        assert_eq!(store.ssh_keys(1000).unwrap(), ["ssh-ed25519 AAAA a"]);
    }
}
