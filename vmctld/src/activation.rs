//! Getting the varlink listening socket: from systemd (socket activation,
//! `LISTEN_FDS`/`LISTEN_PID`) or by binding the path ourselves.

use std::{
    fs,
    io::ErrorKind,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{
            fs::{FileTypeExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

/// Where the listener came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd (socket activation); systemd owns the path.
    Activated,
    /// Bound by vmctld at this path; vmctld removes it on exit.
    Bound(PathBuf),
}

/// Takes the socket passed by systemd if there is one, otherwise binds
/// `path`. The environment variables are unset so children don't inherit
/// them.
pub fn varlink_listener(path: &Path) -> anyhow::Result<(UnixListener, Origin)> {
    let mut fds = sd_notify::listen_fds().context("invalid socket activation environment")?;
    if let Some(fd) = fds.next() {
        if fds.next().is_some() {
            bail!("systemd passed more than one socket; vmctld.socket must have exactly one ListenStream=");
        }
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
        // matched) and nothing else in the process knows about it, so we
        // take sole ownership of it here, exactly once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = UnixListener::from(owned);
        listener
            .local_addr()
            .context("the socket passed by systemd is not a Unix socket")?;
        listener.set_nonblocking(true)?;
        return Ok((listener, Origin::Activated));
    }
    let listener = bind(path)?;
    Ok((listener, Origin::Bound(path.to_path_buf())))
}

/// Binds `path`, replacing a stale socket file but never a live one.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                bail!("another process is already serving {}", path.display());
            }
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // Anyone may connect; what they may do is decided per call (polkit).
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
