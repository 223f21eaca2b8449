//! Registration through the SSH gateway: `ssh -p 2222 HOST register NAME`
//! with a key nobody registered makes a local account NAME whose only way
//! in is that key, through the gateway. Off unless an administrator sets
//! `[SSHGateway] Register=yes` in `/etc/vmctl/vmctl.conf`.
//!
//! What the account is, and why (see docs/security.md, "Registration"):
//! a store-only account. Everything in vmctl is keyed by uid (VM owners,
//! quotas, the gateway's `onBehalfOf`) and the name is only shown and
//! given to the guest account, so an account needs no entry in the host's
//! user database: `registered_users` (migration 0005) holds its uid, name
//! and first key, and [`crate::accounts`] names it from there. Its uid
//! comes from a range of its own ([`FIRST_UID`]..=[`LAST_UID`], above the
//! ranges systemd gives containers and below 2^31) and is skipped when
//! the host's user database knows it, so it never aliases a local user.
//! It has nothing on the host to log into (no passwd entry, no home, no
//! password, no file it owns); it reaches vmctl only through the gateway,
//! with create and manage-own and the default `[Quota]`. `RegisterMax=`
//! caps how many there are. vmctld's sandbox stays as it is (no write
//! access to `/etc`).

use std::path::Path;

use vmctl_api::{guest_credentials::is_plain_user_name, ssh_keys::validate_public_key};

use crate::{
    config_file::{self, ConfigError},
    Manager, ManagerError,
};

/// `[SSHGateway]` of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `Register=`: whether an unknown key may make an account.
    pub open: bool,
    /// `RegisterMax=`: at most this many accounts made by registration.
    pub max: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            open: false,
            max: 100,
        }
    }
}

/// The first uid registration gives out.
pub const FIRST_UID: u32 = 2_147_000_000;

/// The last uid registration gives out.
pub const LAST_UID: u32 = 2_147_099_999;

/// Names that are never given out: command words of the gateway and
/// accounts that mean something on every host.
const RESERVED: &[&str] = &[
    "root", "vmctl", "register", "admin", "nobody", "daemon", "bin", "sys",
];

/// Reads `[SSHGateway]` of `path` (missing file or section: the defaults).
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    match config_file::read(path)? {
        Some(text) => parse(&text, path),
        None => Ok(Settings::default()),
    }
}

/// Parses `[SSHGateway]` of the configuration text; unknown keys and bad
/// values are errors.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    for config_file::Entry { line, key, value } in
        config_file::section_entries(text, path, "SSHGateway")?
    {
        match key {
            "Register" => {
                settings.open = match value {
                    "yes" | "true" | "1" => true,
                    "no" | "false" | "0" => false,
                    other => {
                        return Err(ConfigError::at(
                            path,
                            line,
                            format!("Register={other:?}: expected yes or no"),
                        ))
                    }
                }
            }
            "RegisterMax" => {
                settings.max = value.parse().map_err(|_| {
                    ConfigError::at(
                        path,
                        line,
                        format!("RegisterMax={value:?}: expected a number of accounts"),
                    )
                })?
            }
            _ => {
                return Err(ConfigError::at(
                    path,
                    line,
                    format!("unknown key {key:?} in [SSHGateway] (known: Register, RegisterMax)"),
                ))
            }
        }
    }
    Ok(settings)
}

/// Why a registration was refused as a whole (not a bad argument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `Register=` is off.
    #[error("registration is off on this host (an administrator enables it with [SSHGateway] Register=yes in /etc/vmctl/vmctl.conf)")]
    Closed,
    /// `RegisterMax=` accounts exist.
    #[error("registration is full on this host ({0} accounts, RegisterMax={0})")]
    Full(u32),
}

/// The outcome of a registration: the new account, a refusal, or an error.
pub type Outcome = Result<Result<(u32, String), Refused>, ManagerError>;

