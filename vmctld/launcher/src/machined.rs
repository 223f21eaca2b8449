//! Step 6: register the VM with systemd-machined (`machinectl list`).

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
