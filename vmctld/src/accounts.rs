//! Host user names: a VM's guest account is named after its owner.

use std::collections::HashMap;

use nix::unistd::{Uid, User};

/// The user name of `uid` from the host's user database (NSS), `None`
/// when it has none.
pub fn user_name(uid: u32) -> Option<String> {
    if uid == 0 {
        return Some("root".into());
    }
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
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
