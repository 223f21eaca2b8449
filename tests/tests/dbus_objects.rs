//! VMs as D-Bus objects and `vmctl list --watch`, end to end in the dev
//! host (real systemd, real system bus, the installed vmctld):
//!
//! - one VM taken through create, start, stop and rm is seen on the bus
//!   (`busctl monitor`) as `InterfacesAdded`, `PropertiesChanged` with
//!   `State` starting, running, stopping, stopped, and `InterfacesRemoved`,
//!   in that order; root's `vmctl list --watch --json` sees the same
//!   changes in the same order;
//! - `busctl tree org.vmctl.Manager1` shows the VM's object while it exists;
//! - another user (alice) sees the object's name and state but not its
//!   owner or sizes (`Get` refused, `GetManagedObjects` without it), and her
//!   own `vmctl list --watch` hears nothing of it.

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use vmctl_e2e::{ensure_test_users, host, host_as, Run};

const VM: &str = "dbusobj";
const VM_PATH: &str = "/org/vmctl/VM/dbusobj";

/// Starts `script` in the host in the background as `user`, its PID in
/// `pidfile`; the returned thread ends when it is killed with [`stop`].
fn background(
    user: Option<&'static str>,
    pidfile: &'static str,
    script: String,
) -> thread::JoinHandle<Run> {
    thread::spawn(move || {
        let script = format!("echo $$ > {pidfile}; exec {script}");
        host_as(user, &["sh", "-c", &script])
    })
}

fn stop(pidfile: &str) {
    host(&["sh", "-c", &format!("kill $(cat {pidfile})")]).ok();
}

/// Waits until the host file `path` contains `needle`.
fn wait_for_text(path: &str, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = host(&["cat", path]).stdout;
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never contained {needle:?}:\n{text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Consecutive duplicates removed.
fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.dedup();
    v
}

/// What the bus carried about the VM, in order: `added`, `State=...` or
/// `removed`, from `busctl monitor --json=short` lines.
fn bus_sequence(monitor: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for line in monitor.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let member = msg["member"].as_str().unwrap_or_default();
        let data = &msg["payload"]["data"];
        match member {
            "InterfacesAdded" if data[0] == VM_PATH => seen.push("added".to_string()),
            "InterfacesRemoved" if data[0] == VM_PATH => seen.push("removed".to_string()),
            "PropertiesChanged" if msg["path"] == VM_PATH => {
                if let Some(state) = data[1]["State"]["data"].as_str() {
                    seen.push(format!("State={state}"));
                }
            }
            _ => {}
        }
    }
    seen
}

