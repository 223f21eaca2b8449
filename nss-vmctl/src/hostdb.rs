//! Writing the hosts directory the module reads (used by vmctld).
//!
//! Every record is written to a temporary file in its own directory
//! (`.tmp-…`, never a valid name or address) and `rename`d into place, so a
//! reader sees the old record or the new one, never part of one. Records are
//! ordered so that a reader between two steps sees at worst a reverse entry
//! without its name (which [`crate::lookup::resolve_addr`] ignores): on
//! publish `addr/` first, then `name/`; on withdraw `name/` first, then
//! `addr/`. Directories are created `0755`, records are `0644`, whatever the
//! umask. One writer at a time (vmctld, under its own lock).

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lookup::read_record;
use crate::parse::{self, format_name_record};
use crate::{ADDR_SUBDIR, NAME_SUBDIR};

/// One VM as published: name and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The VM name (a DNS label; stored lower case).
    pub name: String,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address, if it has one.
    pub ipv6: Option<Ipv6Addr>,
}

/// Makes `name` resolve to `ipv4` (and `ipv6`) and both addresses resolve
/// back to it. Replaces an earlier record of the same name and removes the
/// reverse entries of addresses it no longer holds. Idempotent.
pub fn publish(dir: &Path, name: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> io::Result<()> {
    let name = checked_name(name)?;
    let (names, addrs) = ensure_dirs(dir)?;
    let old = current_addrs(&names, &name);
    let new = addrs_of(ipv4, ipv6);
    for addr in &new {
        write_atomic(&addrs, &addr.to_string(), format!("{name}\n").as_bytes())?;
    }
    write_atomic(&names, &name, format_name_record(ipv4, ipv6).as_bytes())?;
    for addr in old.iter().filter(|a| !new.contains(a)) {
        remove_addr_if_owned(&addrs, *addr, &name)?;
    }
    Ok(())
}

/// Makes `name` and its addresses unknown. Idempotent: withdrawing a name
/// that is not published (or a missing directory) succeeds.
pub fn withdraw(dir: &Path, name: &str) -> io::Result<()> {
    let name = checked_name(name)?;
    let names = dir.join(NAME_SUBDIR);
    let old = current_addrs(&names, &name);
    remove_if_exists(&names.join(&name))?;
    let addrs = dir.join(ADDR_SUBDIR);
    for addr in old {
        remove_addr_if_owned(&addrs, addr, &name)?;
    }
    Ok(())
}

/// Makes the directory hold exactly `entries`: publishes each, then removes
/// every other record (and leftover temporary files). Used when vmctld
/// starts, to reconcile with its own state.
pub fn replace_all(dir: &Path, entries: &[HostEntry]) -> io::Result<()> {
    let (names, addrs) = ensure_dirs(dir)?;
    let mut keep_names = HashSet::new();
    let mut keep_addrs = HashSet::new();
    for entry in entries {
        publish(dir, &entry.name, entry.ipv4, entry.ipv6)?;
        keep_names.insert(entry.name.to_ascii_lowercase());
        for addr in addrs_of(entry.ipv4, entry.ipv6) {
            keep_addrs.insert(addr.to_string());
        }
    }
    remove_others(&names, &keep_names)?;
    remove_others(&addrs, &keep_addrs)
}

fn checked_name(name: &str) -> io::Result<String> {
    if !parse::is_valid_vm_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a VM name: {name:?}"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn addrs_of(ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> Vec<IpAddr> {
    std::iter::once(IpAddr::from(ipv4))
        .chain(ipv6.map(IpAddr::from))
        .collect()
}

/// The addresses `name` is published with now (none if unknown or damaged).
fn current_addrs(names: &Path, name: &str) -> Vec<IpAddr> {
    match read_record(&names.join(name)) {
        Ok(Some(record)) => parse::parse_name_record(&record)
            .map(|(v4, v6)| addrs_of(v4, v6))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Creates `dir`, `dir/name` and `dir/addr` with mode 0755.
fn ensure_dirs(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let names = dir.join(NAME_SUBDIR);
    let addrs = dir.join(ADDR_SUBDIR);
    for d in [dir, &names, &addrs] {
        if !d.is_dir() {
            DirBuilder::new().recursive(true).mode(0o755).create(d)?;
            // The umask may have narrowed the mode; readers are everyone.
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok((names, addrs))
}

/// Removes `addrs/<addr>` if it still names `name` (another VM may have
/// been given the address since).
fn remove_addr_if_owned(addrs: &Path, addr: IpAddr, name: &str) -> io::Result<()> {
    let path = addrs.join(addr.to_string());
    let owned = match read_record(&path) {
        Ok(Some(record)) => {
            parse::parse_addr_record(&record).is_none_or(|owner| owner.eq_ignore_ascii_case(name))
        }
        Ok(None) | Err(_) => false,
    };
    if owned {
        remove_if_exists(&path)?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes every entry of `dir` whose file name is not in `keep`.
fn remove_others(dir: &Path, keep: &HashSet<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let keep_it = file_name.to_str().is_some_and(|n| keep.contains(n));
        if keep_it {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// Writes `contents` to `dir/file_name` by way of a temporary file in `dir`
/// and `rename`, mode 0644.
fn write_atomic(dir: &Path, file_name: &str, contents: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(contents)?;
        file.sync_data()?;
        fs::rename(&tmp, dir.join(file_name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::{resolve_addr, resolve_name, Outcome};
    use crate::test_util::TempDir;
    use std::os::unix::fs::MetadataExt;

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut all = Vec::new();
        for sub in [NAME_SUBDIR, ADDR_SUBDIR] {
            for entry in fs::read_dir(dir.join(sub)).unwrap() {
                let entry = entry.unwrap();
                let text = fs::read_to_string(entry.path()).unwrap();
                let name = entry.file_name().into_string().unwrap();
                all.push(format!("{sub}/{name}={}", text.trim_end()));
            }
        }
        all.sort();
        all
    }

    #[test]
    fn publish_writes_both_directions_with_modes() {
        let tmp = TempDir::new("hostdb-publish");
        let dir = tmp.0.join("run/hosts");
        publish(
            &dir,
            "Blog",
            Ipv4Addr::new(10, 77, 0, 2),
            Some(v6("fd77::2")),
        )
        .unwrap();
        publish(
            &dir,
            "blog",
            Ipv4Addr::new(10, 77, 0, 2),
            Some(v6("fd77::2")),
        )
        .unwrap();
        assert_eq!(
            listing(&dir),
            [
                "addr/10.77.0.2=blog",
                "addr/fd77::2=blog",
                "name/blog=10.77.0.2 fd77::2"
            ]
        );
        for d in [&dir, &dir.join("name"), &dir.join("addr")] {
            assert_eq!(fs::metadata(d).unwrap().mode() & 0o7777, 0o755);
        }
        let record = fs::metadata(dir.join("name/blog")).unwrap();
        assert_eq!(record.mode() & 0o7777, 0o644);
        assert!(matches!(resolve_name(&dir, "BLOG.vm"), Outcome::Found(_)));
    }

    #[test]
    fn republish_moves_addresses() {
        let tmp = TempDir::new("hostdb-move");
        let dir = &tmp.0;
        publish(
            dir,
            "blog",
            Ipv4Addr::new(10, 77, 0, 2),
            Some(v6("fd77::2")),
        )
        .unwrap();
        publish(dir, "blog", Ipv4Addr::new(10, 77, 0, 5), None).unwrap();
        assert_eq!(listing(dir), ["addr/10.77.0.5=blog", "name/blog=10.77.0.5"]);
    }

    #[test]
    fn withdraw_is_idempotent_and_spares_reused_addresses() {
        let tmp = TempDir::new("hostdb-withdraw");
        let dir = &tmp.0;
        withdraw(dir, "blog").unwrap();
        publish(dir, "blog", Ipv4Addr::new(10, 77, 0, 2), None).unwrap();
        publish(dir, "web", Ipv4Addr::new(10, 77, 0, 3), None).unwrap();
        // The address of blog handed to web while blog's record is stale.
        fs::write(dir.join("addr/10.77.0.2"), "web\n").unwrap();
        withdraw(dir, "blog").unwrap();
        withdraw(dir, "blog").unwrap();
        assert_eq!(
            listing(dir),
            [
                "addr/10.77.0.2=web",
                "addr/10.77.0.3=web",
                "name/web=10.77.0.3"
            ]
        );
        let addr = Ipv4Addr::new(10, 77, 0, 3).into();
        assert!(matches!(resolve_addr(dir, addr), Outcome::Found(_)));
        assert_eq!(resolve_name(dir, "blog.vm"), Outcome::NotFound);
    }

    #[test]
    fn replace_all_leaves_exactly_the_entries() {
        let tmp = TempDir::new("hostdb-replace");
        let dir = &tmp.0;
        publish(dir, "old", Ipv4Addr::new(10, 77, 0, 9), Some(v6("fd77::9"))).unwrap();
        fs::write(dir.join("name/.tmp-1-1"), "junk").unwrap();
        fs::write(dir.join("addr/junk"), "junk").unwrap();
        let entries = [
            HostEntry {
                name: "a".into(),
                ipv4: Ipv4Addr::new(10, 77, 0, 2),
                ipv6: Some(v6("fd77::2")),
            },
            HostEntry {
                name: "B".into(),
                ipv4: Ipv4Addr::new(10, 77, 0, 3),
                ipv6: None,
            },
        ];
        replace_all(dir, &entries).unwrap();
        replace_all(dir, &entries).unwrap();
        assert_eq!(
            listing(dir),
            [
                "addr/10.77.0.2=a",
                "addr/10.77.0.3=b",
                "addr/fd77::2=a",
                "name/a=10.77.0.2 fd77::2",
                "name/b=10.77.0.3"
            ]
        );
        replace_all(dir, &[]).unwrap();
        assert!(listing(dir).is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        let tmp = TempDir::new("hostdb-bad");
        for name in ["", "../x", "a/b", ".tmp-1", "-a", "a.b"] {
            let err = publish(&tmp.0, name, Ipv4Addr::LOCALHOST, None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name}");
            assert!(withdraw(&tmp.0, name).is_err());
        }
    }
}
