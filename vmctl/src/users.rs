//! Host user names and uids (NSS), for `vmctl quota`.

use nix::unistd::{Uid, User};

/// The uid of user `name`, `None` when there is no such user (or the user
/// database cannot be read).
pub fn uid(name: &str) -> Option<u32> {
    User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// The user name of `uid`, or the uid in decimal when it has none.
pub fn display_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}
