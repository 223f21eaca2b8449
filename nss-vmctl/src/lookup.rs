//! Name matching, reading one record, and forward/reverse lookups.
//!
//! A lookup opens exactly one file by path (`name/<name>`), or two for a
//! reverse lookup (`addr/<ip>`, then the name's record to confirm it still
//! holds that address), so its cost does not depend on the number of VMs.
//!
//! A forward lookup is three system calls (`open`, one `read`, `close`)
//! and no heap allocation but the answer's name: the path is built and the
//! record read on the stack. glibc's own work around the module (nsswitch,
//! nss-files before it, RFC 6724 sorting with a netlink dump and a
//! `connect` per address) costs several times more; see
//! `cargo xtask bench --nss`.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::parse::{self, MAX_RECORD_LEN};
use crate::{ADDR_SUBDIR, DOMAIN, NAME_SUBDIR};

/// Extracts the VM name from a query such as `blog.vm` or `BLOG.VM.`.
///
/// Matching is ASCII case-insensitive and allows one trailing dot. VM names
/// are single labels, so `a.b.vm`, `.vm` and `vm` are not VM names. Returns
/// the label as written in the query.
pub fn vm_label(query: &str) -> Option<&str> {
    let query = query.strip_suffix('.').unwrap_or(query);
    let dot = query.len().checked_sub(DOMAIN.len() + 1)?;
    let (label, suffix) = query.split_at_checked(dot)?;
    let domain = suffix.strip_prefix('.')?;
    if !domain.eq_ignore_ascii_case(DOMAIN) || !parse::is_valid_vm_name(label) {
        return None;
    }
    Some(label)
}

/// A VM found by a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Canonical name, lower case, with the domain: `blog.vm`.
    pub canonical: String,
    /// The VM's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The VM's IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
}

/// Result of a lookup, mapped one to one onto NSS statuses by [`crate::ffi`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The VM exists.
    Found(Host),
    /// No such VM, not a `.vm` name, no hosts directory, or a damaged record.
    NotFound,
    /// The record cannot be read (not a regular file, a symlink, permission
    /// denied, I/O error); carries an errno value.
    Unavailable(i32),
}

/// One record as read: at most [`MAX_RECORD_LEN`]` + 1` bytes, on the stack.
#[derive(Debug, Clone)]
pub struct Record {
    bytes: [u8; MAX_RECORD_LEN + 1],
    len: usize,
}

impl Deref for Record {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Reads one record without ever blocking: `Ok(None)` if it does not exist.
///
/// Opens with `O_NONBLOCK` (a FIFO in its place cannot hang the caller: it
/// reads as empty, i.e. damaged), `O_NOFOLLOW` (a symlink is refused with
/// `ELOOP`) and `O_CLOEXEC` (std always adds it), and reads once, at most
/// [`MAX_RECORD_LEN`]` + 1` bytes: a longer file comes back longer than the
/// cap and fails to parse. A regular file returns all it has up to the cap
/// in one `read`, so no second call is needed to see its end; a directory
/// fails that read with `EISDIR`.
pub fn read_record(path: &Path) -> io::Result<Option<Record>> {
    let mut file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    let mut record = Record {
        bytes: [0; MAX_RECORD_LEN + 1],
        len: 0,
    };
    record.len = match file.read(&mut record.bytes) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
        other => other?,
    };
    Ok(Some(record))
}

/// Room for `<dir>/<subdir>/<key>` on the stack; longer paths (never
/// [`crate::HOSTS_DIR`]) take the heap.
const PATH_BUF: usize = 256;

