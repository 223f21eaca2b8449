//! What the HTTPS proxy (`vmctl-https`) needs from vmctld: how each VM is
//! published (`vmctl publish`), one-time login links (`vmctl login`), and
//! the two gateway-only questions the proxy asks (`ResolveRoute`,
//! `RedeemLoginToken` on `io.vmctl.Gateway`).
//!
//! A login token is 32 random bytes (hex) handed to the caller once; the
//! store keeps only its SHA-256, so a copy of the database opens nothing.
//! It is good for [`LOGIN_TOKEN_LIFETIME`] and one redemption.

use std::{io::Read, net::Ipv4Addr, time::Duration};

use sha2::{Digest, Sha256};

use crate::{store::Publication, Caller, Manager, ManagerError};

/// How long a login link works.
pub const LOGIN_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Where the proxy sends a VM's visitors, and who they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The VM's IPv4 address on the bridge (none without a network).
    pub ipv4: Option<Ipv4Addr>,
    /// How it is published.
    pub publication: Publication,
    /// Its owner.
    pub owner_uid: u32,
    /// The users it is shared with (`vmctl share`).
    pub shared_uids: Vec<u32>,
    /// Its state (see `VM.state`).
    pub state: String,
}

impl Manager {
    /// Changes how VM `name` is published (manage-own, or manage-any for
    /// another user's VM): `port` and `public` when given, the rest kept.
    pub async fn publish(
        &self,
        caller: &Caller,
        name: &str,
        port: Option<u16>,
        public: Option<bool>,
    ) -> Result<Publication, ManagerError> {
        self.manageable_unit(caller, name).await?;
        if port == Some(0) {
            return Err(ManagerError::InvalidArgument {
                what: "port".into(),
                reason: "0 is not a port; give 1 to 65535".into(),
            });
        }
        let store = self.registry().store();
        let old = store.publication(name)?;
        let new = Publication {
            port: port.unwrap_or(old.port),
            public: public.unwrap_or(old.public),
        };
        store.set_publication(name, new)?;
        Ok(new)
    }

    /// A one-time login token for the caller, for the HTTPS proxy's
    /// `https://NAME.<domain>/.vmctl/login?token=...` (the caller must be
    /// able to manage VM `name`, or be one it is shared with; the session
    /// is the caller's own).
    pub async fn issue_login_token(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<String, ManagerError> {
        match self.manageable_unit(caller, name).await {
            Ok(_) => {}
            // Told apart from a VM nobody may see only by the share.
            Err(e @ ManagerError::NoSuchVm { .. }) => {
                if !self.is_shared_with(caller, name)? {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| ManagerError::internal(format!("/dev/urandom: {e}")))?;
        let token = hex(&bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let expires = now + LOGIN_TOKEN_LIFETIME.as_secs() as i64;
        self.registry()
            .store()
            .add_login_token(&token_hash(&token), caller.uid, expires)?;
        Ok(token)
    }

    /// Gateway only: where VM `name` is and who may see it.
    pub async fn resolve_route(&self, caller: &Caller, name: &str) -> Result<Route, ManagerError> {
        self.require_gateway(caller)?;
        let missing = || ManagerError::NoSuchVm { name: name.into() };
        vmctl_api::validate_vm_name(name).map_err(|_| missing())?;
        let spec = self.registry().get(name)?.ok_or_else(missing)?;
        Ok(Route {
            ipv4: spec.network.as_ref().map(|n| n.ipv4),
            publication: self.registry().store().publication(name)?,
            owner_uid: spec.owner_uid,
            shared_uids: self.registry().store().shares(name)?,
            state: self.vm_state(name).await,
        })
    }

    /// Gateway only: the uid and user name a login token was issued to;
    /// `None` when it is unknown, used or expired (it is used up now).
    pub fn redeem_login_token(
        &self,
        caller: &Caller,
        token: &str,
    ) -> Result<Option<(u32, String)>, ManagerError> {
        self.require_gateway(caller)?;
        let Some(uid) = self
            .registry()
            .store()
            .take_login_token(&token_hash(token))?
        else {
            return Ok(None);
        };
        let user = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        Ok(Some((uid, user)))
    }
}

fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    async fn publish_keeps_what_is_not_given_and_resolves() {
        let (_dir, m) = manager_with("blog", 1000);
        let p = m
            .publish(&Caller::ROOT, "blog", Some(8080), None)
            .await
            .unwrap();
        assert_eq!(
            p,
            Publication {
                port: 8080,
                public: false
            }
        );
        let p = m
            .publish(&Caller::ROOT, "blog", None, Some(true))
            .await
            .unwrap();
        assert_eq!(
            p,
            Publication {
                port: 8080,
                public: true
            }
        );
        let route = m.resolve_route(&Caller::ROOT, "blog").await.unwrap();
        assert_eq!(route.publication, p);
        assert_eq!(route.owner_uid, 1000);
        let e = m
            .publish(&Caller::ROOT, "blog", Some(0), None)
            .await
            .unwrap_err();
        assert!(matches!(e, ManagerError::InvalidArgument { .. }), "{e:?}");
        let e = m.resolve_route(&Caller::ROOT, "nope").await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::NoSuchVm {
                name: "nope".into()
            }
        );
    }

    #[tokio::test]
    async fn gateway_questions_are_refused_to_others() {
        let (_dir, m) = manager_with("blog", 1000);
        let user = Caller::without_subject(1000);
        let e = m.resolve_route(&user, "blog").await.unwrap_err();
        assert!(
            matches!(e, ManagerError::PermissionDenied { ref action } if action == "org.vmctl.gateway"),
            "{e:?}"
        );
        let e = m.redeem_login_token(&user, "x").unwrap_err();
        assert!(matches!(e, ManagerError::PermissionDenied { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_login_token_works_once() {
        let (_dir, m) = manager_with("blog", 1000);
        let token = m.issue_login_token(&Caller::ROOT, "blog").await.unwrap();
        assert_eq!(token.len(), 64);
        let (uid, user) = m
            .redeem_login_token(&Caller::ROOT, &token)
            .unwrap()
            .unwrap();
        assert_eq!((uid, user.as_str()), (0, "root"));
        assert_eq!(m.redeem_login_token(&Caller::ROOT, &token).unwrap(), None);
        assert_eq!(m.redeem_login_token(&Caller::ROOT, "0000").unwrap(), None);
    }
}
