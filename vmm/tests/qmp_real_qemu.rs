//! The QMP client against a real QEMU (TCG, no guest kernel needed).

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use vmctl_vmm::qemu::{Qmp, QmpEvent};

const QEMU: &str = "qemu-system-x86_64";

fn qemu_present() -> bool {
    std::process::Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn next_event(events: &mut tokio::sync::mpsc::Receiver<QmpEvent>, name: &str) -> QmpEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = events.recv().await.expect("event channel closed");
            if ev.event == name {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} event within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qmp_lifecycle_against_real_qemu() {
    if !qemu_present() {
        eprintln!("SKIPPED: {QEMU} is not installed (Debian package qemu-system-x86); QMP client not exercised");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let mut qmp_arg = std::ffi::OsString::from("unix:");
    qmp_arg.push(&sock);
    qmp_arg.push(",server=on,wait=off");
    let mut child = Command::new(QEMU)
        .args(["-machine", "q35,accel=tcg", "-m", "128M"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-S"])
        .arg("-qmp")
        .arg(&qmp_arg)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu");

    let (qmp, mut events) = Qmp::connect_with_retry(&sock, Duration::from_secs(30))
        .await
        .expect("QMP handshake");

    let st = qmp.query_status().await.unwrap();
    assert!(!st.running);
    assert!(st.status == "prelaunch" || st.status == "paused", "{st:?}");

    qmp.cont().await.unwrap();
    next_event(&mut events, "RESUME").await;
    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.running, st.status.as_str()), (true, "running"));

    qmp.stop().await.unwrap();
    next_event(&mut events, "STOP").await;
    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "paused"));

    qmp.cont().await.unwrap();
    qmp.system_powerdown().await.unwrap();
    next_event(&mut events, "POWERDOWN").await;

    // A QMP error carries the socket, the command, the class and the description.
    let err = qmp.execute("no-such-command", None).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("CommandNotFound"), "{text}");
    assert!(text.contains("no-such-command"), "{text}");
    assert!(text.contains(sock.to_str().unwrap()), "{text}");

    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("qemu did not exit after quit")
        .unwrap();
    assert!(status.success(), "{status}");
    next_event(&mut events, "SHUTDOWN").await;
}

#[tokio::test]
async fn qmp_connect_error_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    let err = Qmp::connect(&sock).await.unwrap_err();
    assert!(err.to_string().contains(sock.to_str().unwrap()), "{err}");
}
