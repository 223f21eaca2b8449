//! Gateways: the services that let users reach vmctl from the network
//! (the SSH gateway `vmctl-ssh`, the HTTPS proxy `vmctl-https`) and call
//! vmctld *on behalf of* those users.
//!
//! # The trust edge, step by step
//!
//! 1. Each gateway runs as a static system user made by sysusers.d
//!    (`vmctl-ssh`, `vmctl-https`), never as root and never as a dynamic
//!    user, so its uid has a stable name.
//! 2. `[Gateways] Users=` in `/etc/vmctl/vmctl.conf` lists the user names
//!    vmctld trusts as gateways (default: [`DEFAULT_USERS`]). A varlink
//!    peer is a gateway when the kernel's `SO_PEERCRED` uid of its
//!    connection belongs to one of those names: nothing a process can
//!    claim by itself.
//! 3. A gateway authenticates the network user itself (an SSH key, a login
//!    token) against records only vmctld holds, through the gateway-only
//!    interface `io.vmctl.Gateway`, and learns the user's uid.
//! 4. It then calls `io.vmctl.Manager` methods with the parameter
//!    [`ON_BEHALF_OF`] set to that uid. vmctld runs the call as that user
//!    with a [`Subject::Gateway`]: create and manage-own are granted
//!    (ownership and quotas apply as for the user's own `vmctl`), and
//!    manage-any, image management and admin are refused without asking
//!    polkit. Acting for root is refused.
//! 5. `onBehalfOf` from any other peer is `PermissionDenied` with the
//!    action [`GATEWAY_ACTION`], as is every `io.vmctl.Gateway` method.
//!
//! Why a gateway gets no more: a network user reaches it only with a key
//! or token that was registered by a polkit-checked call of that user (or
//! by an administrator), so "own VMs plus creating under quota" is what the
//! user already had; anything more needs the user at the host.

use std::path::Path;

use crate::{
    caller::Subject,
    config_file::{self, ConfigError},
    Caller, Manager, ManagerError,
};

/// The action named when a caller that is not a gateway acts as one.
pub const GATEWAY_ACTION: &str = "org.vmctl.gateway";

/// The varlink parameter by which a gateway names the user it acts for.
pub const ON_BEHALF_OF: &str = "onBehalfOf";

/// The gateways trusted when `[Gateways] Users=` is not set.
pub const DEFAULT_USERS: [&str; 2] = ["vmctl-ssh", "vmctl-https"];

/// The user names trusted as gateways, from `[Gateways]` of `path`.
pub fn load_users(path: &Path) -> Result<Vec<String>, ConfigError> {
    match config_file::read(path)? {
        Some(text) => parse_users(&text, path),
        None => Ok(default_users()),
    }
}

fn default_users() -> Vec<String> {
    DEFAULT_USERS.iter().map(|u| u.to_string()).collect()
}

/// Parses `[Gateways]` of the configuration text; an unknown key is an
/// error, an empty `Users=` trusts no gateway.
pub fn parse_users(text: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
    let mut users = default_users();
    for config_file::Entry { line, key, value } in
        config_file::section_entries(text, path, "Gateways")?
    {
        match key {
            "Users" => users = value.split_whitespace().map(str::to_string).collect(),
            _ => {
                return Err(ConfigError::at(
                    path,
                    line,
                    format!("unknown key {key:?} in [Gateways] (known: Users)"),
                ))
            }
        }
    }
    Ok(users)
}

fn not_a_gateway() -> ManagerError {
    ManagerError::PermissionDenied {
        action: GATEWAY_ACTION.to_string(),
    }
}

