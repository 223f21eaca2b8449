//! The QEMU driver through the `Vmm` trait, with a real QEMU (TCG).
//!
//! No guest kernel is available here, so the test writes a 48-byte multiboot
//! image (header + `hlt; jmp` loop) that QEMU's `-kernel` loads directly: enough
//! to exercise spawn, boot, pause, resume, power button, info, shutdown and wait.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use vmctl_vmm::qemu::{QemuBinaries, QemuVm};
use vmctl_vmm::{Error, VmConfig, VmState, Vmm};

fn qemu_present() -> bool {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A flat multiboot (v1, "a.out kludge") kernel loaded at 1 MiB that halts forever.
fn write_halt_kernel(path: &Path) {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 1 << 16; // address fields below are valid
    const BASE: u32 = 0x0010_0000;
    let mut img = Vec::new();
    for word in [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)), // checksum
        BASE,                                         // header_addr
        BASE,                                         // load_addr
        0,                                            // load_end_addr: whole file
        0,                                            // bss_end_addr: none
        BASE + 32,                                    // entry_addr
    ] {
        img.extend_from_slice(&word.to_le_bytes());
    }
    img.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp back to hlt
    img.resize(48, 0);
    std::fs::write(path, img).unwrap();
}

fn config(dir: &Path) -> VmConfig {
    serde_json::from_value(json!({
        "name": "qemu-test",
        "vcpus": 1,
        "memory_bytes": 128u64 << 20,
        "kernel": dir.join("halt.kernel"),
        "cmdline": "console=ttyS0",
        "serial_socket": dir.join("serial.sock"),
        "credentials": [{"name": "firstboot.locale", "value": "C.UTF-8"}],
        "runtime_dir": dir.join("run"),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_vm_lifecycle_through_the_trait() {
    if !qemu_present() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (Debian package qemu-system-x86); QEMU driver not exercised");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    write_halt_kernel(&cfg.kernel);

    let mut vm = QemuVm::spawn(&cfg).await.expect("spawn qemu");
    let mut events = vm.take_events().unwrap();
    assert!(vm.pid().is_some());
    assert!(
        cfg.serial_socket.as_ref().unwrap().exists(),
        "serial socket missing"
    );
    assert_eq!(vm.info().await.unwrap(), VmState::Created);

    vm.boot().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Running);
    vm.pause().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Paused);
    vm.resume().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Running);

    vm.power_button().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.recv().await {
            if ev.event == "POWERDOWN" {
                return;
            }
        }
        panic!("event stream ended without POWERDOWN");
    })
    .await
    .expect("POWERDOWN event");

    vm.shutdown().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), vm.wait())
        .await
        .expect("qemu exits after shutdown")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn missing_vsock_helper_is_a_clear_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.vsock = Some(vmctl_vmm::Vsock {
        cid: 3,
        socket: dir.path().join("vsock"),
    });
    let bins = QemuBinaries {
        qemu: "qemu-system-x86_64".into(),
        vhost_device_vsock: dir.path().join("no-such-vhost-device-vsock"),
    };
    let err = QemuVm::spawn_with(&cfg, &bins).await.unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no-such-vhost-device-vsock"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_config_is_rejected_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.vcpus = 0;
    let err = QemuVm::spawn(&cfg).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(!cfg.runtime_dir.exists());
}

/// `vhost-device-vsock`: `$VHOST_DEVICE_VSOCK`, else on PATH or in cargo's bin directory.
fn vhost_device_vsock() -> Option<std::path::PathBuf> {
    if let Some(explicit) = std::env::var_os("VHOST_DEVICE_VSOCK") {
        return Some(explicit.into());
    }
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("vhost-device-vsock"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_vm_with_vhost_user_vsock_helper() {
    if !qemu_present() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; vsock wiring not exercised");
        return;
    }
    let Some(helper) = vhost_device_vsock() else {
        eprintln!("SKIPPED: vhost-device-vsock not found (set VHOST_DEVICE_VSOCK or cargo install vhost-device-vsock); vsock wiring not exercised");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.vsock = Some(vmctl_vmm::Vsock {
        cid: 3,
        socket: dir.path().join("vm.vsock"),
    });
    write_halt_kernel(&cfg.kernel);
    let bins = QemuBinaries {
        vhost_device_vsock: helper,
        ..QemuBinaries::default()
    };
    // QEMU only starts when it can connect to the helper's vhost-user socket
    // and map the shared memfd guest memory.
    let mut vm = QemuVm::spawn_with(&cfg, &bins)
        .await
        .expect("spawn qemu + helper");
    // (the helper unlinks its vhost-user socket once QEMU has connected)
    vm.boot().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Running);
    // The hybrid-vsock host socket appears once the device is set up.
    let host_sock = cfg.vsock.as_ref().unwrap().socket.clone();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !host_sock.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("helper never created the hybrid vsock socket");
    vm.shutdown().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), vm.wait())
        .await
        .expect("qemu exits after shutdown")
        .unwrap();
    assert!(status.success(), "{status}");
}
