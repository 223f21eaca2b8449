//! The `ssh_keys` table: users' SSH public keys, by key data (migration
//! 0002). A key opens exactly one user's account on the SSH gateway.

use rusqlite::{params, OptionalExtension};

use super::{now, Store};
use crate::ManagerError;

/// A key split into the stored parts: `TYPE BASE64` and the comment.
pub(super) fn split(line: &str) -> (String, String) {
    let mut fields = line.split_ascii_whitespace();
    let kind = fields.next().unwrap_or_default();
    let data = fields.next().unwrap_or_default();
    let comment = fields.collect::<Vec<_>>().join(" ");
    (format!("{kind} {data}"), comment)
}

/// What adding a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAdded {
    /// The key is new.
    Added,
    /// The user had it already (nothing changed).
    AlreadyYours,
    /// Another user has it (nothing changed).
    Taken,
}

impl Store {
    /// Stores the key `line` (a checked `TYPE BASE64 [COMMENT]`) for `uid`.
    pub fn add_user_ssh_key(&self, uid: u32, line: &str) -> Result<KeyAdded, ManagerError> {
        let (key, comment) = split(line);
        self.write(|tx| {
            let owner: Option<u32> = tx
                .query_row("SELECT uid FROM ssh_keys WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| self.error(e))?;
            match owner {
                Some(owner) if owner == uid => Ok(KeyAdded::AlreadyYours),
                Some(_) => Ok(KeyAdded::Taken),
                None => {
                    tx.execute(
                        "INSERT INTO ssh_keys (key, uid, comment, added) VALUES (?1, ?2, ?3, ?4)",
                        params![key, uid, comment, now()],
                    )
                    .map_err(|e| self.error(e))?;
                    Ok(KeyAdded::Added)
                }
            }
        })
    }

    /// Removes `uid`'s key `line` (the comment does not matter); false
    /// when `uid` has no such key.
    pub fn remove_user_ssh_key(&self, uid: u32, line: &str) -> Result<bool, ManagerError> {
        let (key, _) = split(line);
        self.conn()
            .execute(
                "DELETE FROM ssh_keys WHERE key = ?1 AND uid = ?2",
                params![key, uid],
            )
            .map(|n| n > 0)
            .map_err(|e| self.error(e))
    }

    /// The uid whose key is `line` (`TYPE BASE64`, a comment is ignored).
    pub fn ssh_key_owner(&self, line: &str) -> Result<Option<u32>, ManagerError> {
        let (key, _) = split(line);
        self.conn()
            .query_row("SELECT uid FROM ssh_keys WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e";

    #[test]
    fn a_key_belongs_to_one_user() {
        let store = Store::in_memory().unwrap();
        let line = format!("{A} alice@laptop");
        assert_eq!(
            store.add_user_ssh_key(1000, &line).unwrap(),
            KeyAdded::Added
        );
        assert_eq!(
            store.add_user_ssh_key(1000, A).unwrap(),
            KeyAdded::AlreadyYours
        );
        assert_eq!(store.add_user_ssh_key(1001, A).unwrap(), KeyAdded::Taken);
        assert_eq!(store.ssh_key_owner(A).unwrap(), Some(1000));
        assert_eq!(
            store.ssh_key_owner(&format!("{A} other comment")).unwrap(),
            Some(1000)
        );
        assert_eq!(store.ssh_keys(1000).unwrap(), [line]);
        assert!(!store.remove_user_ssh_key(1001, A).unwrap(), "not bob's");
        assert!(store.remove_user_ssh_key(1000, A).unwrap());
        assert_eq!(store.ssh_key_owner(A).unwrap(), None);
    }

    #[test]
    fn migration_2_keeps_old_rows_split_and_first_owner_wins() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("migrations/0001_initial.sql"))
            .unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO ssh_keys VALUES (1000, '{A} a@b c', 1);\
             INSERT INTO ssh_keys VALUES (1001, '{A}', 2);\
             INSERT INTO ssh_keys VALUES (1001, 'ssh-rsa BBBB', 3);"
        ))
        .unwrap();
        conn.execute_batch(include_str!("migrations/0002_ssh_keys.sql"))
            .unwrap();
        let rows: Vec<(String, u32, String)> = conn
            .prepare("SELECT key, uid, comment FROM ssh_keys ORDER BY added")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (A.to_string(), 1000, "a@b c".to_string()),
                ("ssh-rsa BBBB".to_string(), 1001, String::new()),
            ]
        );
    }
}
