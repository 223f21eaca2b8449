//! `libnss_vmctl.so.2`: a glibc NSS module that resolves `NAME.vm` to the
//! addresses of vmctl VMs, and those addresses back to `NAME.vm`.
//!
//! The module never talks to vmctld. It reads the small hosts-style file
//! [`HOSTS_PATH`] that vmctld keeps up to date (see the crate README for the
//! format contract), synchronously and without threads, so a resolver call
//! never blocks when vmctld is down: a missing file simply means "not found".
//!
//! Layout:
//! - [`parse`]: the file format (pure, safe).
//! - [`lookup`]: name matching, reading the file, forward and reverse lookups.
//! - [`pack`]: laying out glibc result structures in a caller's buffer (safe).
//! - [`ffi`]: the exported `_nss_vmctl_*` functions; the only `unsafe` code.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod ffi;
pub mod lookup;
pub mod pack;
pub mod parse;

/// The file vmctld maintains and the exported functions read.
pub const HOSTS_PATH: &str = "/run/vmctl/hosts";

/// Largest hosts file the module reads; a bigger file is treated as broken
/// (`NSS_STATUS_UNAVAIL`) rather than read without bound.
pub const MAX_HOSTS_FILE_SIZE: u64 = 1024 * 1024;

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
