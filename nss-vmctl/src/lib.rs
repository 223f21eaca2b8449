//! `libnss_vmctl.so.2`: a glibc NSS module that resolves `NAME.vm` to the
//! addresses of vmctl VMs, and those addresses back to `NAME.vm`.
//!
//! The module never talks to vmctld. It reads the hosts directory
//! [`HOSTS_DIR`] that vmctld keeps up to date through [`hostdb`],
//! synchronously and without threads, so a resolver call never blocks when
//! vmctld is down: a missing directory or record simply means "not found".
//!
//! # The hosts directory
//!
//! ```text
//! /run/vmctl/hosts/            0755
//!   name/<name>                0644  "<ipv4>\n" or "<ipv4> <ipv6>\n"
//!   addr/<ip>                  0644  "<name>\n"
//! ```
//!
//! - `<name>` is the VM name in lower case (one DNS label: 1 to 63 ASCII
//!   letters, digits, `-`, not at either end), without `.vm`.
//! - `<ip>` is the address in its canonical text form (Rust's `Display`:
//!   dotted quad; RFC 5952 for IPv6, e.g. `fd77:766d:6374::2`), one file per
//!   address of every VM.
//! - Records are exactly one line with a final newline and single spaces;
//!   anything else (a truncated or garbage record) reads as absent.
//! - Each record is written to a temporary `.tmp-*` file in the same
//!   directory and `rename`d into place: readers never see half a record.
//!
//! A forward lookup is one `open` + `fstat` + `read` of `name/<name>`; a
//! reverse lookup reads `addr/<ip>`, then `name/<name>` to confirm the VM
//! still holds the address. The cost does not depend on how many VMs exist.
//!
//! # Modules
//! - [`parse`]: the record formats (pure, safe).
//! - [`lookup`]: name matching, reading records, forward and reverse lookups.
//! - [`hostdb`]: the writer side (`publish`, `withdraw`, `replace_all`).
//! - [`pack`]: laying out glibc result structures in a caller's buffer (safe).
//! - [`ffi`]: the exported `_nss_vmctl_*` functions; the only `unsafe` code.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod ffi;
pub mod hostdb;
pub mod lookup;
pub mod pack;
pub mod parse;

/// The directory vmctld maintains and the exported functions read.
pub const HOSTS_DIR: &str = "/run/vmctl/hosts";

/// Subdirectory of [`HOSTS_DIR`] with one record per VM name.
pub const NAME_SUBDIR: &str = "name";

/// Subdirectory of [`HOSTS_DIR`] with one record per VM address.
pub const ADDR_SUBDIR: &str = "addr";

/// The pseudo top-level domain VM names live under.
pub const DOMAIN: &str = "vm";

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// A temporary directory removed on drop (no extra dependencies).
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        /// Creates a fresh directory unique to this process, thread and tag.
        pub(crate) fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "nss-vmctl-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