/// What a `vmctl list --watch --json` printed about the VM, in the same
/// notation as [`bus_sequence`].
fn watch_sequence(watch: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for line in watch.lines().skip(1) {
        let change: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if change["vm"]["name"] != VM {
            continue;
        }
        match change["event"].as_str().unwrap() {
            "added" => seen.push("added".to_string()),
            "removed" => seen.push("removed".to_string()),
            "changed" => seen.push(format!("State={}", change["vm"]["state"].as_str().unwrap())),
            other => panic!("unknown event {other}: {line}"),
        }
    }
    seen
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn vm_objects_and_watch_follow_one_life() {
    ensure_test_users();
    host(&["vmctl", "rm", VM]);
    host(&[
        "rm",
        "-f",
        "/tmp/dbusobj.mon",
        "/tmp/dbusobj.watch",
        "/tmp/dbusobj.alice",
    ]);

    let monitor = background(
        None,
        "/tmp/dbusobj.mon.pid",
        "timeout 300 stdbuf -oL busctl --system monitor --json=short \
         --match \"type='signal',path='/org/vmctl/Manager1',interface='org.freedesktop.DBus.ObjectManager'\" \
         --match \"type='signal',path='/org/vmctl/VM/dbusobj'\" \
         > /tmp/dbusobj.mon 2>&1"
            .to_string(),
    );
    let watch = background(
        None,
        "/tmp/dbusobj.watch.pid",
        "timeout 300 vmctl list --watch --json > /tmp/dbusobj.watch 2>&1".to_string(),
    );
    let alice = background(
        Some("alice"),
        "/tmp/dbusobj.alice.pid",
        "timeout 300 vmctl list --watch --json > /tmp/dbusobj.alice 2>&1".to_string(),
    );
    wait_for_text("/tmp/dbusobj.watch", "\"vms\"", Duration::from_secs(30));
    wait_for_text("/tmp/dbusobj.alice", "\"vms\"", Duration::from_secs(30));
    // busctl prints nothing until the first message: give it a moment to
    // become a monitor.
    thread::sleep(Duration::from_secs(2));

    host(&["vmctl", "create", VM, "--cpus", "1", "--memory", "512M"]).ok();
    let tree = host(&["busctl", "--system", "tree", "--list", "org.vmctl.Manager1"]).ok();
    eprintln!("busctl tree:\n{}", tree.stdout);
    assert!(
        tree.stdout.lines().any(|l| l.trim() == VM_PATH),
        "{tree:#?}"
    );

    // What root and alice may read of it.
    let get = |user: Option<&str>, property: &str| {
        host_as(
            user,
            &[
                "busctl",
                "--system",
                "get-property",
                "org.vmctl.Manager1",
                VM_PATH,
                "org.vmctl.VM1",
                property,
            ],
        )
    };
    assert_eq!(get(None, "Owner").ok().stdout.trim(), "s \"root\"");
    assert_eq!(get(None, "VCPUs").ok().stdout.trim(), "u 1");
    assert_eq!(
        get(Some("alice"), "State").ok().stdout.trim(),
        "s \"stopped\""
    );
    let denied = get(Some("alice"), "Owner");
    eprintln!("alice reads Owner: {denied:?}");
    assert_ne!(denied.code, Some(0));
    // busctl names the error by its standard text.
    assert!(denied.stderr.contains("Access denied"), "{denied:#?}");
    let managed = |user: Option<&str>| {
        host_as(
            user,
            &[
                "busctl",
                "--system",
                "--json=short",
                "call",
                "org.vmctl.Manager1",
                "/org/vmctl/Manager1",
                "org.freedesktop.DBus.ObjectManager",
                "GetManagedObjects",
            ],
        )
        .ok()
        .stdout
    };
    assert!(managed(None).contains(VM_PATH));
    assert!(!managed(Some("alice")).contains(VM_PATH));
    // Alice may not start it through its object either, with the answer a
    // missing VM gets.
    let start = host_as(
        Some("alice"),
        &[
            "busctl",
            "--system",
            "call",
            "org.vmctl.Manager1",
            VM_PATH,
            "org.vmctl.VM1",
            "Start",
        ],
    );
    assert_ne!(start.code, Some(0));
    assert!(
        start.stderr.contains("NoSuchVM") || start.stderr.contains("no VM"),
        "{start:#?}"
    );

    // The life: start and stop through the VM's object, rm through vmctl.
    host(&[
        "busctl",
        "--system",
        "--timeout=5min",
        "call",
        "org.vmctl.Manager1",
        VM_PATH,
        "org.vmctl.VM1",
        "Start",
    ])
    .ok();
    assert_eq!(get(None, "State").ok().stdout.trim(), "s \"running\"");
    host(&[
        "busctl",
        "--system",
        "--timeout=5min",
        "call",
        "org.vmctl.Manager1",
        VM_PATH,
        "org.vmctl.VM1",
        "Stop",
    ])
    .ok();
    host(&["vmctl", "rm", VM]).ok();
    let tree = host(&["busctl", "--system", "tree", "--list", "org.vmctl.Manager1"]).ok();
    assert!(!tree.stdout.contains(VM_PATH), "{tree:#?}");

    wait_for_text(
        "/tmp/dbusobj.mon",
        "InterfacesRemoved",
        Duration::from_secs(10),
    );
    wait_for_text("/tmp/dbusobj.watch", "\"removed\"", Duration::from_secs(10));
    // Anything late would have arrived by now.
    thread::sleep(Duration::from_secs(1));
    for pidfile in [
        "/tmp/dbusobj.mon.pid",
        "/tmp/dbusobj.watch.pid",
        "/tmp/dbusobj.alice.pid",
    ] {
        stop(pidfile);
    }
    monitor.join().unwrap();
    watch.join().unwrap();
    alice.join().unwrap();

    let expected = [
        "added",
        "State=starting",
        "State=running",
        "State=stopping",
        "State=stopped",
        "removed",
    ];
    let bus = dedup(bus_sequence(
        &host(&["cat", "/tmp/dbusobj.mon"]).ok().stdout,
    ));
    let watched_text = host(&["cat", "/tmp/dbusobj.watch"]).ok().stdout;
    let watched = dedup(watch_sequence(&watched_text));
    eprintln!("on the bus: {bus:?}\nvmctl list --watch: {watched:?}");
    assert_eq!(bus, expected);
    assert_eq!(watched, expected);

    let alice_text = host(&["cat", "/tmp/dbusobj.alice"]).ok().stdout;
    eprintln!("alice's watch:\n{alice_text}");
    assert!(alice_text
        .lines()
        .next()
        .unwrap_or_default()
        .contains("\"vms\""));
    assert!(
        !alice_text.contains(VM),
        "alice heard of root's VM:\n{alice_text}"
    );
}
