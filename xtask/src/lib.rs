//! Automation for building, installing and testing vmctl.
//!
//! The binary (`cargo xtask ...`) is a thin shell over these modules; the
//! end-to-end tests use [`host`] directly to run commands inside the
//! systemd development host.

pub mod bench;
pub mod bench_clone;
pub mod bench_exec;
pub mod bench_https;
pub mod bench_list;
pub mod bench_nss;
pub mod bench_ssh;
pub mod cmd;
pub mod deb;
pub mod deps;
pub mod host;
pub mod image;
pub mod install;
pub mod kernel;
pub mod paths;
pub mod soak;
pub mod tools;
