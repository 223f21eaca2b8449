//! Helpers shared by the integration tests: run the real vmctld binary.

#![allow(dead_code)]

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;
use vmctl_api::ErrorReply;
use zlink::Call;

/// The vmctld binary under test.
pub const VMCTLD: &str = env!("CARGO_BIN_EXE_vmctld");

/// A running vmctld, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts vmctld with `--no-dbus` on a socket in a fresh temp dir.
    pub fn start() -> Daemon {
        Self::start_with(&["--no-dbus"])
    }

    /// Starts vmctld on a socket in a fresh temp dir with extra arguments.
    pub fn start_with(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("io.vmctl.Manager");
        let child = Command::new(VMCTLD)
            .arg("--varlink-address")
            .arg(&socket)
            .arg("--state-directory")
            .arg(dir.path().join("state"))
            .args(extra)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, dir, socket };
        daemon.wait_for_socket();
        daemon
    }

    /// Waits until the socket accepts connections.
    pub fn wait_for_socket(&mut self) {
        wait_until_connectable(&self.socket, &mut self.child);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `socket` until it accepts a connection; panics if `child` exits
/// or 20 s pass.
pub fn wait_until_connectable(socket: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if UnixStream::connect(socket).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vmctld exited early: {status}");
        }
        assert!(Instant::now() < deadline, "vmctld did not listen in time");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A varlink method call as a zlink client sends it.
#[derive(Debug, Serialize)]
pub struct Method {
    pub method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// Calls `method` with zlink and returns the reply parameters or error.
pub async fn call(
    socket: &Path,
    method: &'static str,
    parameters: Option<Value>,
) -> Result<Value, ErrorReply> {
    let mut conn = zlink::tokio::unix::connect(socket).await.unwrap();
    let call = Call::new(Method { method, parameters });
    let (reply, _fds) = conn
        .call_method::<_, Value, ErrorReply>(&call, Vec::new())
        .await
        .unwrap();
    reply.map(|r| r.into_parameters().unwrap_or(Value::Null))
}
