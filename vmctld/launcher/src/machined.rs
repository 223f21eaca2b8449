//! Step 6: register the VM with systemd-machined (`machinectl list`).
//!
//! The launcher's own mount namespace has no system bus (the VMM shares it
//! and must not reach the bus), so the registration is a separate step,
//! `vmctl-launch --register-machine NAME`, which the unit runs as
//! `ExecStartPost=-+` (root, outside the sandbox) once the VM is ready. The
//! launcher leaves it the leader's PID and the TAP's interface index in a
//! root-owned file in the runtime directory ([`write_record`]); the step
//! believes it only if root owns it and the leader is a child of the
//! unit's main process ([`read_record`]).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Joins PID 1's mount namespace. systemd starts even `+` commands in the
/// unit's mount namespace (observed with systemd 257), where `/run` has no
/// bus; the `+` command has the privileges (`CAP_SYS_ADMIN`,
/// `CAP_SYS_CHROOT`) to leave it. Called while the process has one thread.
pub fn enter_host_mount_namespace() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open("/proc/1/ns/mnt")?;
    // SAFETY: setns(2) on a descriptor we own, no memory passed.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where the launcher leaves the registration record of VM `name`.
pub fn record_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("machine")
}

/// Writes the record: `LEADER IFINDEX...` on one line, mode 0600, created
/// anew (the VMM can create files in the runtime directory, not replace
/// root's: it is sticky).
pub fn write_record(path: &Path, leader: u32, ifindices: &[i32]) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut line = leader.to_string();
    for i in ifindices {
        line.push_str(&format!(" {i}"));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(format!("{line}\n").as_bytes())
}

/// Reads the record and checks it: a regular file owned by root (not a
/// link), a leader whose parent is `main_pid`.
pub fn read_record(path: &Path, main_pid: u32) -> Result<(u32, Vec<i32>), String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("no record at {}: {e}", path.display()))?;
    if !meta.is_file() || meta.uid() != 0 {
        return Err(format!("{} is not a file of root's", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut words = text.split_whitespace();
    let leader: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("{}: no leader PID", path.display()))?;
    let ifindices = words
        .map(|w| w.parse::<i32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad interface index: {e}", path.display()))?;
    let status = std::fs::read_to_string(format!("/proc/{leader}/status"))
        .map_err(|e| format!("leader {leader}: {e}"))?;
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    if ppid != Some(main_pid) {
        return Err(format!(
            "leader {leader} is not a child of the launcher {main_pid} (parent {ppid:?})"
        ));
    }
    Ok((leader, ifindices))
}

/// Registers VM `name` with machine ID `id`, led by the VMM process `leader`,
/// with its network interfaces `ifindices` (`RegisterMachineWithNetwork`,
/// so `machinectl status` shows them), on the system bus.
///
/// machined drops the registration itself when the unit stops.
pub async fn register(
    name: &str,
    id: [u8; 16],
    leader: u32,
    ifindices: &[i32],
) -> Result<(), String> {
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| format!("no system bus: {e}"))?;
    register_on(&conn, name, id, leader, ifindices).await
}

/// [`register`] on a given bus connection.
async fn register_on(
    conn: &zbus::Connection,
    name: &str,
    id: [u8; 16],
    leader: u32,
    ifindices: &[i32],
) -> Result<(), String> {
    conn.call_method(
        Some("org.freedesktop.machine1"),
        "/org/freedesktop/machine1",
        Some("org.freedesktop.machine1.Manager"),
        "RegisterMachineWithNetwork",
        // name, id, service, class, leader, root_directory, ifindices: "sayssusai".
        &(
            name,
            id.to_vec(),
            "vmctl",
            "vm",
            leader,
            "",
            ifindices.to_vec(),
        ),
    )
    .await
    .map_err(|e| format!("RegisterMachineWithNetwork failed: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    type Call = (String, Vec<u8>, String, String, u32, String, Vec<i32>);

    /// Stands in for machined's `Manager.RegisterMachineWithNetwork`.
    struct FakeMachined(Arc<Mutex<Vec<Call>>>);

    #[zbus::interface(name = "org.freedesktop.machine1.Manager")]
    impl FakeMachined {
        #[allow(clippy::too_many_arguments)]
        async fn register_machine_with_network(
            &self,
            name: String,
            id: Vec<u8>,
            service: String,
            class: String,
            leader: u32,
            root_directory: String,
            ifindices: Vec<i32>,
        ) -> zbus::zvariant::OwnedObjectPath {
            self.0.lock().unwrap().push((
                name,
                id,
                service,
                class,
                leader,
                root_directory,
                ifindices,
            ));
            zbus::zvariant::OwnedObjectPath::try_from("/org/freedesktop/machine1/machine/t1")
                .unwrap()
        }
    }

    /// A real dbus-daemon on a private socket, a fake machined on it, and
    /// the launcher's call checked argument by argument.
    #[tokio::test]
    async fn register_machine_call() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(mut daemon) = Command::new("dbus-daemon")
            .arg("--session")
            .arg("--nofork")
            .arg("--print-address=1")
            .arg(format!(
                "--address=unix:path={}",
                dir.path().join("bus").display()
            ))
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("SKIPPED: dbus-daemon is not installed");
            return;
        };
        let mut address = String::new();
        std::io::BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let _machined = zbus::connection::Builder::address(address.trim())
            .unwrap()
            .name("org.freedesktop.machine1")
            .unwrap()
            .serve_at("/org/freedesktop/machine1", FakeMachined(calls.clone()))
            .unwrap()
            .build()
            .await
            .unwrap();
        let launcher = zbus::connection::Builder::address(address.trim())
            .unwrap()
            .build()
            .await
            .unwrap();
        let id = crate::inputs::machine_id_bytes("0123456789abcdef0123456789abcdef").unwrap();
        register_on(&launcher, "t1", id, 4242, &[17]).await.unwrap();
        let _ = daemon.kill();
        let _ = daemon.wait();
        let calls = calls.lock().unwrap();
        assert_eq!(
            *calls,
            [(
                "t1".to_string(),
                id.to_vec(),
                "vmctl".to_string(),
                "vm".to_string(),
                4242,
                String::new(),
                vec![17]
            )]
        );
    }
}
