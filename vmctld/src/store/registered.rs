//! Accounts made by registration through the SSH gateway (see
//! [`crate::registration`]): store-only, named to the rest of vmctld by
//! [`crate::accounts`], which learns them here.

use rusqlite::{params, OptionalExtension};

use super::{now, ssh_keys::split, Store};
use crate::ManagerError;

/// Tells [`crate::accounts`] the names of the registered accounts.
pub(super) fn announce(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT uid, name FROM registered_users")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (uid, name) = row?;
        crate::accounts::remember_registered(uid, &name);
    }
    Ok(())
}

impl Store {
    /// Records the new account `uid` (`name`) and its first key `line`,
    /// both or neither. Fails when the key opens an account already.
    pub fn add_registered_user(
        &self,
        uid: u32,
        name: &str,
        line: &str,
    ) -> Result<(), ManagerError> {
        let (key, comment) = split(line);
        self.write(|tx| {
            let owner: Option<u32> = tx
                .query_row("SELECT uid FROM ssh_keys WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| self.error(e))?;
            if let Some(owner) = owner {
                return Err(ManagerError::InvalidArgument {
                    what: "SSH key".into(),
                    reason: format!("this key opens the account of uid {owner} already"),
                });
            }
            let created = now();
            tx.execute(
                "INSERT INTO registered_users (uid, name, key, created) VALUES (?1, ?2, ?3, ?4)",
                params![uid, name, key, created],
            )
            .and_then(|_| {
                tx.execute(
                    "INSERT INTO ssh_keys (key, uid, comment, added) VALUES (?1, ?2, ?3, ?4)",
                    params![key, uid, comment, created],
                )
            })
            .map_err(|e| self.error(e))?;
            Ok(())
        })?;
        crate::accounts::remember_registered(uid, name);
        Ok(())
    }

    /// The highest uid registration gave out.
    pub fn last_registered_uid(&self) -> Result<Option<u32>, ManagerError> {
        self.conn()
            .query_row("SELECT max(uid) FROM registered_users", [], |r| r.get(0))
            .map_err(|e| self.error(e))
    }

    /// How many accounts registration made.
    pub fn registered_user_count(&self) -> Result<u32, ManagerError> {
        self.conn()
            .query_row("SELECT count(*) FROM registered_users", [], |r| r.get(0))
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e";

    #[test]
    fn a_registered_user_gets_the_key_and_is_counted() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.registered_user_count().unwrap(), 0);
        store
            .add_registered_user(1500, "carol", &format!("{A} carol@laptop"))
            .unwrap();
        assert_eq!(store.ssh_key_owner(A).unwrap(), Some(1500));
        assert_eq!(store.registered_user_count().unwrap(), 1);
        assert_eq!(store.last_registered_uid().unwrap(), Some(1500));
        assert_eq!(crate::accounts::user_name(1500).as_deref(), Some("carol"));
        // The same key again: refused, nothing added.
        let e = store.add_registered_user(1501, "dave", A).unwrap_err();
        assert!(e.to_string().contains("uid 1500"), "{e}");
        assert_eq!(store.registered_user_count().unwrap(), 1);
    }
}
