//! The listening socket: passed by systemd (`vmctl-ssh.socket`,
//! `Accept=no`, so one process serves every connection), or bound by the
//! gateway itself for development (`--listen`).
//!
//! `LISTEN_FDS` is read by hand rather than with a crate: it is three
//! environment variables and one `fcntl`-free descriptor adoption, and the
//! checks matter (the descriptors must be meant for this process, and
//! must be a listening stream socket).

use std::{
    net::TcpListener,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{bail, Context};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Takes the listening socket systemd passed, if any. Unsets the
/// variables so that child processes do not see them.
pub fn from_systemd() -> anyhow::Result<Option<TcpListener>> {
    let Some(fds) = std::env::var_os("LISTEN_FDS") else {
        return Ok(None);
    };
    let pid = std::env::var("LISTEN_PID").unwrap_or_default();
    // SAFETY: single-threaded at this point (called before the runtime
    // starts); no other code reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid != std::process::id().to_string() {
        bail!("LISTEN_PID={pid} is not this process: the sockets are not meant for it");
    }
    let fds = fds.to_string_lossy();
    let count: i32 = fds
        .parse()
        .with_context(|| format!("LISTEN_FDS={fds} is not a number"))?;
    if count != 1 {
        bail!("LISTEN_FDS={count}: expected exactly one socket (vmctl-ssh.socket has one ListenStream=)");
    }
    // SAFETY: systemd passed descriptor 3 to this process (LISTEN_PID
    // checked above) and nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    let listener = TcpListener::from(fd);
    listener
        .local_addr()
        .context("the socket systemd passed is not a TCP socket")?;
    Ok(Some(listener))
}

/// The listener to serve: systemd's, else one bound to `listen`.
pub fn listener(listen: Option<&str>) -> anyhow::Result<TcpListener> {
    if let Some(listener) = from_systemd()? {
        return Ok(listener);
    }
    let Some(addr) = listen else {
        bail!("no socket from systemd (LISTEN_FDS) and no --listen ADDRESS given");
    };
    TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))
}
