//! Child-process plumbing shared by the drivers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::{io_err, Error, Result};

/// First executable named `name` on `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Start `program args` directly (no shell). stdin is closed; stdout and
/// stderr are inherited so they land in the unit's journal. The child is
/// killed if its handle is dropped.
pub(crate) fn spawn(program: &Path, args: &[OsString]) -> Result<Child> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.display().to_string(),
            source,
        })
}

/// Wait until `socket` exists, failing early if `child` exits.
pub(crate) async fn wait_for_socket(
    child: &mut Child,
    program: &str,
    socket: &Path,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Some(status) = child
            .try_wait()
            .map_err(io_err(format!("checking on {program}")))?
        {
            return Err(Error::ExitedEarly {
                program: program.into(),
                status,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{program} to create {}",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Remove a stale socket file left by a previous run.
pub(crate) fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing stale {}", path.display()))(e)),
    }
}

/// SIGKILL and reap `child`, ignoring "already exited".
pub(crate) async fn kill(child: &mut Child) -> Result<()> {
    match child.kill().await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(io_err("killing child")(e)),
    }
}
