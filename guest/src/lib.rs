//! The vmctl guest agent: its wire protocol ([`protocol`], documented byte by
//! byte in `PROTOCOL.md`), the host-side client ([`client`]) used by vmctl
//! and the launcher, the agent's own request handling ([`agent`]) and its
//! PID-1 mode for images without an init ([`init`]).

#![warn(missing_docs)]

pub mod agent;
pub mod client;
pub mod files;
pub mod hello;
pub mod init;
pub mod protocol;

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The host vsock port the agent says hello to when the guest is up.
pub const HELLO_PORT: u32 = 1025;

/// The vsock CID of the host.
pub const HOST_CID: u32 = 2;
