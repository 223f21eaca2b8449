//! Shared vocabulary of vmctl: the varlink interface, its types and errors,
//! well-known names and paths, VM name rules and D-Bus object path escaping.
//!
//! Everything here is plain data and pure functions, so the daemon, the CLI,
//! the NSS module and the tests can depend on it without pulling in a runtime.

#![warn(missing_docs)]

#[cfg(feature = "client")]
pub mod client;
pub mod errors;
pub mod guest_credentials;
pub mod idl;
pub mod names;
pub mod object_path;
pub mod render;
pub mod sizes;
pub mod spec;
pub mod ssh_keys;
pub mod types;
pub mod vm_name;

pub use errors::ErrorReply;
pub use object_path::{bus_label_escape, bus_label_unescape, vm_object_path};
pub use types::{
    CreateParams, DetailsReply, GetVersionReply, ListParams, ListReply, NameParams, Vm, VmDetails,
};
pub use vm_name::{validate_vm_name, InvalidVmName, VM_NAME_MAX_LEN};