fn invalid(what: &str, reason: impl Into<String>) -> ManagerError {
    ManagerError::InvalidArgument {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Checks a requested account name.
pub fn check_name(name: &str) -> Result<(), ManagerError> {
    if !is_plain_user_name(name) || name.len() > 31 {
        return Err(invalid(
            "user name",
            format!(
                "{name:?} is not a user name: up to 31 characters, lower-case letters, digits, \
                 '_' and '-', starting with a letter or '_'"
            ),
        ));
    }
    if RESERVED.contains(&name) {
        return Err(invalid("user name", format!("{name:?} is reserved")));
    }
    if nix::unistd::User::from_name(name).ok().flatten().is_some()
        || crate::accounts::registered_uid(name).is_some()
    {
        return Err(invalid(
            "user name",
            format!("{name:?} is taken on this host; choose another"),
        ));
    }
    Ok(())
}

/// Serialises registrations (the count and the name check, then useradd).
static REGISTERING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Manager {
    /// Whether registration is open (`[SSHGateway] Register=yes`).
    pub fn registration_settings(&self) -> Result<Settings, ManagerError> {
        load(self.config_path()).map_err(|e| ManagerError::internal(e.to_string()))
    }

    /// Makes account `name` for the unregistered key `key` (for the SSH
    /// gateway; the caller checks that the peer is one).
    pub async fn register_ssh_user(&self, name: &str, key: &str) -> Outcome {
        let settings = self.registration_settings()?;
        if !settings.open {
            return Ok(Err(Refused::Closed));
        }
        let key = validate_public_key(key).map_err(|reason| invalid("SSH key", reason))?;
        let _one_at_a_time = REGISTERING.lock().await;
        let store = self.registry().store();
        if let Some(owner) = store.ssh_key_owner(&key)? {
            return Err(invalid(
                "SSH key",
                format!(
                    "this key opens the account of {} already",
                    crate::accounts::display_name(owner)
                ),
            ));
        }
        let count = store.registered_user_count()?;
        if count >= settings.max {
            return Ok(Err(Refused::Full(settings.max)));
        }
        check_name(name)?;
        let Some(uid) = free_uid(store.last_registered_uid()?) else {
            return Ok(Err(Refused::Full(settings.max)));
        };
        store.add_registered_user(uid, name, &key)?;
        tracing::info!("registered user {name} (uid {uid}) through the SSH gateway");
        Ok(Ok((uid, name.to_string())))
    }
}

/// The next uid after `last` (or the first) that the host's user database
/// does not know, within the range.
fn free_uid(last: Option<u32>) -> Option<u32> {
    let start = last
        .map_or(FIRST_UID, |uid| uid.saturating_add(1))
        .max(FIRST_UID);
    (start..=LAST_UID).find(|&uid| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .is_none()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e";

    #[test]
    fn settings_default_to_closed_and_reject_typos() {
        let path = Path::new("/etc/vmctl/vmctl.conf");
        assert_eq!(parse("", path).unwrap(), Settings::default());
        assert!(!Settings::default().open);
        let open = parse("[SSHGateway]\nRegister=yes\nRegisterMax=5\n", path).unwrap();
        assert_eq!(open, Settings { open: true, max: 5 });
        let e = parse("[SSHGateway]\nRegister=maybe\n", path).unwrap_err();
        assert!(e.to_string().contains("Register=\"maybe\""), "{e}");
        let e = parse("[SSHGateway]\nRegistr=yes\n", path).unwrap_err();
        assert!(e.to_string().contains("unknown key \"Registr\""), "{e}");
    }

    #[test]
    fn names_are_checked() {
        for bad in [
            "Alice",
            "1abc",
            "a b",
            "root",
            "vmctl",
            "register",
            &"a".repeat(32),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        // A name the host's user database has (Debian's base passwd).
        let e = check_name("sync").unwrap_err();
        assert!(e.to_string().contains("taken on this host"), "{e}");
    }

    #[tokio::test]
    async fn closed_full_and_taken_keys_make_no_account() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vmctl.conf");
        let manager = Manager::new(Registry::new(dir.path())).with_config(&config);
        assert_eq!(
            manager.register_ssh_user("carol", KEY).await.unwrap(),
            Err(Refused::Closed)
        );
        std::fs::write(&config, "[SSHGateway]\nRegister=yes\nRegisterMax=0\n").unwrap();
        assert_eq!(
            manager.register_ssh_user("carol", KEY).await.unwrap(),
            Err(Refused::Full(0))
        );
        std::fs::write(&config, "[SSHGateway]\nRegister=yes\n").unwrap();
        manager.registry().store().add_ssh_key(1000, KEY).unwrap();
        let e = manager.register_ssh_user("carol", KEY).await.unwrap_err();
        assert!(e.to_string().contains("opens the account of"), "{e}");
        let e = manager
            .register_ssh_user("carol", "ssh-ed25519 nonsense")
            .await
            .unwrap_err();
        assert!(matches!(e, ManagerError::InvalidArgument { .. }), "{e}");
        assert_eq!(
            manager.registry().store().registered_user_count().unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn an_open_host_makes_a_store_only_account_for_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vmctl.conf");
        std::fs::write(&config, "[SSHGateway]\nRegister=yes\nRegisterMax=1\n").unwrap();
        let manager = Manager::new(Registry::new(dir.path())).with_config(&config);
        let (uid, user) = manager
            .register_ssh_user("erin", &format!("{KEY} erin@laptop"))
            .await
            .unwrap()
            .unwrap();
        assert!((FIRST_UID..=LAST_UID).contains(&uid), "{uid}");
        assert_eq!(user, "erin");
        assert!(nix::unistd::User::from_uid(uid.into()).unwrap().is_none());
        assert_eq!(
            manager.lookup_ssh_key(KEY).unwrap(),
            Some((uid, "erin".to_string()))
        );
        // The name is taken now, and the host is full (RegisterMax=1).
        let e = check_name("erin").unwrap_err();
        assert!(e.to_string().contains("taken"), "{e}");
        let other =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGu6mYvQ3MHHrP1bJ2qkT8vG0bV2F6e9Hh1j6D3N1fQm";
        assert_eq!(
            manager.register_ssh_user("frank", other).await.unwrap(),
            Err(Refused::Full(1))
        );
        // A reopened store still names the account.
        drop(manager);
        let again = crate::store::Store::open(&dir.path().join(crate::store::DB_FILE)).unwrap();
        assert_eq!(again.registered_user_count().unwrap(), 1);
        assert_eq!(crate::accounts::user_name(uid).as_deref(), Some("erin"));
    }
}
