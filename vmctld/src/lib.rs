//! vmctld: the vmctl daemon.
//!
//! One core, two front ends: [`Manager`] is the service layer that owns the
//! VM registry and decides what callers may do; [`varlink`] and [`dbus`]
//! translate their protocols into calls on the same `Manager`, so the two
//! APIs cannot drift. [`daemon`] wires them together as a systemd service.

#![warn(missing_docs)]

pub mod accounts;
pub mod activation;
pub mod addresses;
pub mod admission;
pub mod authz;
pub mod bridge;
pub mod caller;
pub mod cid;
pub mod cli;
pub mod config_file;
pub mod container_import;
pub mod daemon;
pub mod dbus;
pub mod dbus_vm;
pub mod disk;
pub mod error;
pub mod events;
pub mod gateway;
pub mod gateway_keys;
pub mod guest_access;
pub mod hostkeys;
pub mod image_import;
pub mod images;
pub mod lifecycle;
pub mod limits;
pub mod list_watch;
pub mod logging;
pub mod manager;
pub mod publish;
pub mod quota;
pub mod reconcile;
pub mod registration;
pub mod registry;
pub mod rootfs;
pub mod sharing;
pub mod ssh_keys;
pub mod storage;
pub mod store;
pub mod units;
pub mod varlink;
pub mod varlink_gateway;
pub mod varlink_server;

pub use caller::Caller;
pub use error::ManagerError;
pub use manager::Manager;
pub use registry::Registry;

/// The version of vmctld (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
