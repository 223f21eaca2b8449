//! Sharing a VM's site (`vmctl share NAME USER`): the users besides its
//! owner whom the HTTPS proxy lets into a private VM. A share opens the
//! site only; managing the VM stays with its owner (and admins).
//!
//! Shares are stored by uid ([`crate::store`], table `shares`) and shown
//! by user name. Sharing needs what managing the VM needs: manage-own for
//! its owner, manage-any for anybody else (who otherwise is told there is
//! no such VM).

use nix::unistd::User;

use crate::{accounts, Caller, Manager, ManagerError};

impl Manager {
    /// Shares VM `name` with `user` (a user name or a uid); the user
    /// names it is shared with now. Sharing again changes nothing.
    pub async fn share(
        &self,
        caller: &Caller,
        name: &str,
        user: &str,
    ) -> Result<Vec<String>, ManagerError> {
        self.manageable_unit(caller, name).await?;
        let uid = uid_of(user)?;
        let spec = self
            .registry()
            .get(name)?
            .ok_or_else(|| ManagerError::NoSuchVm { name: name.into() })?;
        if uid == spec.owner_uid {
            return Err(ManagerError::InvalidArgument {
                what: "user".into(),
                reason: format!("{user} owns {name}; share it with another user"),
            });
        }
        self.registry().store().add_share(name, uid)?;
        tracing::info!("{name}: shared with {user} (uid {uid})");
        self.shared_with(name)
    }

    /// Stops sharing VM `name` with `user`; the user names it is shared
    /// with now. A user it is not shared with is an error naming both.
    pub async fn unshare(
        &self,
        caller: &Caller,
        name: &str,
        user: &str,
    ) -> Result<Vec<String>, ManagerError> {
        self.manageable_unit(caller, name).await?;
        let uid = uid_of(user)?;
        if !self.registry().store().remove_share(name, uid)? {
            return Err(ManagerError::InvalidArgument {
                what: "user".into(),
                reason: format!("{name} is not shared with {user}; see `vmctl show {name}`"),
            });
        }
        tracing::info!("{name}: no longer shared with {user} (uid {uid})");
        self.shared_with(name)
    }

    /// The user names VM `name` is shared with (a uid without a name in
    /// decimal), in uid order.
    pub fn shared_with(&self, name: &str) -> Result<Vec<String>, ManagerError> {
        let uids = self.registry().store().shares(name)?;
        Ok(uids.into_iter().map(accounts::display_name).collect())
    }

    /// Whether `caller` is one of the users VM `name` is shared with.
    pub fn is_shared_with(&self, caller: &Caller, name: &str) -> Result<bool, ManagerError> {
        Ok(self.registry().store().shares(name)?.contains(&caller.uid))
    }
}

/// The uid of `user`: a user name (the host's user database, then the
/// accounts registration made) or a uid in decimal.
fn uid_of(user: &str) -> Result<u32, ManagerError> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    let found = User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .or_else(|| accounts::registered_uid(user));
    found.ok_or_else(|| ManagerError::InvalidArgument {
        what: "user".into(),
        reason: format!("{user:?}: no such user on this host (see `getent passwd`)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{registry::testing, Registry};

    fn manager_with(name: &str, owner: u32) -> (tempfile::TempDir, Manager) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        testing::add(&registry, &testing::spec(name, owner));
        (dir, Manager::new(registry))
    }

    #[tokio::test]
    async fn share_and_unshare() {
        let (_dir, m) = manager_with("blog", 1000);
        // root exists on every host; 4242 is given as a uid.
        assert_eq!(
            m.share(&Caller::ROOT, "blog", "root").await.unwrap(),
            ["root"]
        );
        let now = m.share(&Caller::ROOT, "blog", "4242").await.unwrap();
        assert_eq!(now, ["root", "4242"]);
        assert!(m.is_shared_with(&Caller::ROOT, "blog").unwrap());
        assert_eq!(
            m.unshare(&Caller::ROOT, "blog", "0").await.unwrap(),
            ["4242"]
        );
        assert!(!m.is_shared_with(&Caller::ROOT, "blog").unwrap());

        let e = m.unshare(&Caller::ROOT, "blog", "root").await.unwrap_err();
        assert!(
            matches!(e, ManagerError::InvalidArgument { ref reason, .. } if reason.contains("not shared with root")),
            "{e:?}"
        );
        let e = m
            .share(&Caller::ROOT, "blog", "no-such-user-here")
            .await
            .unwrap_err();
        assert!(
            matches!(e, ManagerError::InvalidArgument { ref what, .. } if what == "user"),
            "{e:?}"
        );
        let e = m.share(&Caller::ROOT, "blog", "1000").await.unwrap_err();
        assert!(
            matches!(e, ManagerError::InvalidArgument { ref reason, .. } if reason.contains("owns blog")),
            "{e:?}"
        );
        let e = m.share(&Caller::ROOT, "nope", "root").await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::NoSuchVm {
                name: "nope".into()
            }
        );
    }

    #[tokio::test]
    async fn a_user_it_is_shared_with_may_log_in_but_not_share() {
        let (_dir, m) = manager_with("blog", 1000);
        let bob = Caller::without_subject(1001);
        let e = m.issue_login_token(&bob, "blog").await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::NoSuchVm {
                name: "blog".into()
            }
        );
        m.share(&Caller::ROOT, "blog", "1001").await.unwrap();
        let token = m.issue_login_token(&bob, "blog").await.unwrap();
        assert_eq!(
            m.redeem_login_token(&Caller::ROOT, &token).unwrap(),
            Some((1001, crate::accounts::display_name(1001)))
        );
        let route = m.resolve_route(&Caller::ROOT, "blog").await.unwrap();
        assert_eq!(route.shared_uids, [1001]);
        // The share opens the site, not the VM's management.
        let e = m.share(&bob, "blog", "1002").await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::NoSuchVm {
                name: "blog".into()
            }
        );
        assert_eq!(
            m.shared_with("blog").unwrap(),
            [crate::accounts::display_name(1001)]
        );
    }
}
