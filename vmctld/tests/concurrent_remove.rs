//! 50 concurrent `vmctl rm` against a systemd that floods the bus the way
//! a real one does: every `Reload` (each rm sends one after reverting the
//! unit's drop-ins) announces every loaded unit again with `UnitNew`, and
//! systemd is slow to answer while it reloads.
//!
//! A zbus message stream whose queue is full stops the connection's socket
//! reader for every message, method replies included. vmctld once read
//! systemd's signals in a loop that awaited a method call (reading a VM's
//! state after `UnitNew`): the queue filled while the loop waited for a
//! reply that sat behind the signals, and every rm waited forever (final
//! CI run of 2026-11-23). This test hung that way.
//!
//! All the while another bus client floods vmctld with forged
//! `NameOwnerChanged` signals (any local user can send signals straight to
//! vmctld): the watch keeps reading them and believes none.
//!
//! Skipped (loudly) when dbus-daemon is not installed; needs root (only
//! root may remove VMs without polkit).

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{call, start_bus, unit_path, wait_for_name, write_vm, Daemon};
use serde_json::json;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const VMS: usize = 50;
/// Units other than VMs that a reload announces again (a small host).
const OTHER_UNITS: usize = 200;
/// How long the stand-in takes to answer `GetUnit` (systemd is busy
/// reloading); slow enough that the signals outrun anyone reading them.
const GET_UNIT_DELAY: Duration = Duration::from_millis(3);

/// The units the stand-in knows: name → ActiveState.
type Units = Arc<Mutex<HashMap<String, String>>>;

struct FakeSystemd {
    units: Units,
    next_job: u32,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum FakeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

use vmctld::events::UnitRow;

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn subscribe(&self) {}

    async fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, FakeError> {
        tokio::time::sleep(GET_UNIT_DELAY).await;
        if self.units.lock().unwrap().contains_key(name) {
            Ok(unit_path(name))
        } else {
            Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded.")))
        }
    }

    fn list_units_by_patterns(&self, _states: Vec<String>, _patterns: Vec<String>) -> Vec<UnitRow> {
        let root = OwnedObjectPath::try_from("/").unwrap();
        self.units
            .lock()
            .unwrap()
            .iter()
            .map(|(name, active)| {
                let path = unit_path(name);
                let (load, sub) = ("loaded".to_string(), "dead".to_string());
                let row = (name.clone(), String::new(), load, active.clone(), sub);
                (
                    row.0,
                    row.1,
                    row.2,
                    row.3,
                    row.4,
                    String::new(),
                    path,
                    0,
                    String::new(),
                    root.clone(),
                )
            })
            .collect()
    }

    /// The unit goes down at once; the job ends right after the reply.
    fn stop_unit(
        &mut self,
        name: &str,
        _mode: &str,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<OwnedObjectPath, FakeError> {
        let mut units = self.units.lock().unwrap();
        let Some(state) = units.get_mut(name) else {
            return Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded.")));
        };
        *state = "inactive".into();
        self.next_job += 1;
        let id = self.next_job;
        let job = OwnedObjectPath::try_from(format!("{SYSTEMD_PATH}/job/{id}")).unwrap();
        let (conn, unit, path) = (conn.clone(), name.to_string(), job.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let body = (id, ObjectPath::from(path), unit.as_str(), "done");
            conn.emit_signal(None::<&str>, SYSTEMD_PATH, MANAGER, "JobRemoved", &body)
                .await
                .unwrap();
        });
        Ok(job)
    }

    fn reset_failed_unit(&self, _name: &str) {}

    fn revert_unit_files(&self, _names: Vec<String>) -> Vec<(String, String, String)> {
        Vec::new()
    }

    /// Like systemd's daemon-reload: every unit is new again.
    async fn reload(&self, #[zbus(connection)] conn: &zbus::Connection) {
        let mut names: Vec<String> = self.units.lock().unwrap().keys().cloned().collect();
        names.extend((0..OTHER_UNITS).map(|i| format!("other{i}.service")));
        for name in names {
            let body = (name.as_str(), ObjectPath::from(unit_path(&name)));
            conn.emit_signal(None::<&str>, SYSTEMD_PATH, MANAGER, "UnitNew", &body)
                .await
                .unwrap();
        }
    }
}

