//! Running the VMM as an unprivileged identity of its own.
//!
//! When [`crate::VmConfig::identity`] is set (the launcher sets it when it
//! runs as root), every child the drivers start (QEMU, `vhost-device-vsock`,
//! cloud-hypervisor) is switched to that uid/gid between fork and exec
//! ([`drop_privileges`]): no supplementary groups, an empty capability
//! bounding set, no ambient capabilities, `no_new_privs`, umask 0007. Its
//! files are opened to that uid alone with POSIX ACLs, which root may set on
//! its own files without any capability:
//! - the runtime directory ([`prepare_runtime_dir`]): root and the VMM
//!   (`rwx`), sticky (the VMM cannot remove or replace root's files), with a
//!   default ACL so the sockets the VMM creates stay reachable by root
//!   (vmctld and the launcher run as root without `CAP_DAC_OVERRIDE`);
//! - each disk ([`grant`]: the file `rw` or `r`, its directory `x`);
//! - the credential files QEMU reads (`r`).
//!
//! Everybody else (other VMs' identities, local users) gets nothing: the
//! directories stay mode 0700 for the group and others.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The uid and gid the VMM processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// User ID (never 0).
    pub uid: u32,
    /// Group ID (never 0).
    pub gid: u32,
}

/// What [`grant`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read.
    Read,
    /// Read and write.
    ReadWrite,
}

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";
const ACL_VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// One POSIX ACL entry as the kernel's xattr format has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// The ACL equivalent to `mode`'s permission bits.
fn from_mode(mode: u32) -> Vec<Entry> {
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    vec![
        Entry {
            tag: USER_OBJ,
            perm: bits(6),
            id: UNDEFINED_ID,
        },
        Entry {
            tag: GROUP_OBJ,
            perm: bits(3),
            id: UNDEFINED_ID,
        },
        Entry {
            tag: OTHER,
            perm: bits(0),
            id: UNDEFINED_ID,
        },
    ]
}

/// `acl` with user `uid` given exactly `perm` (replacing an entry it had),
/// the mask recomputed as the union of the group class, and the entries in
/// the order the kernel requires.
fn with_user(mut acl: Vec<Entry>, uid: u32, perm: u16) -> Vec<Entry> {
    acl.retain(|e| !(e.tag == USER && e.id == uid) && e.tag != MASK);
    acl.push(Entry {
        tag: USER,
        perm,
        id: uid,
    });
    let mask = acl
        .iter()
        .filter(|e| matches!(e.tag, USER | GROUP_OBJ | GROUP))
        .fold(0, |m, e| m | e.perm);
    acl.push(Entry {
        tag: MASK,
        perm: mask,
        id: UNDEFINED_ID,
    });
    acl.sort_by_key(|e| (e.tag, e.id));
    acl
}

fn encode(acl: &[Entry]) -> Vec<u8> {
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for e in acl {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<Entry>> {
    let (version, rest) = bytes.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != ACL_VERSION || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The access ACL of `path`, or `None` when it has none beyond its mode.
fn get_acl(path: &Path) -> io::Result<Option<Vec<Entry>>> {
    let c = c_path(path)?;
    let name = CString::new(ACL_ACCESS).expect("no NUL");
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for
    // `buf.len()` bytes; the kernel writes at most that many.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    decode(&buf)
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable ACL"))
}

fn set_acl(path: &Path, which: &str, acl: &[Entry]) -> io::Result<()> {
    let c = c_path(path)?;
    let name = CString::new(which).expect("no NUL");
    let value = encode(acl);
    // SAFETY: NUL-terminated strings and a buffer of `value.len()` bytes,
    // which the kernel only reads.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: the file system has no POSIX ACLs", path.display()),
            ));
        }
        return Err(e);
    }
    Ok(())
}

fn perm(access: Access) -> u16 {
    match access {
        Access::Read => 4,
        Access::ReadWrite => 6,
    }
}

/// Lets user `uid` use `path` (a file or socket) with `access`, and pass
/// through its directory (`x`). Other ACL entries are kept.
pub fn grant(path: &Path, uid: u32, access: Access) -> io::Result<()> {
    grant_one(path, uid, perm(access))?;
    if let Some(dir) = path.parent() {
        let acl = current_acl(dir)?;
        let have = acl
            .iter()
            .find(|e| e.tag == USER && e.id == uid)
            .map_or(0, |e| e.perm);
        grant_one(dir, uid, have | 1)?;
    }
    Ok(())
}

fn current_acl(path: &Path) -> io::Result<Vec<Entry>> {
    match get_acl(path)? {
        Some(acl) => Ok(acl),
        None => Ok(from_mode(std::fs::metadata(path)?.permissions().mode())),
    }
}

fn grant_one(path: &Path, uid: u32, perm: u16) -> io::Result<()> {
    let acl = with_user(current_acl(path)?, uid, perm);
    set_acl(path, ACL_ACCESS, &acl)
        .map_err(|e| io::Error::new(e.kind(), format!("ACL on {}: {e}", path.display())))
}

