//! The real vmctld binary on a private dbus-daemon, with a stand-in for
//! systemd that owns `org.freedesktop.systemd1` and sends its signals the
//! way systemd does: the per-VM D-Bus objects, their `ObjectManager`
//! signals and varlink `List` with `more` follow create, state changes and
//! remove; a `PropertiesChanged` forged by another bus client changes
//! nothing. Skipped (loudly) when dbus-daemon is not installed; needs root
//! (only root may create and remove without polkit).

mod common;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{call, start_bus, Daemon, Method};
use futures_util::StreamExt;
use serde_json::{json, Value};
use vmctl_api::ErrorReply;
use zbus::{
    fdo::DBusProxy,
    names::BusName,
    zvariant::{OwnedObjectPath, OwnedValue, Value as DValue},
    MatchRule, MessageStream,
};
use zlink::Call;

const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const BLOG_UNIT: &str = "/org/freedesktop/systemd1/unit/vm_40blog_2eservice";

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum FakeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

/// blog's `ActiveState`; only blog is loaded.
type State = Arc<Mutex<String>>;

use vmctld::events::UnitRow;

struct FakeManager {
    blog: State,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    fn subscribe(&self) {}

    fn list_units_by_patterns(&self, _states: Vec<String>, _patterns: Vec<String>) -> Vec<UnitRow> {
        let active = self.blog.lock().unwrap().clone();
        vec![(
            "vm@blog.service".into(),
            String::new(),
            "loaded".into(),
            active,
            "running".into(),
            String::new(),
            OwnedObjectPath::try_from(BLOG_UNIT).unwrap(),
            0,
            String::new(),
            OwnedObjectPath::try_from("/").unwrap(),
        )]
    }

    fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, FakeError> {
        match name {
            "vm@blog.service" => Ok(OwnedObjectPath::try_from(BLOG_UNIT).unwrap()),
            _ => Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded."))),
        }
    }

    fn stop_unit(&self, name: &str, _mode: &str) -> Result<OwnedObjectPath, FakeError> {
        Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded.")))
    }

    fn reset_failed_unit(&self, _name: &str) {}

    fn revert_unit_files(&self, _names: Vec<String>) -> Vec<(String, String, String)> {
        Vec::new()
    }

    fn reload(&self) {}

    fn set_unit_properties(&self, _name: &str, _runtime: bool, _props: Vec<(String, OwnedValue)>) {}
}