struct FakeUnit {
    name: String,
    units: Units,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        let units = self.units.lock().unwrap();
        units
            .get(&self.name)
            .cloned()
            .unwrap_or_else(|| "inactive".into())
    }

    #[zbus(property)]
    fn sub_state(&self) -> String {
        "dead".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_removes_finish_under_a_signal_flood() {
    if !common::is_root() {
        eprintln!("SKIPPED: only root may remove VMs (polkit is not asked here)");
        return;
    }
    let Some(bus) = start_bus() else { return };
    let names: Vec<String> = (0..VMS).map(|i| format!("rm{i}")).collect();
    let units: Units = Arc::new(Mutex::new(
        names
            .iter()
            .map(|n| (format!("vm@{n}.service"), "inactive".to_string()))
            .collect(),
    ));
    let systemd = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(
            SYSTEMD_PATH,
            FakeSystemd {
                units: units.clone(),
                next_job: 0,
            },
        )
        .unwrap()
        .build()
        .await
        .unwrap();
    for name in &names {
        let unit = format!("vm@{name}.service");
        let object = FakeUnit {
            name: unit.clone(),
            units: units.clone(),
        };
        systemd
            .object_server()
            .at(unit_path(&unit), object)
            .await
            .unwrap();
    }

    let mut daemon = Daemon::start_logged(&["--dbus-address", &bus.address]);
    let state = daemon.dir.path().join("state");
    let files: Vec<_> = (0..VMS)
        .map(|i| write_vm(&state, &names[i], 3 + i as u32))
        .collect();
    wait_for_name(&systemd, "org.vmctl.Manager1", &mut daemon).await;
    // The watch of systemd's signals is running (it is what used to hang).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !daemon.log().contains("events: following systemd") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "vmctld never followed systemd's signals:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile any local user may send vmctld signals that look like the
    // bus driver's: a flood of forged NameOwnerChanged for systemd's name,
    // straight to vmctld. zbus cannot filter a well-known sender, so these
    // reach the watch's stream of owner changes; it must keep reading it
    // (and believe none of them).
    let attacker = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let vmctld = zbus::fdo::DBusProxy::new(&attacker)
        .await
        .unwrap()
        .get_name_owner(zbus::names::BusName::try_from("org.vmctl.Manager1").unwrap())
        .await
        .unwrap()
        .to_string();
    let flood = tokio::spawn(async move {
        let body = ("org.freedesktop.systemd1", ":1.0", ":1.999");
        loop {
            attacker
                .emit_signal(
                    Some(vmctld.as_str()),
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "NameOwnerChanged",
                    &body,
                )
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    });

    let removes: Vec<_> = names
        .iter()
        .map(|name| {
            let socket = daemon.socket.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let params = Some(json!({ "name": name }));
                let reply = call(&socket, "io.vmctl.Manager.Remove", params).await;
                (name, reply)
            })
        })
        .collect();
    for remove in removes {
        let (name, reply) = tokio::time::timeout(Duration::from_secs(120), remove)
            .await
            .unwrap_or_else(|_| panic!("an rm never returned:\n{}", daemon.log()))
            .unwrap();
        assert_eq!(reply.unwrap(), json!({}), "rm {name}");
    }
    flood.abort();
    for (spec, disk) in &files {
        assert!(!spec.exists() && !disk.exists(), "rm left {spec:?} behind");
    }
    // Still serving, and the watch still follows systemd.
    let list = call(&daemon.socket, "io.vmctl.Manager.List", None)
        .await
        .unwrap();
    assert_eq!(list["vms"], json!([]), "{list}");
    let log = daemon.log();
    assert!(!log.contains("stopped following systemd"), "{log}");
    assert!(
        !log.contains("bus name moved"),
        "a forged owner change was believed:\n{log}"
    );
    assert!(daemon.is_running());
}
