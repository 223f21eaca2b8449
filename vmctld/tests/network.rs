//! The real vmctld binary allocating addresses, MACs and SSH host keys:
//! concurrent creates over varlink never collide, rm frees, List and
//! Describe show what was allocated, bad keys create nothing, and the NSS
//! records and known hosts follow create and rm. (D-Bus List/Describe of
//! the same fields: `tests/dbus.rs`.)

mod common;

use std::{collections::HashSet, fs, os::unix::fs::MetadataExt, path::Path};

use common::{call, Daemon};
use serde_json::{json, Value};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e me@host";

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Image `default` with a small sparse root disk.
fn make_image(state: &Path) {
    let dir = state.join("images/default");
    fs::create_dir_all(&dir).unwrap();
    fs::File::create(dir.join("root.raw"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
}

async fn create(daemon: &Daemon, params: Value) -> Result<Value, vmctl_api::ErrorReply> {
    call(&daemon.socket, "io.vmctl.Manager.Create", Some(params))
        .await
        .map(|reply| reply["vm"].clone())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_never_collide_and_rm_frees() {
    if !is_root() {
        eprintln!("SKIPPED: Create is root-only for now and this test is not root");
        return;
    }
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    let run = daemon.dir.path().join("run");
    make_image(&state);

    let mut tasks = Vec::new();
    for i in 0..50 {
        let socket = daemon.socket.clone();
        tasks.push(tokio::spawn(async move {
            let params = json!({"name": format!("vm{i}"), "memory_bytes": 256u64 << 20,
                                "ssh_authorized_keys": [KEY]});
            call(&socket, "io.vmctl.Manager.Create", Some(params))
                .await
                .map(|reply| reply["vm"].clone())
        }));
    }
    let mut vms = Vec::new();
    for task in tasks {
        vms.push(task.await.unwrap().expect("create"));
    }
    let unique = |key: &str| {
        let values: HashSet<String> = vms.iter().map(|vm| vm[key].to_string()).collect();
        assert!(vms.iter().all(|vm| !vm[key].is_null()), "{key} missing");
        values.len()
    };
    for key in ["cid", "mac", "ipv4", "ipv6"] {
        assert_eq!(unique(key), 50, "duplicate {key}");
    }
    // Lowest free: exactly .2 to .51 (and ::2 to ::51, hex) were handed out.
    let v4: HashSet<String> = vms
        .iter()
        .map(|vm| vm["ipv4"].as_str().unwrap().into())
        .collect();
    let expected: HashSet<String> = (2..52).map(|n| format!("10.77.0.{n}")).collect();
    assert_eq!(v4, expected);

    // List and Describe over varlink show the same addresses and MAC.
    let list = call(&daemon.socket, "io.vmctl.Manager.List", None)
        .await
        .unwrap();
    let listed = list["vms"].as_array().unwrap();
    assert_eq!(listed.len(), 50);
    let vm7 = vms.iter().find(|vm| vm["name"] == "vm7").unwrap();
    let row = listed.iter().find(|vm| vm["name"] == "vm7").unwrap();
    for key in ["ipv4", "ipv6", "mac"] {
        assert_eq!(row[key], vm7[key], "List {key}");
    }
    let described = call(
        &daemon.socket,
        "io.vmctl.Manager.Describe",
        Some(json!({"name": "vm7"})),
    )
    .await
    .unwrap()["vm"]
        .clone();
    assert_eq!(&described, vm7);
    assert_eq!(described["ssh_authorized_keys"], json!([KEY]));

    // Published for NSS and ssh: one name record per VM, one known-hosts
    // line per VM naming its addresses.
    assert_eq!(entries(&run.join("hosts/name")).len(), 50);
    let known = fs::read_to_string(run.join("ssh_known_hosts")).unwrap();
    let line = format!(
        "vm7.vm,{},{} ssh-ed25519 ",
        vm7["ipv4"].as_str().unwrap(),
        vm7["ipv6"].as_str().unwrap()
    );
    assert!(known.contains(&line), "{known}");
    assert_eq!(known.lines().filter(|l| l.contains(".vm,")).count(), 50);

    // rm frees: vm7's addresses, MAC (CID) and records go, and the next
    // VM gets them.
    call(
        &daemon.socket,
        "io.vmctl.Manager.Remove",
        Some(json!({"name": "vm7"})),
    )
    .await
    .unwrap();
    assert!(!run.join("hosts/name/vm7").exists());
    assert!(!run
        .join("hosts/addr")
        .join(vm7["ipv4"].as_str().unwrap())
        .exists());
    assert!(!fs::read_to_string(run.join("ssh_known_hosts"))
        .unwrap()
        .contains("vm7.vm"));
    assert!(!state.join("keys/vm7").exists());
    let again = create(
        &daemon,
        json!({"name": "again", "memory_bytes": 256u64 << 20}),
    )
    .await
    .unwrap();
    for key in ["cid", "mac", "ipv4", "ipv6"] {
        assert_eq!(again[key], vm7[key], "{key} not reused");
    }
}

#[tokio::test]
async fn bad_keys_and_network_create_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: Create is root-only for now and this test is not root");
        return;
    }
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    make_image(&state);
    for (params, what) in [
        (
            json!({"name": "x", "ssh_authorized_keys": [format!("{KEY}\nssh-ed25519 AAAAsecondline")]}),
            "ssh_authorized_keys",
        ),
        (
            json!({"name": "x", "ssh_authorized_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]}),
            "ssh_authorized_keys",
        ),
        (json!({"name": "x", "network": "bridge"}), "network"),
    ] {
        let e = create(&daemon, params).await.unwrap_err();
        assert_eq!(e.error, "io.vmctl.Manager.InvalidArgument", "{e}");
        assert_eq!(e.parameters.as_ref().unwrap()["what"], what, "{e}");
    }
    for sub in ["vms", "disks", "keys"] {
        assert_eq!(entries(&state.join(sub)), Vec::<String>::new(), "{sub}");
    }
    assert!(!daemon.dir.path().join("run/hosts/name/x").exists());

    // --network none: no addresses, no MAC, no NSS record; still a host key.
    let vm = create(
        &daemon,
        json!({"name": "sandbox", "network": "none",
                                    "memory_bytes": 256u64 << 20}),
    )
    .await
    .unwrap();
    assert_eq!(
        (&vm["ipv4"], &vm["ipv6"], &vm["mac"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert!(!daemon.dir.path().join("run/hosts/name/sandbox").exists());
    let spec = fs::read_to_string(state.join("vms/sandbox.json")).unwrap();
    assert!(spec.contains("\"network\": null"), "{spec}");
}

#[tokio::test]
async fn a_full_subnet_is_a_clear_error() {
    if !is_root() {
        eprintln!("SKIPPED: Create is root-only for now and this test is not root");
        return;
    }
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    make_image(&state);
    // The config is read at each create.
    fs::write(
        daemon.dir.path().join("vmctl.conf"),
        "[Network]\nIPv4Subnet=10.9.0.0/29\n",
    )
    .unwrap();
    for i in 0..5 {
        let vm = create(
            &daemon,
            json!({"name": format!("v{i}"), "memory_bytes": 256u64 << 20}),
        )
        .await
        .unwrap();
        assert_eq!(vm["ipv4"], format!("10.9.0.{}", i + 2));
    }
    let e = create(&daemon, json!({"name": "v5", "memory_bytes": 256u64 << 20}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "io.vmctl.Manager.NoFreeAddress");
    let text = e.to_string();
    assert!(
        text.contains("10.9.0.0/29") && text.contains("IPv4Subnet="),
        "{text}"
    );
    assert!(!state.join("vms/v5.json").exists());
}