struct FakeUnit {
    blog: State,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.blog.lock().unwrap().clone()
    }

    #[zbus(property)]
    fn sub_state(&self) -> String {
        "running".into()
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

fn write_spec(vms: &Path, name: &str, cid: u32) {
    let spec = json!({"name":name,"id":format!("{cid:032x}"),"owner_uid":0,"vcpus":2,
        "memory_bytes":1073741824u64,"disk_bytes":10737418240u64,"image":"default",
        "vmm":"qemu","cid":cid,
        "network":{"ipv4":format!("10.77.0.{cid}"),"ipv4_prefix":16,
                   "ipv6":format!("fd77:766d:6374::{cid}"),"ipv6_prefix":64,
                   "mac":format!("02:76:6d:00:00:{cid:02x}"),"gateway4":"10.77.0.1",
                   "gateway6":"fd77:766d:6374::1"}});
    fs::write(vms.join(format!("{name}.json")), spec.to_string()).unwrap();
}

fn make_image(state: &Path) {
    let dir = state.join("images/default");
    fs::create_dir_all(&dir).unwrap();
    fs::File::create(dir.join("root.raw"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
    fs::write(dir.join("initrd.img"), b"initrd").unwrap();
}

/// `PropertiesChanged` of blog's unit saying `active`, sent on `conn`.
async fn unit_changed(conn: &zbus::Connection, active: &str) {
    let changed = HashMap::from([("ActiveState", DValue::from(active))]);
    conn.emit_signal(
        None::<()>,
        BLOG_UNIT,
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        &(
            "org.freedesktop.systemd1.Unit",
            changed,
            Vec::<String>::new(),
        ),
    )
    .await
    .unwrap();
}

/// A signal of vmctld's, as `member path detail`.
fn describe(msg: &zbus::Message) -> String {
    let header = msg.header();
    let member = header.member().map(|m| m.to_string()).unwrap_or_default();
    let path = header.path().map(|p| p.to_string()).unwrap_or_default();
    match member.as_str() {
        "PropertiesChanged" => {
            let (_, changed, _): (String, HashMap<String, OwnedValue>, Vec<String>) =
                msg.body().deserialize().unwrap();
            let state = String::try_from(changed["State"].try_clone().unwrap()).unwrap();
            format!("State={state} {path}")
        }
        "InterfacesAdded" => {
            let (object, interfaces): (
                OwnedObjectPath,
                HashMap<String, HashMap<String, OwnedValue>>,
            ) = msg.body().deserialize().unwrap();
            let mut props: Vec<&String> = interfaces["org.vmctl.VM1"].keys().collect();
            props.sort();
            format!("added {} {props:?}", object.as_str())
        }
        "InterfacesRemoved" => {
            let (object, _): (OwnedObjectPath, Vec<String>) = msg.body().deserialize().unwrap();
            format!("removed {}", object.as_str())
        }
        other => format!("{other} {path}"),
    }
}

#[tokio::test]
async fn objects_signals_and_watch_follow_the_vms() {
    if !is_root() {
        eprintln!("skipped: Create and Remove are root-only without polkit");
        return;
    }
    let Some(bus) = start_bus() else { return };
    let blog: State = Arc::new(Mutex::new("active".into()));
    let systemd = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(SYSTEMD_PATH, FakeManager { blog: blog.clone() })
        .unwrap()
        .serve_at(BLOG_UNIT, FakeUnit { blog: blog.clone() })
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut daemon = Daemon::start_with(&["--dbus-address", &bus.address]);
    let state = daemon.dir.path().join("state");
    fs::create_dir_all(state.join("vms")).unwrap();
    write_spec(&state.join("vms"), "blog", 3);
    write_spec(&state.join("vms"), "web", 4);
    make_image(&state);

    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let dbus = DBusProxy::new(&client).await.unwrap();
    let name = BusName::try_from("org.vmctl.Manager1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dbus.name_has_owner(name.clone()).await.unwrap() {
        assert!(daemon.is_running(), "vmctld exited");
        assert!(Instant::now() < deadline, "vmctld did not take its name");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owner = dbus.get_name_owner(name.clone()).await.unwrap();
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(owner.as_str())
        .unwrap()
        .build();
    let mut signals = MessageStream::for_match_rule(rule, &client, Some(256))
        .await
        .unwrap();

    // The objects, with everything for root.
    let manager = zbus::Proxy::new(
        &client,
        "org.vmctl.Manager1",
        "/org/vmctl/Manager1",
        "org.freedesktop.DBus.ObjectManager",
    )
    .await
    .unwrap();
    type Managed = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;
    let objects: Managed = manager.call("GetManagedObjects", &()).await.unwrap();
    let mut paths: Vec<&str> = objects.keys().map(|p| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/org/vmctl/VM/blog", "/org/vmctl/VM/web"]);
    let blog_props =
        &objects[&OwnedObjectPath::try_from("/org/vmctl/VM/blog").unwrap()]["org.vmctl.VM1"];
    let text = |k: &str| String::try_from(blog_props[k].try_clone().unwrap()).unwrap();
    assert_eq!(text("State"), "running");
    assert_eq!(text("Owner"), "root");
    assert_eq!(text("Unit"), "vm@blog.service");
    assert_eq!(text("MAC"), "02:76:6d:00:00:03");
    assert_eq!(u32::try_from(&blog_props["VCPUs"]).unwrap(), 2);

    // A watch over varlink: first the list.
    let mut watch = zlink::tokio::unix::connect(&daemon.socket).await.unwrap();
    let list = Call::new(Method {
        method: "io.vmctl.Manager.List",
        parameters: None,
    })
    .set_more(true);
    watch.send_call(&list, Vec::new()).await.unwrap();
    let first = {
        let (reply, _) = watch.receive_reply::<Value, ErrorReply>().await.unwrap();
        reply.unwrap().into_parameters().unwrap()
    };
    let states: Vec<(String, String)> = first["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("blog".into(), "running".into()),
            ("web".into(), "stopped".into())
        ]
    );

    // A forged change (not systemd's connection), then systemd's own.
    unit_changed(&client, "failed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    *blog.lock().unwrap() = "deactivating".into();
    unit_changed(&systemd, "deactivating").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    *blog.lock().unwrap() = "inactive".into();
    unit_changed(&systemd, "inactive").await;

    // Created and removed through the service layer.
    call(
        &daemon.socket,
        "io.vmctl.Manager.Create",
        Some(json!({"name": "new", "network": "none", "disk_bytes": 16 << 20})),
    )
    .await
    .unwrap();
    call(
        &daemon.socket,
        "io.vmctl.Manager.Remove",
        Some(json!({"name": "web"})),
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|s: &String| s.starts_with("removed")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, signals.next())
            .await
            .unwrap_or_else(|_| panic!("signals so far: {seen:#?}\n{}", daemon.log()))
            .unwrap()
            .unwrap();
        let header = msg.header();
        let interface = header
            .interface()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if interface == "org.freedesktop.DBus.Properties"
            || interface == "org.freedesktop.DBus.ObjectManager"
        {
            seen.push(describe(&msg));
        }
    }
    assert_eq!(
        seen,
        [
            "State=stopping /org/vmctl/VM/blog",
            "State=stopped /org/vmctl/VM/blog",
            "added /org/vmctl/VM/new [\"Name\", \"State\", \"Unit\"]",
            "removed /org/vmctl/VM/web",
        ]
    );

    let mut changes = Vec::new();
    for _ in 0..4 {
        let (reply, _) = tokio::time::timeout(
            Duration::from_secs(10),
            watch.receive_reply::<Value, ErrorReply>(),
        )
        .await
        .expect("a watch reply")
        .unwrap();
        let reply = reply.unwrap();
        assert_eq!(reply.continues(), Some(true));
        let params = reply.into_parameters().unwrap();
        changes.push(format!(
            "{} {} {}",
            params["event"].as_str().unwrap(),
            params["vm"]["name"].as_str().unwrap(),
            params["vm"]["state"].as_str().unwrap()
        ));
    }
    assert_eq!(
        changes,
        [
            "changed blog stopping",
            "changed blog stopped",
            "added new stopped",
            "removed web stopped",
        ]
    );
    let paths: Managed = manager.call("GetManagedObjects", &()).await.unwrap();
    let mut paths: Vec<&str> = paths.keys().map(|p| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/org/vmctl/VM/blog", "/org/vmctl/VM/new"]);
    assert!(daemon.is_running());
}
