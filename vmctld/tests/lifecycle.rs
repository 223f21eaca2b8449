//! The real vmctld binary creating, describing and removing VMs in a temp
//! state directory (no systemd here: `--no-dbus`, so the unit limits and
//! start/stop are not exercised; those are tested in the dev host by
//! `tests/tests/vm.rs`).

mod common;

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use common::{call, Daemon};
use serde_json::{json, Value};

/// Writes image `name` with a sparse 256 MiB root disk holding a little data.
fn make_image(state: &Path, name: &str) {
    let dir = state.join("images").join(name);
    fs::create_dir_all(&dir).unwrap();
    let root = fs::File::create(dir.join("root.raw")).unwrap();
    root.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&root, b"ext4-ish", 1 << 20).unwrap();
    fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
    fs::write(dir.join("initrd.img"), b"initrd").unwrap();
}

/// The names under `state/{vms,disks}`.
fn vm_files(state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in ["vms", "disks"] {
        if let Ok(entries) = fs::read_dir(state.join(sub)) {
            for e in entries {
                found.push(format!(
                    "{sub}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
    }
    found.sort();
    found
}

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

async fn create(daemon: &Daemon, params: Value) -> Result<Value, vmctl_api::ErrorReply> {
    call(&daemon.socket, "io.vmctl.Manager.Create", Some(params)).await
}

#[tokio::test]
async fn create_describe_remove() {
    if !is_root() {
        eprintln!("skipped: Create is root-only for now and this test is not root");
        return;
    }
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    make_image(&state, "default");

    let vm = create(
        &daemon,
        json!({"name": "blog", "vcpus": 2, "memory_bytes": 512u64 << 20, "disk_bytes": 1u64 << 30}),
    )
    .await
    .unwrap()["vm"]
        .clone();
    assert_eq!(vm["name"], "blog");
    assert_eq!(vm["unit"], "vm@blog.service");
    assert_eq!(vm["cid"], 3);
    assert_eq!(vm["image"], "default");
    assert_eq!(vm["vmm"], "auto");
    assert_eq!(vm["state"], "unknown");

    // The spec is what the launcher reads; the disk is a sparse copy.
    let spec: vmctl_api::spec::VmSpec =
        serde_json::from_str(&fs::read_to_string(state.join("vms/blog.json")).unwrap()).unwrap();
    assert_eq!((spec.vcpus, spec.memory_bytes, spec.cid), (2, 512 << 20, 3));
    assert_eq!(spec.id, vm["id"]);
    let disk = fs::metadata(state.join("disks/blog/root.raw")).unwrap();
    assert_eq!(disk.len(), 1 << 30);
    assert!(
        disk.blocks() * 512 < 4 << 20,
        "copy is not sparse: {disk:?}"
    );
    let data = fs::read(state.join("disks/blog/root.raw")).unwrap();
    assert_eq!(&data[1 << 20..(1 << 20) + 8], b"ext4-ish");

    let described = call(
        &daemon.socket,
        "io.vmctl.Manager.Describe",
        Some(json!({"name": "blog"})),
    )
    .await
    .unwrap();
    assert_eq!(described["vm"], vm);

    let e = create(&daemon, json!({"name": "blog"})).await.unwrap_err();
    assert_eq!(e.error, "io.vmctl.Manager.VMExists");

    // The second VM gets the next CID, and the listing shows both.
    let web = create(&daemon, json!({"name": "web"})).await.unwrap();
    assert_eq!(web["vm"]["cid"], 4);
    let list = call(&daemon.socket, "io.vmctl.Manager.List", None)
        .await
        .unwrap();
    assert_eq!(list["vms"].as_array().unwrap().len(), 2);

    for name in ["blog", "web"] {
        call(
            &daemon.socket,
            "io.vmctl.Manager.Remove",
            Some(json!({"name": name})),
        )
        .await
        .unwrap();
    }
    assert_eq!(vm_files(&state), Vec::<String>::new());
    let e = call(
        &daemon.socket,
        "io.vmctl.Manager.Remove",
        Some(json!({"name": "blog"})),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "io.vmctl.Manager.NoSuchVM");
}

#[tokio::test]
async fn bad_input_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: Create is root-only for now and this test is not root");
        return;
    }
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    make_image(&state, "default");
    let cases = [
        (json!({"name": "../x"}), "io.vmctl.Manager.InvalidName"),
        (json!({"name": "-rf"}), "io.vmctl.Manager.InvalidName"),
        (
            json!({"name": "x", "image": "nosuchimage"}),
            "io.vmctl.Manager.NoSuchImage",
        ),
        (
            json!({"name": "x", "memory_bytes": 100u64 << 40}),
            "io.vmctl.Manager.InvalidSize",
        ),
        (
            json!({"name": "x", "vcpus": 1000}),
            "io.vmctl.Manager.InvalidSize",
        ),
        (
            json!({"name": "x", "disk_bytes": 1u64 << 20}),
            "io.vmctl.Manager.InvalidSize",
        ),
    ];
    for (params, error) in cases {
        let e = create(&daemon, params.clone()).await.unwrap_err();
        assert_eq!(e.error, error, "{params}: {e}");
    }
    let e = create(&daemon, json!({"name": "x", "memory_bytes": 100u64 << 40}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exceeds this host's"), "{e}");
    assert_eq!(vm_files(&state), Vec::<String>::new());
}

#[tokio::test]
async fn without_systemd_start_says_so() {
    if !is_root() {
        return;
    }
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    make_image(&state, "default");
    create(&daemon, json!({"name": "blog"})).await.unwrap();
    let e = call(
        &daemon.socket,
        "io.vmctl.Manager.Start",
        Some(json!({"name": "blog"})),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "io.vmctl.Manager.InternalError");
    assert!(e.to_string().contains("systemd"), "{e}");
    let e = call(
        &daemon.socket,
        "io.vmctl.Manager.Start",
        Some(json!({"name": "ghost"})),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "io.vmctl.Manager.NoSuchVM");
}
