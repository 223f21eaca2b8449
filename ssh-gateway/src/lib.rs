//! `vmctl-ssh`, the SSH gateway of vmctl: a user with nothing but an SSH
//! client manages their VMs (`ssh -p 2222 HOST ls`) and lands in one of
//! them (`ssh -p 2222 NAME@HOST`).
//!
//! The gateway is an unprivileged, socket-activated service (user
//! `vmctl-ssh`). It holds no rights of its own over VMs: it asks vmctld
//! who owns the public key a client proved (`io.vmctl.Gateway.LookupSSHKey`)
//! and then makes every `io.vmctl.Manager` call with `onBehalfOf` that
//! user, so the user gets exactly what `vmctl` would give them (their own
//! VMs, creates under their quota). See docs/architecture.md, "SSH gateway".
//!
//! Modules, one concept each:
//! - [`activation`]: the listening socket from systemd (`LISTEN_FDS`).
//! - [`keys`]: the gateway's host key and its client key for guests.
//! - [`limits`]: rate, session and channel limits and their messages.
//! - [`idle`]: the idle timeout's clock and the stream that feeds it.
//! - [`routing`]: what an SSH user name means (a command or a VM).
//! - [`commands`]: command mode (`new`, `ls`, `rm`, ...).
//! - [`registration`]: `register NAME` for a key nobody registered.
//! - [`vmctld`]: the calls to vmctld.
//! - [`proxy`]: the SSH connection to a guest and the channel bridge.
//! - [`server`]: the SSH server tying them together.

pub mod activation;
pub mod commands;
pub mod idle;
pub mod keys;
pub mod limits;
pub mod proxy;
pub mod registration;
pub mod routing;
pub mod server;
pub mod vmctld;
