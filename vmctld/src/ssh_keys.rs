//! Users' SSH public keys in the store: `vmctl ssh-key add/list/rm` (each
//! user their own keys, with manage-own, like their own VMs) and the SSH
//! gateway's lookup of whose a key is (`io.vmctl.Gateway.LookupSSHKey`).
//!
//! A key opens exactly one account: adding a key another user registered
//! is refused (else the gateway could not tell whose the key is).

use vmctl_api::ssh_keys::validate_public_key;

use crate::{authz::Action, store::KeyAdded, Caller, Manager, ManagerError};

fn invalid_key(reason: impl Into<String>) -> ManagerError {
    ManagerError::InvalidArgument {
        what: "SSH key".into(),
        reason: reason.into(),
    }
}

impl Manager {
    /// Registers public key `line` for the caller.
    pub async fn add_ssh_key(&self, caller: &Caller, line: &str) -> Result<(), ManagerError> {
        self.authorize(caller, Action::ManageOwn).await?;
        let line = validate_public_key(line).map_err(invalid_key)?;
        match self
            .registry()
            .store()
            .add_user_ssh_key(caller.uid, &line)?
        {
            KeyAdded::Added => {
                tracing::info!("uid {} registered an SSH key", caller.uid);
                Ok(())
            }
            KeyAdded::AlreadyYours => Ok(()),
            KeyAdded::Taken => Err(invalid_key(
                "this key is registered to another user (a key opens one account); \
                 make a new one with ssh-keygen",
            )),
        }
    }

    /// The caller's registered keys, oldest first.
    pub async fn list_ssh_keys(&self, caller: &Caller) -> Result<Vec<String>, ManagerError> {
        self.authorize(caller, Action::ManageOwn).await?;
        self.registry().store().ssh_keys(caller.uid)
    }

    /// Removes the caller's key `line` (its comment does not matter).
    pub async fn remove_ssh_key(&self, caller: &Caller, line: &str) -> Result<(), ManagerError> {
        self.authorize(caller, Action::ManageOwn).await?;
        if self
            .registry()
            .store()
            .remove_user_ssh_key(caller.uid, line.trim())?
        {
            tracing::info!("uid {} removed an SSH key", caller.uid);
            Ok(())
        } else {
            Err(invalid_key(
                "you have no such key (see: vmctl ssh-key list)",
            ))
        }
    }

    /// Whose key `line` is: the uid and user name (for gateways only; the
    /// caller checks that).
    pub fn lookup_ssh_key(&self, line: &str) -> Result<Option<(u32, String)>, ManagerError> {
        let Some(uid) = self.registry().store().ssh_key_owner(line.trim())? else {
            return Ok(None);
        };
        let name = crate::accounts::user_name(uid).unwrap_or_else(|| uid.to_string());
        Ok(Some((uid, name)))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Caller, Manager, ManagerError, Registry};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e me@host";

    #[tokio::test]
    async fn keys_are_added_listed_looked_up_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::new(Registry::new(dir.path()));
        let root = Caller::ROOT;
        manager.add_ssh_key(&root, KEY).await.unwrap();
        assert_eq!(manager.list_ssh_keys(&root).await.unwrap(), [KEY]);
        let (uid, name) = manager.lookup_ssh_key(KEY).unwrap().unwrap();
        assert_eq!((uid, name.as_str()), (0, "root"));
        let e = manager.add_ssh_key(&root, "nope").await.unwrap_err();
        assert!(
            matches!(&e, ManagerError::InvalidArgument { what, .. } if what == "SSH key"),
            "{e:?}"
        );
        manager.remove_ssh_key(&root, KEY).await.unwrap();
        assert_eq!(manager.lookup_ssh_key(KEY).unwrap(), None);
        let e = manager.remove_ssh_key(&root, KEY).await.unwrap_err();
        assert!(e.to_string().contains("no such key"), "{e}");
    }

    #[tokio::test]
    async fn a_caller_without_polkit_cannot_add_keys() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::new(Registry::new(dir.path()));
        let e = manager
            .add_ssh_key(&Caller::without_subject(4242), KEY)
            .await
            .unwrap_err();
        assert!(matches!(e, ManagerError::PermissionDenied { .. }), "{e:?}");
    }
}