/// Calls `f` with the path `dir/sub/key`, `key` in ASCII lower case.
fn with_record_path<T>(dir: &Path, sub: &str, key: &str, f: impl FnOnce(&Path) -> T) -> T {
    let parts = [dir.as_os_str().as_bytes(), b"/", sub.as_bytes(), b"/"];
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + key.len();
    if len > PATH_BUF {
        let mut path = PathBuf::from(dir);
        path.push(sub);
        path.push(key.to_ascii_lowercase());
        return f(&path);
    }
    let mut buf = [0u8; PATH_BUF];
    let mut at = 0;
    for part in parts.into_iter().chain([key.as_bytes()]) {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    buf[len - key.len()..len].make_ascii_lowercase();
    f(Path::new(OsStr::from_bytes(&buf[..len])))
}

/// Looks a VM name up (in any case) in the hosts directory `dir`.
fn lookup_name(dir: &Path, name: &str) -> Outcome {
    match with_record_path(dir, NAME_SUBDIR, name, read_record) {
        Ok(Some(record)) => match parse::parse_name_record(&record) {
            Some((ipv4, ipv6)) => {
                let mut canonical = String::with_capacity(name.len() + 1 + DOMAIN.len());
                canonical.push_str(name);
                canonical.make_ascii_lowercase();
                canonical.push('.');
                canonical.push_str(DOMAIN);
                Outcome::Found(Host {
                    canonical,
                    ipv4,
                    ipv6,
                })
            }
            None => Outcome::NotFound,
        },
        Ok(None) => Outcome::NotFound,
        Err(err) => Outcome::Unavailable(err.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Resolves a query name using the hosts directory `dir`. Names that are not
/// `NAME.vm` are answered `NotFound` without touching the filesystem.
pub fn resolve_name(dir: &Path, query: &str) -> Outcome {
    let Some(label) = vm_label(query) else {
        return Outcome::NotFound;
    };
    lookup_name(dir, label)
}

/// Resolves an address back to its VM using the hosts directory `dir`.
///
/// The answer is confirmed against the name's own record, so an `addr/`
/// entry left behind by an interrupted writer never names a VM that no
/// longer holds the address.
pub fn resolve_addr(dir: &Path, addr: IpAddr) -> Outcome {
    let record = match with_record_path(dir, ADDR_SUBDIR, &addr.to_string(), read_record) {
        Ok(Some(record)) => record,
        Ok(None) => return Outcome::NotFound,
        Err(err) => return Outcome::Unavailable(err.raw_os_error().unwrap_or(libc::EIO)),
    };
    let Some(name) = parse::parse_addr_record(&record) else {
        return Outcome::NotFound;
    };
    match lookup_name(dir, name) {
        Outcome::Found(host) if holds(&host, addr) => Outcome::Found(host),
        Outcome::Found(_) => Outcome::NotFound,
        other => other,
    }
}

fn holds(host: &Host, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => host.ipv4 == v4,
        IpAddr::V6(v6) => host.ipv6 == Some(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostdb;
    use crate::test_util::TempDir;

    #[test]
    fn name_matching() {
        assert_eq!(vm_label("blog.vm"), Some("blog"));
        assert_eq!(vm_label("BLOG.VM."), Some("BLOG"));
        assert_eq!(vm_label("Blog.Vm"), Some("Blog"));
        for query in [
            "blog.vmx",
            "blog.v",
            "blogvm",
            "vm",
            ".vm",
            "vm.",
            "a.b.vm",
            "blog.vm..",
            "blog",
            "",
            ".",
            "-x.vm",
            "blög.vm",
            "é.vm",
            "blog.vm.example",
            "../x.vm",
            "x/y.vm",
        ] {
            assert_eq!(vm_label(query), None, "{query:?}");
        }
    }

    fn sample(tag: &str) -> TempDir {
        let dir = TempDir::new(tag);
        hostdb::publish(&dir.0, "blog", Ipv4Addr::new(10, 0, 0, 2), None).unwrap();
        let v6 = "fd00::3".parse().unwrap();
        hostdb::publish(&dir.0, "web", Ipv4Addr::new(10, 0, 0, 3), Some(v6)).unwrap();
        dir
    }

    #[test]
    fn resolves_names_case_insensitively() {
        let dir = sample("resolve");
        match resolve_name(&dir.0, "WEB.vm.") {
            Outcome::Found(host) => {
                assert_eq!(host.canonical, "web.vm");
                assert_eq!(host.ipv4, Ipv4Addr::new(10, 0, 0, 3));
                assert_eq!(host.ipv6, Some("fd00::3".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve_name(&dir.0, "nope.vm"), Outcome::NotFound);
        assert_eq!(resolve_name(&dir.0, "web.example"), Outcome::NotFound);
    }

    #[test]
    fn resolves_addresses() {
        let dir = sample("addr");
        let v6: Ipv6Addr = "fd00::3".parse().unwrap();
        for addr in [IpAddr::from(v6), Ipv4Addr::new(10, 0, 0, 3).into()] {
            match resolve_addr(&dir.0, addr) {
                Outcome::Found(host) => assert_eq!(host.canonical, "web.vm"),
                other => panic!("{other:?}"),
            }
        }
        let nope = Ipv4Addr::new(10, 0, 0, 4).into();
        assert_eq!(resolve_addr(&dir.0, nope), Outcome::NotFound);
    }

    #[test]
    fn stale_addr_entry_is_not_believed() {
        let dir = sample("stale");
        // An addr/ entry naming a VM whose record holds another address.
        std::fs::write(dir.0.join("addr/10.0.0.9"), "web\n").unwrap();
        let addr = Ipv4Addr::new(10, 0, 0, 9).into();
        assert_eq!(resolve_addr(&dir.0, addr), Outcome::NotFound);
        std::fs::write(dir.0.join("addr/10.0.0.8"), "gone\n").unwrap();
        let addr = Ipv4Addr::new(10, 0, 0, 8).into();
        assert_eq!(resolve_addr(&dir.0, addr), Outcome::NotFound);
    }

    #[test]
    fn missing_directory_is_not_found() {
        let dir = TempDir::new("missing");
        let hosts = dir.0.join("hosts");
        assert_eq!(resolve_name(&hosts, "blog.vm"), Outcome::NotFound);
        let addr = Ipv4Addr::new(10, 0, 0, 2).into();
        assert_eq!(resolve_addr(&hosts, addr), Outcome::NotFound);
        // The previous layout: a plain file where the directory belongs.
        std::fs::write(&hosts, "blog 10.0.0.2\n").unwrap();
        assert_eq!(resolve_name(&hosts, "blog.vm"), Outcome::NotFound);
        assert_eq!(resolve_addr(&hosts, addr), Outcome::NotFound);
    }

    #[test]
    fn damaged_records_are_not_found() {
        let dir = sample("damaged");
        let record = dir.0.join("name/blog");
        for bad in [
            &b""[..],
            b"10.0.0",
            b"10.0.0.2",
            b"garbage\n",
            &[0xa5; 4096],
        ] {
            std::fs::write(&record, bad).unwrap();
            assert_eq!(resolve_name(&dir.0, "blog.vm"), Outcome::NotFound);
        }
        std::fs::write(dir.0.join("addr/10.0.0.3"), b"we").unwrap();
        let addr = Ipv4Addr::new(10, 0, 0, 3).into();
        assert_eq!(resolve_addr(&dir.0, addr), Outcome::NotFound);
    }

    #[test]
    fn non_vm_names_do_not_touch_the_filesystem() {
        // A directory where the record belongs is Unavailable when read
        // (EISDIR), so the lookup below does touch it.
        let dir = TempDir::new("nofs");
        std::fs::create_dir(dir.0.join("name")).unwrap();
        std::fs::create_dir(dir.0.join("name/blog")).unwrap();
        assert_eq!(resolve_name(&dir.0, "example.com"), Outcome::NotFound);
        assert_eq!(
            resolve_name(&dir.0, "blog.vm"),
            Outcome::Unavailable(libc::EISDIR)
        );
    }

    #[test]
    fn fifo_and_symlink_do_not_block_or_follow() {
        let dir = sample("special");
        let fifo = dir.0.join("name/blog");
        std::fs::remove_file(&fifo).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // No writer: it reads as empty at once, a damaged record.
        assert_eq!(resolve_name(&dir.0, "blog.vm"), Outcome::NotFound);
        std::fs::remove_file(&fifo).unwrap();
        std::os::unix::fs::symlink(dir.0.join("name/web"), &fifo).unwrap();
        assert_eq!(
            resolve_name(&dir.0, "blog.vm"),
            Outcome::Unavailable(libc::ELOOP)
        );
    }
}
