//! The real vmctld binary killed with SIGKILL in the middle of a create,
//! right after the create made its data volume: the restarted vmctld
//! undoes the create at its start, the data volume with it, and `Doctor`
//! then finds nothing (no systemd here: `--no-dbus`).

mod common;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{call, is_root, wait_until_connectable, Daemon, KillOnDrop, VMCTLD};
use serde_json::{json, Value};

/// Image `default`: a sparse 64 MiB root disk and a kernel file.
fn make_image(state: &Path) {
    let dir = state.join("images/default");
    fs::create_dir_all(&dir).unwrap();
    fs::File::create(dir.join("root.raw"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
}

#[tokio::test]
async fn a_create_killed_after_making_its_data_volume_leaves_no_volume() {
    if !is_root() {
        eprintln!("skipped: Create as root needs a root test run");
        return;
    }
    let mut daemon = Daemon::start();
    let dir = daemon.dir.path().to_path_buf();
    let state = dir.join("state");
    make_image(&state);
    let volume = state.join("volumes/crash.raw");

    let socket = daemon.socket.clone();
    // A 4 GiB data volume: its mkfs, the root clone and the host key come
    // after the file exists, so the kill lands inside the create.
    let create = tokio::spawn(async move {
        call(
            &socket,
            "io.vmctl.Manager.Create",
            Some(
                json!({ "name": "crash", "memory_bytes": 256u64 << 20, "data_bytes": 4u64 << 30 }),
            ),
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !volume.exists() {
        assert!(Instant::now() < deadline, "the create made no data volume");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    // The client got no answer (its connection broke: the helper panics).
    let answer = create.await;
    assert!(
        answer.is_err(),
        "the create answered before the kill: {answer:?}"
    );
    assert!(
        volume.exists(),
        "the kill came before the volume was undone"
    );

    // Restarted on the same state: the create is undone at start.
    let log = dir.join("restarted.log");
    let socket = dir.join("io.vmctl.Manager.2");
    let mut restarted = KillOnDrop(
        Command::new(VMCTLD)
            .arg("--varlink-address")
            .arg(&socket)
            .arg("--state-directory")
            .arg(&state)
            .arg("--runtime-directory")
            .arg(dir.join("run"))
            .arg("--config")
            .arg(dir.join("vmctl.conf"))
            .arg("--no-dbus")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until_connectable(&socket, &mut restarted.0);
    // Served only after the reconciliation at start (the socket is bound
    // earlier).
    let list = call(&socket, "io.vmctl.Manager.List", None).await.unwrap();
    assert_eq!(list["vms"], json!([]), "{list}");
    let journal = fs::read_to_string(&log).unwrap();
    assert!(
        journal.contains("reconcile: interrupted-create vm=crash"),
        "{journal}"
    );
    assert!(!volume.exists(), "the data volume is still there");
    assert!(!state.join("disks/crash").exists());
    assert!(!state.join("vms/crash.json").exists());
    let volumes = call(&socket, "io.vmctl.Manager.ListVolumes", None)
        .await
        .unwrap();
    assert_eq!(volumes["volumes"], json!([]), "{volumes}");
    let doctor: Value = call(&socket, "io.vmctl.Manager.Doctor", None)
        .await
        .unwrap();
    assert_eq!(doctor["findings"], json!([]), "{doctor}");

    // The name and the volume name are free again.
    let again = call(
        &socket,
        "io.vmctl.Manager.Create",
        Some(json!({ "name": "crash", "memory_bytes": 256u64 << 20, "data_bytes": 64u64 << 20 })),
    )
    .await
    .unwrap();
    assert_eq!(again["vm"]["name"], "crash");
    assert!(volume.exists());
}
