//! The real vmctld binary serving org.vmctl.Manager1 on a private
//! dbus-daemon, called with zbus and with busctl. Skipped (loudly) when
//! dbus-daemon is not installed.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{start_bus, Daemon};
use serde_json::json;
use zbus::{fdo::DBusProxy, names::BusName, zvariant::OwnedObjectPath};

/// A stand-in for systemd's D-Bus API (systemd is not PID 1 here): knows
/// one loaded unit, `vm@blog.service`, which is active.
struct FakeSystemd;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum FakeSystemdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, FakeSystemdError> {
        if name == "vm@blog.service" {
            Ok(OwnedObjectPath::try_from(BLOG_UNIT_PATH).unwrap())
        } else {
            Err(FakeSystemdError::NoSuchUnit(format!(
                "Unit {name} not loaded."
            )))
        }
    }
}

const BLOG_UNIT_PATH: &str = "/org/freedesktop/systemd1/unit/vm_40blog_2eservice";

struct FakeUnit;

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        "active".to_string()
    }
}

#[tokio::test]
async fn manager_on_dbus() {
    let Some(bus) = start_bus() else { return };
    let _systemd = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at("/org/freedesktop/systemd1", FakeSystemd)
        .unwrap()
        .serve_at(BLOG_UNIT_PATH, FakeUnit)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut daemon = Daemon::start_with(&["--dbus-address", &bus.address]);
    let vms = daemon.dir.path().join("state/vms");
    std::fs::create_dir_all(&vms).unwrap();
    let uid = current_uid(&daemon);
    std::fs::write(
        vms.join("web.json"),
        json!({"name":"web","id":"0123456789abcdef0123456789abcdef","owner_uid":uid,"vcpus":1,
               "memory_bytes":536870912u64,"disk_bytes":10737418240u64,"image":"default",
               "vmm":"qemu","cid":4})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        vms.join("blog.json"),
        json!({"name":"blog","id":"0123456789abcdef0123456789abcdef","owner_uid":uid,"vcpus":2,
               "memory_bytes":1073741824u64,"disk_bytes":10737418240u64,"image":"default",
               "vmm":"qemu","cid":3,
               "network":{"ipv4":"10.77.0.2","ipv4_prefix":16,"ipv6":"fd77:766d:6374::2",
                          "ipv6_prefix":64,"mac":"02:76:6d:00:00:03","gateway4":"10.77.0.1",
                          "gateway6":"fd77:766d:6374::1"}})
        .to_string(),
    )
    .unwrap();

    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let dbus = DBusProxy::new(&conn).await.unwrap();
    let name = BusName::try_from("org.vmctl.Manager1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dbus.name_has_owner(name.clone()).await.unwrap() {
        assert!(daemon.is_running(), "vmctld exited");
        assert!(
            Instant::now() < deadline,
            "vmctld did not take its bus name"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let proxy = zbus::Proxy::new(
        &conn,
        "org.vmctl.Manager1",
        "/org/vmctl/Manager1",
        "org.vmctl.Manager1",
    )
    .await
    .unwrap();
    let version: String = proxy.call("GetVersion", &()).await.unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    type Row = (String, String, u32, u32, u64, String, String, String);
    let list: Vec<Row> = proxy.call("List", &()).await.unwrap();
    let s = |v: &str| v.to_string();
    assert_eq!(
        list,
        [
            (
                s("blog"),
                s("running"),
                uid,
                2,
                1 << 30,
                s("10.77.0.2"),
                s("fd77:766d:6374::2"),
                s("02:76:6d:00:00:03"),
            ),
            (
                s("web"),
                s("stopped"),
                uid,
                1,
                1 << 29,
                String::new(),
                String::new(),
                String::new(),
            )
        ]
    );
    let details: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
        proxy.call("Describe", &("blog",)).await.unwrap();
    let text = |key: &str| String::try_from(details[key].try_clone().unwrap()).unwrap();
    assert_eq!(text("ipv4"), "10.77.0.2");
    assert_eq!(text("ipv6"), "fd77:766d:6374::2");
    assert_eq!(text("mac"), "02:76:6d:00:00:03");

    // Publish (the HTTPS proxy): a port and "public" stick, "" keeps
    // the visibility, a bad visibility is InvalidArgument.
    let published: (u16, bool) = proxy
        .call("Publish", &("blog", 8080u16, "public"))
        .await
        .unwrap();
    assert_eq!(published, (8080, true));
    let kept: (u16, bool) = proxy.call("Publish", &("blog", 0u16, "")).await.unwrap();
    assert_eq!(kept, (8080, true));
    let e = proxy
        .call::<_, _, (u16, bool)>("Publish", &("blog", 0u16, "everyone"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("org.vmctl.Manager1.Error.InvalidArgument"),
        "{e}"
    );

    // Share and Unshare (uid 4242, a user without a name here): the
    // users it is shared with now, shown by Describe; unsharing a user it
    // is not shared with is InvalidArgument.
    let shared: Vec<String> = proxy.call("Share", &("blog", "4242")).await.unwrap();
    assert_eq!(shared, ["4242"]);
    let details: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
        proxy.call("Describe", &("blog",)).await.unwrap();
    let users = <Vec<String>>::try_from(details["shared_with"].try_clone().unwrap()).unwrap();
    assert_eq!(users, ["4242"]);
    let shared: Vec<String> = proxy.call("Unshare", &("blog", "4242")).await.unwrap();
    assert!(shared.is_empty());
    let e = proxy
        .call::<_, _, Vec<String>>("Unshare", &("blog", "4242"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("org.vmctl.Manager1.Error.InvalidArgument"),
        "{e}"
    );

    // busctl, as users will call it.
    // Run it off this thread: the fake systemd is served by this runtime.
    let address = format!("--address={}", bus.address);
    let busctl = tokio::task::spawn_blocking(move || {
        Command::new("busctl")
            .arg(address)
            .args([
                "call",
                "org.vmctl.Manager1",
                "/org/vmctl/Manager1",
                "org.vmctl.Manager1",
                "List",
            ])
            .output()
    });
    match busctl.await.unwrap() {
        Ok(out) => {
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                text.trim(),
                format!(
                    "a(ssuutsss) 2 \"blog\" \"running\" {uid} 2 1073741824 \"10.77.0.2\" \
                     \"fd77:766d:6374::2\" \"02:76:6d:00:00:03\" \
                     \"web\" \"stopped\" {uid} 1 536870912 \"\" \"\" \"\""
                )
            );
        }
        Err(e) => eprintln!("SKIPPED busctl part: {e}"),
    }
}

/// The uid the test runs as: the owner of a file it creates.
fn current_uid(daemon: &Daemon) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(daemon.dir.path()).unwrap().uid()
}
