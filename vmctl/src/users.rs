//! Host user names and uids (NSS), for `vmctl quota`.

use std::ffi::CStr;

/// The uid of user `name`, `None` when there is no such user.
pub fn uid(name: &CStr) -> Option<u32> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the
    // size of `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

/// The user name of `uid`, or the uid in decimal when it has none.
pub fn display_name(uid: u32) -> String {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `uid`.
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
        return uid.to_string();
    }
    // SAFETY: `pw_name` is a NUL-terminated string inside `buf`, alive here.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    name.to_str()
        .map_or_else(|_| uid.to_string(), str::to_string)
}
