//! The `publications` and `login_tokens` tables: what the HTTPS proxy
//! needs from vmctld (how a VM is published, who a login link is for).

use rusqlite::{params, OptionalExtension};

use super::{now, Store};
use crate::ManagerError;

/// The port a VM is published on when nobody said otherwise.
pub const DEFAULT_PORT: u16 = 80;

/// How a VM is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication {
    /// The VM's port the proxy forwards to.
    pub port: u16,
    /// Open to everyone (else to its owner only).
    pub public: bool,
}

impl Default for Publication {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            public: false,
        }
    }
}

impl Store {
    /// How VM `name` is published (the default when never set).
    pub fn publication(&self, name: &str) -> Result<Publication, ManagerError> {
        let row = self
            .conn()
            .query_row(
                "SELECT port, public FROM publications WHERE name = ?1",
                [name],
                |r| {
                    Ok(Publication {
                        port: r.get(0)?,
                        public: r.get::<_, i64>(1)? != 0,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))?;
        Ok(row.unwrap_or_default())
    }

    /// Stores how VM `name` (which must exist) is published.
    pub fn set_publication(&self, name: &str, p: Publication) -> Result<(), ManagerError> {
        self.conn()
            .execute(
                "INSERT INTO publications (name, port, public) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET port = ?2, public = ?3",
                params![name, p.port, p.public as i64],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Records a login token by its hash for `uid`, valid until `expires`
    /// (seconds since the epoch); expired tokens are dropped on the way.
    pub fn add_login_token(&self, hash: &str, uid: u32, expires: i64) -> Result<(), ManagerError> {
        self.write(|tx| {
            tx.execute("DELETE FROM login_tokens WHERE expires <= ?1", [now()])
                .map_err(|e| self.error(e))?;
            tx.execute(
                "INSERT INTO login_tokens (hash, uid, expires) VALUES (?1, ?2, ?3)",
                params![hash, uid, expires],
            )
            .map_err(|e| self.error(e))?;
            Ok(())
        })
    }

    /// Takes the token with `hash`: its uid if it exists and has not
    /// expired. It is gone afterwards either way (single use).
    pub fn take_login_token(&self, hash: &str) -> Result<Option<u32>, ManagerError> {
        self.conn()
            .query_row(
                "DELETE FROM login_tokens WHERE hash = ?1 RETURNING uid, expires",
                [hash],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map(|row| {
                row.filter(|(_, expires)| *expires > now())
                    .map(|(uid, _)| uid)
            })
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::spec;

    #[test]
    fn publication_defaults_updates_and_goes_with_the_vm() {
        let store = Store::in_memory().unwrap();
        store.adopt(&spec("blog", 1000)).unwrap();
        assert_eq!(store.publication("blog").unwrap(), Publication::default());
        let p = Publication {
            port: 8080,
            public: true,
        };
        store.set_publication("blog", p).unwrap();
        assert_eq!(store.publication("blog").unwrap(), p);
        store.delete("blog").unwrap();
        store.adopt(&spec("blog", 1001)).unwrap();
        assert_eq!(store.publication("blog").unwrap(), Publication::default());
        // No publication for a VM that does not exist.
        assert!(store.set_publication("nope", p).is_err());
    }

    #[test]
    fn login_tokens_are_single_use_and_expire() {
        let store = Store::in_memory().unwrap();
        store.add_login_token("h1", 1000, now() + 60).unwrap();
        store.add_login_token("h2", 1001, now() - 1).unwrap();
        assert_eq!(store.take_login_token("h1").unwrap(), Some(1000));
        assert_eq!(store.take_login_token("h1").unwrap(), None);
        assert_eq!(store.take_login_token("h2").unwrap(), None);
        assert_eq!(store.take_login_token("nope").unwrap(), None);
    }
}
