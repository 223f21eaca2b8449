//! The `shares` table: the users a VM is shared with (`vmctl share`),
//! whom the HTTPS proxy lets into it besides its owner.

use rusqlite::params;

use super::Store;
use crate::ManagerError;

impl Store {
    /// The uids VM `name` is shared with, in ascending order.
    pub fn shares(&self, name: &str) -> Result<Vec<u32>, ManagerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT uid FROM shares WHERE name = ?1 ORDER BY uid")
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([name], |r| r.get::<_, u32>(0))
            .and_then(Iterator::collect);
        rows.map_err(|e| self.error(e))
    }

    /// Shares VM `name` (which must exist) with `uid`; sharing again
    /// changes nothing.
    pub fn add_share(&self, name: &str, uid: u32) -> Result<(), ManagerError> {
        self.conn()
            .execute(
                "INSERT INTO shares (name, uid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![name, uid],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Stops sharing VM `name` with `uid`; whether it was shared.
    pub fn remove_share(&self, name: &str, uid: u32) -> Result<bool, ManagerError> {
        self.conn()
            .execute(
                "DELETE FROM shares WHERE name = ?1 AND uid = ?2",
                params![name, uid],
            )
            .map(|n| n > 0)
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::spec;

    #[test]
    fn shares_are_added_once_removed_and_go_with_the_vm() {
        let store = Store::in_memory().unwrap();
        store.adopt(&spec("blog", 1000)).unwrap();
        assert_eq!(store.shares("blog").unwrap(), Vec::<u32>::new());
        store.add_share("blog", 1002).unwrap();
        store.add_share("blog", 1001).unwrap();
        store.add_share("blog", 1001).unwrap();
        assert_eq!(store.shares("blog").unwrap(), [1001, 1002]);
        assert!(store.remove_share("blog", 1002).unwrap());
        assert!(!store.remove_share("blog", 1002).unwrap());
        assert_eq!(store.shares("blog").unwrap(), [1001]);
        store.delete("blog").unwrap();
        store.adopt(&spec("blog", 1000)).unwrap();
        assert_eq!(store.shares("blog").unwrap(), Vec::<u32>::new());
        // No share of a VM that does not exist.
        assert!(store.add_share("nope", 1001).is_err());
    }
}
