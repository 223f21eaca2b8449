//! The VMM's identity: one uid/gid per VM, `VMM_ID_BASE + CID`.
//!
//! Why derived from the CID rather than allocated: the CID is already
//! unique among defined VMs (vmctld allocates it in its store), stable
//! across restarts (files the VMM owned stay its own), and known to the
//! launcher without asking anyone. Why not a `vmctl-vm` user shared by all
//! VMs: one VMM could then open another VM's files. Why not `DynamicUser=`:
//! it would also move the launcher (which makes the TAP and needs root) off
//! root, and its uid changes between starts.
//!
//! The range `0x7F000000 + 3 ..= 0x7F00FFFF` (2130706435-2130771967) lies
//! in what systemd's UID/GID assignment document (systemd.io/UIDS-GIDS)
//! leaves unused: above the container range (524288-1879048191), below the
//! foreign range (0x7FFE0000) and the signed-32-bit boundary, far from
//! dynamic users (61184-65519) and from anything `login.defs` or
//! sysusers.d allocate. At start the launcher refuses a uid or gid that the
//! user database knows or that falls inside the ranges `/etc/login.defs`
//! configures ([`check_free`]), so a site that uses the range anyway gets a
//! clear error instead of a shared identity.

use std::ffi::CStr;

use vmctl_vmm::Identity;

/// The first uid/gid of the range; a VM's is this plus its CID.
pub const VMM_ID_BASE: u32 = 0x7F00_0000;
/// The largest CID that has an identity in the range.
pub const MAX_CID: u32 = 0xFFFF;

/// The identity of the VM with vsock CID `cid`.
pub fn for_cid(cid: u32) -> Result<Identity, String> {
    if !(vmctl_api::spec::FIRST_GUEST_CID..=MAX_CID).contains(&cid) {
        return Err(format!(
            "CID {cid} has no VMM identity (CIDs {}..={MAX_CID} do)",
            vmctl_api::spec::FIRST_GUEST_CID
        ));
    }
    let id = VMM_ID_BASE + cid;
    Ok(Identity { uid: id, gid: id })
}

/// `/etc/login.defs` ranges (`SYS_UID_MIN`..`UID_MAX` and the GID ones)
/// that contain `id`, described; `None` when it is outside all of them.
pub fn in_login_defs(id: Identity, login_defs: &str) -> Option<String> {
    let value = |key: &str| {
        login_defs.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(key)).then(|| words.next()?.parse::<u64>().ok())?
        })
    };
    let ranges = [
        ("SYS_UID_MIN", "SYS_UID_MAX", u64::from(id.uid)),
        ("UID_MIN", "UID_MAX", u64::from(id.uid)),
        ("SYS_GID_MIN", "SYS_GID_MAX", u64::from(id.gid)),
        ("GID_MIN", "GID_MAX", u64::from(id.gid)),
    ];
    ranges.into_iter().find_map(|(min, max, n)| {
        let (lo, hi) = (value(min)?, value(max)?);
        (lo..=hi)
            .contains(&n)
            .then(|| format!("{n} is inside {min}..{max} ({lo}..{hi}) of /etc/login.defs"))
    })
}

/// Refuses `id` when the user or group database has it, or
/// `/etc/login.defs` hands it out.
pub fn check_free(id: Identity) -> Result<(), String> {
    let login_defs = std::fs::read_to_string("/etc/login.defs").unwrap_or_default();
    if let Some(why) = in_login_defs(id, &login_defs) {
        return Err(format!("the VMM identity {}: {why}", id.uid));
    }
    if let Some(name) = user_name(id.uid) {
        return Err(format!(
            "uid {} is user {name:?}; vmctl reserves {VMM_ID_BASE}+CID for its VMMs",
            id.uid
        ));
    }
    if let Some(name) = group_name(id.gid) {
        return Err(format!(
            "gid {} is group {name:?}; vmctl reserves {VMM_ID_BASE}+CID for its VMMs",
            id.gid
        ));
    }
    Ok(())
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `struct passwd` (null pointers, 0s).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` for `buf.len()`.
    let r = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if r != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
    Some(
        unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `struct group`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` for `buf.len()`.
    let r = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
    if r != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success gr_name points to a NUL-terminated string in `buf`.
    Some(
        unsafe { CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_where_systemd_leaves_room() {
        let lo = VMM_ID_BASE + vmctl_api::spec::FIRST_GUEST_CID;
        let hi = VMM_ID_BASE + MAX_CID;
        // systemd.io/UIDS-GIDS: containers 524288..=1879048191, foreign
        // 0x7FFE0000..=0x7FFEFFFF, dynamic 61184..=65519, nobody 65534.
        assert!(lo > 1_879_048_191);
        assert!(hi < 0x7FFE_0000);
        assert!(hi < 1 << 31);
        assert_eq!(for_cid(3).unwrap().uid, 2_130_706_435);
        assert!(for_cid(2).is_err());
        assert!(for_cid(MAX_CID + 1).is_err());
    }

    #[test]
    fn login_defs_ranges_are_checked() {
        let defs = "# comment\nUID_MIN 1000\nUID_MAX 60000\nSYS_UID_MIN 100\nSYS_UID_MAX 999\n\
                    GID_MIN 1000\nGID_MAX 60000\n";
        let ours = for_cid(3).unwrap();
        assert_eq!(in_login_defs(ours, defs), None);
        let wide = "UID_MIN 1000\nUID_MAX 4000000000\n";
        let why = in_login_defs(ours, wide).unwrap();
        assert!(why.contains("UID_MIN..UID_MAX"), "{why}");
        assert_eq!(in_login_defs(ours, ""), None);
    }

    #[test]
    fn root_and_a_free_uid() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(check_free(Identity { uid: 0, gid: 0 }).is_err());
        assert!(check_free(for_cid(3).unwrap()).is_ok());
    }
}
