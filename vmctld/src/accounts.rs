//! User names: a VM's guest account is named after its owner. Names come
//! from the host's user database (NSS), and for accounts made by
//! registration through the SSH gateway (store-only, see
//! [`crate::registration`]) from the store.

use std::{collections::HashMap, sync::RwLock};

use nix::unistd::{Uid, User};

/// The registered accounts' names by uid (filled when the store opens and
/// at each registration).
static REGISTERED: RwLock<Option<HashMap<u32, String>>> = RwLock::new(None);

/// Notes that registration made account `uid` named `name`.
pub fn remember_registered(uid: u32, name: &str) {
    let mut known = REGISTERED.write().unwrap_or_else(|p| p.into_inner());
    known
        .get_or_insert_with(HashMap::new)
        .insert(uid, name.to_string());
}

/// The uid of the registered account `name`, if there is one.
pub fn registered_uid(name: &str) -> Option<u32> {
    let known = REGISTERED.read().unwrap_or_else(|p| p.into_inner());
    known
        .as_ref()?
        .iter()
        .find(|(_, n)| n.as_str() == name)
        .map(|(uid, _)| *uid)
}

/// The user name of `uid` in the host's user database (NSS) only: for
/// what other programs match against local users (the owner records
/// polkit reads), where a registered account must never pass for a local
/// user of the same name.
pub fn local_user_name(uid: u32) -> Option<String> {
    if uid == 0 {
        return Some("root".into());
    }
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// The user name of `uid`: from the host's user database (NSS), else a
/// registered account's; `None` when it has none.
pub fn user_name(uid: u32) -> Option<String> {
    if let Some(name) = local_user_name(uid) {
        return Some(name);
    }
    let known = REGISTERED.read().unwrap_or_else(|p| p.into_inner());
    known.as_ref()?.get(&uid).cloned()
}

/// How a VM's owner is shown: the user name of `uid`, or the uid in
/// decimal when it has none.
pub fn display_name(uid: u32) -> String {
    user_name(uid).unwrap_or_else(|| uid.to_string())
}

/// Owner names looked up once per uid (a list shows many VMs of few
/// owners).
#[derive(Debug, Default)]
pub struct OwnerNames {
    known: HashMap<u32, String>,
}

impl OwnerNames {
    /// See [`display_name`].
    pub fn name(&mut self, uid: u32) -> String {
        self.known
            .entry(uid)
            .or_insert_with(|| display_name(uid))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000), None);
        assert_eq!(display_name(0), "root");
        assert_eq!(display_name(4_000_000_000), "4000000000");
        assert_eq!(OwnerNames::default().name(4_000_000_000), "4000000000");
    }
}