impl Manager {
    /// The gateway name of the peer of `caller` (the process at the other
    /// end of the connection), when it is one of the trusted gateways.
    pub fn gateway_peer(&self, caller: &Caller) -> Result<Option<String>, ManagerError> {
        if caller.is_root() || caller.gateway().is_some() {
            return Ok(None);
        }
        let users = load_users(self.config_path())
            .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
        let name = match nix::unistd::User::from_uid(caller.uid.into()) {
            Ok(Some(user)) => user.name,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ManagerError::internal(format!(
                    "cannot look up uid {}: {e}",
                    caller.uid
                )))
            }
        };
        Ok(users.contains(&name).then_some(name))
    }

    /// `caller` (a gateway's connection) acting for user `uid`: refused
    /// unless the peer is a trusted gateway and `uid` is not root.
    pub fn act_for(&self, caller: &Caller, uid: u32) -> Result<Caller, ManagerError> {
        let gateway = self.gateway_peer(caller)?.ok_or_else(not_a_gateway)?;
        if uid == 0 {
            tracing::warn!("gateway {gateway} tried to act for root: refused");
            return Err(not_a_gateway());
        }
        Ok(Caller {
            uid,
            pid: caller.pid,
            subject: Subject::Gateway {
                gateway,
                gateway_uid: caller.uid,
            },
            allow_interaction: false,
        })
    }

    /// Succeeds for root and trusted gateways (not acting for anyone):
    /// the check in front of every `io.vmctl.Gateway` method.
    pub fn require_gateway(&self, caller: &Caller) -> Result<(), ManagerError> {
        if caller.is_root() || self.gateway_peer(caller)?.is_some() {
            Ok(())
        } else {
            Err(not_a_gateway())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_default_to_both_gateways_and_can_be_replaced_or_emptied() {
        let path = Path::new("/etc/vmctl/vmctl.conf");
        assert_eq!(parse_users("", path).unwrap(), DEFAULT_USERS);
        assert_eq!(
            parse_users("[Gateways]\nUsers=gw1  gw2\n", path).unwrap(),
            ["gw1", "gw2"]
        );
        assert!(parse_users("[Gateways]\nUsers=\n", path)
            .unwrap()
            .is_empty());
        let e = parse_users("[Gateways]\nUser=gw\n", path).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("\"User\""), "{e}");
    }

    fn manager_with_gateways(users: &str) -> (tempfile::TempDir, Manager) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vmctl.conf");
        std::fs::write(&config, format!("[Gateways]\nUsers={users}\n")).unwrap();
        let manager = Manager::new(crate::Registry::new(dir.path())).with_config(&config);
        (dir, manager)
    }

    /// A user name that exists on every Linux system, other than root.
    fn some_system_user() -> nix::unistd::User {
        nix::unistd::User::from_name("nobody").unwrap().unwrap()
    }

    #[test]
    fn a_listed_user_acts_for_others_with_a_gateway_subject() {
        let nobody = some_system_user();
        let (_dir, manager) = manager_with_gateways(&nobody.name);
        let peer = Caller::without_subject(nobody.uid.as_raw());
        let acting = manager.act_for(&peer, 1000).unwrap();
        assert_eq!(acting.uid, 1000);
        assert_eq!(acting.gateway(), Some(nobody.name.as_str()));
        assert!(manager.require_gateway(&peer).is_ok());
        // A caller already acting for someone is no gateway itself.
        assert!(manager.require_gateway(&acting).is_err());
        let e = manager.act_for(&peer, 0).unwrap_err();
        assert!(
            matches!(&e, ManagerError::PermissionDenied { action } if action == GATEWAY_ACTION),
            "{e:?}"
        );
    }

    #[test]
    fn any_other_user_is_refused_naming_the_gateway_action() {
        let (_dir, manager) = manager_with_gateways("vmctl-ssh");
        let stranger = Caller::without_subject(some_system_user().uid.as_raw());
        for e in [
            manager.act_for(&stranger, 1000).unwrap_err(),
            manager.require_gateway(&stranger).unwrap_err(),
        ] {
            assert!(
                matches!(&e, ManagerError::PermissionDenied { action } if action == GATEWAY_ACTION),
                "{e:?}"
            );
        }
        assert!(manager.require_gateway(&Caller::ROOT).is_ok());
    }
}
