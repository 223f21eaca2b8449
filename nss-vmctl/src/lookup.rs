//! Name matching, reading the hosts file, and forward/reverse lookups.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::parse::{self, Entry};
use crate::{DOMAIN, MAX_HOSTS_FILE_SIZE};

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

impl Host {
    fn from_entry(entry: &Entry<'_>) -> Self {
        Host {
            canonical: format!("{}.{DOMAIN}", entry.name.to_ascii_lowercase()),
            ipv4: entry.ipv4,
            ipv6: entry.ipv6,
        }
    }
}

/// Result of a lookup, mapped one to one onto NSS statuses by [`crate::ffi`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The VM exists.
    Found(Host),
    /// No such VM, or the name is not a `.vm` name, or there is no hosts file.
    NotFound,
    /// The hosts file exists but cannot be used; carries an errno value.
    Unavailable(i32),
}

/// Reads the hosts file without ever blocking: `Ok(None)` if it does not
/// exist. Opens with `O_NONBLOCK` and refuses anything but a regular file (so
/// a FIFO put in its place cannot hang the caller), and refuses files larger
/// than [`MAX_HOSTS_FILE_SIZE`] with `EFBIG`.
pub fn read_hosts_file(path: &Path) -> io::Result<Option<String>> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if meta.len() > MAX_HOSTS_FILE_SIZE {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_HOSTS_FILE_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_HOSTS_FILE_SIZE {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Finds a VM by name (without the domain, case-insensitive) in file text.
pub fn find_by_name(text: &str, label: &str) -> Option<Host> {
    parse::entries(text)
        .find(|entry| entry.name.eq_ignore_ascii_case(label))
        .map(|entry| Host::from_entry(&entry))
}

/// Finds a VM by one of its addresses in file text.
pub fn find_by_addr(text: &str, addr: IpAddr) -> Option<Host> {
    parse::entries(text)
        .find(|entry| match addr {
            IpAddr::V4(v4) => entry.ipv4 == v4,
            IpAddr::V6(v6) => entry.ipv6 == Some(v6),
        })
        .map(|entry| Host::from_entry(&entry))
}

/// Resolves a query name using the hosts file at `path`. Names that are not
/// `NAME.vm` are answered `NotFound` without touching the filesystem.
pub fn resolve_name(path: &Path, query: &str) -> Outcome {
    let Some(label) = vm_label(query) else {
        return Outcome::NotFound;
    };
    with_hosts(path, |text| find_by_name(text, label))
}

/// Resolves an address back to its VM using the hosts file at `path`.
pub fn resolve_addr(path: &Path, addr: IpAddr) -> Outcome {
    with_hosts(path, |text| find_by_addr(text, addr))
}

fn with_hosts(path: &Path, find: impl FnOnce(&str) -> Option<Host>) -> Outcome {
    match read_hosts_file(path) {
        Ok(Some(text)) => find(&text).map_or(Outcome::NotFound, Outcome::Found),
        Ok(None) => Outcome::NotFound,
        Err(err) => Outcome::Unavailable(err.raw_os_error().unwrap_or(libc::EIO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        ] {
            assert_eq!(vm_label(query), None, "{query:?}");
        }
    }

    const HOSTS: &str = "# written by vmctld\nblog 10.0.0.2\nweb 10.0.0.3 fd00::3\nBlog 10.9.9.9\n";

    #[test]
    fn finds_by_name_case_insensitively_first_wins() {
        let host = find_by_name(HOSTS, "BLOG").unwrap();
        assert_eq!(host.canonical, "blog.vm");
        assert_eq!(host.ipv4, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(host.ipv6, None);
        assert_eq!(find_by_name(HOSTS, "nope"), None);
    }

    #[test]
    fn finds_by_addr() {
        let v6: Ipv6Addr = "fd00::3".parse().unwrap();
        assert_eq!(find_by_addr(HOSTS, v6.into()).unwrap().canonical, "web.vm");
        assert_eq!(
            find_by_addr(HOSTS, Ipv4Addr::new(10, 0, 0, 3).into())
                .unwrap()
                .canonical,
            "web.vm"
        );
        assert_eq!(find_by_addr(HOSTS, Ipv4Addr::new(10, 0, 0, 4).into()), None);
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("hosts");
        assert_eq!(resolve_name(&path, "blog.vm"), Outcome::NotFound);
        let under_file = dir.0.join("file");
        std::fs::write(&under_file, "").unwrap();
        assert_eq!(
            resolve_name(&under_file.join("hosts"), "blog.vm"),
            Outcome::NotFound
        );
        assert_eq!(
            resolve_addr(&path, Ipv4Addr::new(10, 0, 0, 2).into()),
            Outcome::NotFound
        );
    }

    #[test]
    fn resolves_from_file() {
        let dir = TempDir::new("resolve");
        let path = dir.0.join("hosts");
        std::fs::write(&path, HOSTS).unwrap();
        match resolve_name(&path, "web.VM.") {
            Outcome::Found(host) => {
                assert_eq!(host.canonical, "web.vm");
                assert_eq!(host.ipv6, Some("fd00::3".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve_name(&path, "nope.vm"), Outcome::NotFound);
        assert_eq!(resolve_name(&path, "web.example"), Outcome::NotFound);
    }

    #[test]
    fn non_vm_names_do_not_touch_the_filesystem() {
        // A directory where the file should be would be Unavailable if read.
        let dir = TempDir::new("nofs");
        assert_eq!(resolve_name(&dir.0, "example.com"), Outcome::NotFound);
        assert_eq!(
            resolve_name(&dir.0, "blog.vm"),
            Outcome::Unavailable(libc::EINVAL)
        );
    }

    #[test]
    fn fifo_does_not_block_and_big_file_is_refused() {
        let dir = TempDir::new("special");
        let fifo = dir.0.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            resolve_name(&fifo, "blog.vm"),
            Outcome::Unavailable(libc::EINVAL)
        );

        let big = dir.0.join("big");
        let file = File::create(&big).unwrap();
        file.set_len(MAX_HOSTS_FILE_SIZE + 1).unwrap();
        assert_eq!(
            resolve_name(&big, "blog.vm"),
            Outcome::Unavailable(libc::EFBIG)
        );
    }
}
