//! Host user names: a VM's guest account is named after its owner.

use std::{collections::HashMap, ffi::CStr};

/// The user name of `uid` from the host's user database (NSS), `None`
/// when it has none.
pub fn user_name(uid: u32) -> Option<String> {
    if uid == 0 {
        return Some("root".into());
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the
    // size of `buf`; on success the strings in `pwd` point into `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: `pw_name` is a NUL-terminated string inside `buf`, alive here.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_string)
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