/// Makes `dir` the VMM's runtime directory: owner (root) and `uid` `rwx`,
/// group and others nothing, sticky, and a default ACL giving root and
/// `uid` access to every file created in it (the mode the creator asks for
/// still limits it: the VMM's umask is 0007).
pub fn prepare_runtime_dir(dir: &Path, uid: u32) -> io::Result<()> {
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1770)).map_err(ctx)?;
    let base = vec![
        Entry {
            tag: USER_OBJ,
            perm: 7,
            id: UNDEFINED_ID,
        },
        Entry {
            tag: GROUP_OBJ,
            perm: 0,
            id: UNDEFINED_ID,
        },
        Entry {
            tag: OTHER,
            perm: 0,
            id: UNDEFINED_ID,
        },
    ];
    let acl = with_user(with_user(base, uid, 7), 0, 7);
    set_acl(dir, ACL_ACCESS, &acl).map_err(ctx)?;
    set_acl(dir, ACL_DEFAULT, &acl).map_err(ctx)
}

/// Opens `config`'s files to its identity, if it has one: the runtime
/// directory ([`prepare_runtime_dir`]) and each disk ([`grant`]).
pub(crate) fn prepare_files(config: &crate::VmConfig) -> crate::Result<()> {
    let Some(id) = config.identity else {
        return Ok(());
    };
    prepare_runtime_dir(&config.runtime_dir, id.uid).map_err(crate::error::io_err(
        "opening the runtime directory to the VMM",
    ))?;
    for disk in &config.disks {
        let access = if disk.read_only {
            Access::Read
        } else {
            Access::ReadWrite
        };
        grant(&disk.path, id.uid, access).map_err(crate::error::io_err(format!(
            "opening disk {} to the VMM",
            disk.path.display()
        )))?;
    }
    Ok(())
}

/// `struct __user_cap_header_struct` for capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (two of them with version 3).
#[repr(C)]
#[derive(Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// In the forked child, before exec: become `id` with no capabilities left
/// (bounding set emptied first, while `CAP_SETPCAP` is still effective;
/// inheritable and ambient sets emptied after), no supplementary groups, `no_new_privs`, umask 0007.
///
/// Only async-signal-safe system calls, no allocation.
pub(crate) fn drop_privileges(id: Identity) -> io::Result<()> {
    // SAFETY: each call passes plain integers (or a null list with length 0
    // to setgroups), except capset, which reads a header and two data
    // structs on our stack, laid out as the kernel's.
    unsafe {
        for cap in 0..64 {
            match libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) {
                1 => {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                0 => {}
                _ => break, // EINVAL: past the kernel's last capability
            }
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(id.gid, id.gid, id.gid) != 0
            || libc::setresuid(id.uid, id.uid, id.uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // Cleared by the uid change already; explicit for kernels with
        // SECBIT_KEEP_CAPS games. EINVAL on kernels without ambient caps.
        let _ = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        // The uid change leaves the inheritable set (systemd fills it from
        // CapabilityBoundingSet=): empty it too, and the rest again.
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let none = [CapData::default(), CapData::default()];
        if libc::syscall(libc::SYS_capset, &header, none.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::umask(0o007);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_round_trip_and_order() {
        let acl = with_user(from_mode(0o640), 1234, 6);
        assert_eq!(
            acl.iter().map(|e| (e.tag, e.perm)).collect::<Vec<_>>(),
            [
                (USER_OBJ, 6),
                (USER, 6),
                (GROUP_OBJ, 4),
                (MASK, 6),
                (OTHER, 0)
            ]
        );
        assert_eq!(decode(&encode(&acl)).unwrap(), acl);
        // Granting again replaces the entry instead of adding a second one.
        let again = with_user(acl, 1234, 4);
        assert_eq!(again.iter().filter(|e| e.tag == USER).count(), 1);
        assert_eq!(again.iter().find(|e| e.tag == MASK).unwrap().perm, 4);
        assert!(decode(&[1, 0, 0, 0]).is_none(), "wrong version");
    }

    /// A real file system, a real uid: the granted uid can read the file,
    /// another uid cannot (checked as root by a child that switches).
    #[test]
    fn granted_uid_reads_and_others_do_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root to switch uids");
            return;
        }
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sub = dir.path().join("vm");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = sub.join("disk");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Err(e) = grant(&file, 0x7F00_0007, Access::ReadWrite) {
            eprintln!("SKIPPED: no POSIX ACLs here: {e}");
            return;
        }
        let can_open = |uid: u32| {
            std::process::Command::new("setpriv")
                .args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    "--".into(),
                    "cat".into(),
                ])
                .arg(&file)
                .status()
                .unwrap()
                .success()
        };
        assert!(can_open(0x7F00_0007));
        assert!(!can_open(0x7F00_0008));
    }
}
