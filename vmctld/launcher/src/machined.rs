//! Step 6: register the VM with systemd-machined (`machinectl list`).

/// Registers VM `name` with machine ID `id`, led by the VMM process `leader`.
///
/// machined drops the registration itself when the unit stops.
pub async fn register(name: &str, id: [u8; 16], leader: u32) -> Result<(), String> {
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| format!("no system bus: {e}"))?;
    conn.call_method(
        Some("org.freedesktop.machine1"),
        "/org/freedesktop/machine1",
        Some("org.freedesktop.machine1.Manager"),
        "RegisterMachine",
        &(name, id.to_vec(), "vmctl", "vm", leader, ""),
    )
    .await
    .map_err(|e| format!("RegisterMachine failed: {e}"))?;
    Ok(())
}
