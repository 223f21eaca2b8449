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
        Self::spawn(extra, false)
    }

    /// Like [`Daemon::start_with`], logging at `info` to [`Daemon::log`]
    /// instead of stderr.
    pub fn start_logged(extra: &[&str]) -> Daemon {
        Self::spawn(extra, true)
    }

    fn spawn(extra: &[&str], logged: bool) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("io.vmctl.Manager");
        let mut cmd = Command::new(VMCTLD);
        cmd.arg("--varlink-address")
            .arg(&socket)
            .arg("--state-directory")
            .arg(dir.path().join("state"))
            // Never the machine's /run/vmctl or /etc/vmctl.
            .arg("--runtime-directory")
            .arg(dir.path().join("run"))
            .arg("--config")
            .arg(dir.path().join("vmctl.conf"))
            .args(extra)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        if logged {
            let log = std::fs::File::create(dir.path().join("vmctld.log")).unwrap();
            cmd.env("RUST_LOG", "info").stderr(log);
        }
        let child = cmd.spawn().unwrap();
        let mut daemon = Daemon { child, dir, socket };
        daemon.wait_for_socket();
        daemon
    }

    /// What a daemon started with [`Daemon::start_logged`] logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmctld.log")).unwrap_or_default()
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

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// A private dbus-daemon, killed when dropped.
pub struct Bus {
    pub child: Child,
    pub address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a private bus; `None` (and SKIPPED on stderr) when dbus-daemon is
/// not installed.
pub fn start_bus() -> Option<Bus> {
    use std::io::{BufRead, BufReader};
    let mut child = match Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("SKIPPED: cannot run dbus-daemon: {e}");
            return None;
        }
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().to_string();
    assert!(!address.is_empty(), "dbus-daemon printed no address");
    Some(Bus { child, address })
}

/// The object path systemd gives `unit` (its name escaped as a bus label).
pub fn unit_path(unit: &str) -> zbus::zvariant::OwnedObjectPath {
    let escaped: String = unit
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("_{b:02x}"),
        })
        .collect();
    zbus::zvariant::OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}"))
        .unwrap()
}

/// Writes the spec file and a dummy root disk of a VM `name` owned by root
/// under `state`; returns their paths.
pub fn write_vm(state: &Path, name: &str, cid: u32) -> (PathBuf, PathBuf) {
    let spec = state.join("vms").join(format!("{name}.json"));
    let disk = state.join("disks").join(name).join("root.raw");
    std::fs::create_dir_all(spec.parent().unwrap()).unwrap();
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    std::fs::write(
        &spec,
        serde_json::json!({"name":name,"id":"0123456789abcdef0123456789abcdef","owner_uid":0,"vcpus":1,
               "memory_bytes":536870912u64,"disk_bytes":1048576u64,"image":"default",
               "vmm":"qemu","cid":cid})
        .to_string(),
    )
    .unwrap();
    std::fs::write(&disk, b"disk").unwrap();
    (spec, disk)
}

/// Waits until `name` has an owner on the bus of `conn` (20 s at most).
pub async fn wait_for_name(conn: &zbus::Connection, name: &str, daemon: &mut Daemon) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
    let name = zbus::names::BusName::try_from(name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dbus.name_has_owner(name.clone()).await.unwrap() {
        assert!(daemon.is_running(), "vmctld exited");
        assert!(Instant::now() < deadline, "vmctld did not take {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the tests run as root (a file made now is owned by uid 0).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid() == 0
}
