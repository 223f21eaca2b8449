//! `vmctl rm` against forged systemd signals, on a private dbus-daemon with
//! a stand-in for systemd that owns `org.freedesktop.systemd1`: while
//! vmctld waits for the stop job of a VM, another bus client (any local
//! user, on the system bus) emits a `JobRemoved` for that very job, both
//! broadcast and sent straight to vmctld, and floods vmctld with them.
//! Nothing is deleted until
//! systemd's own signal comes; and even systemd's "done" deletes nothing
//! while systemd still reports the unit as running.
//!
//! Skipped (loudly) when dbus-daemon is not installed; needs root (only
//! root may remove VMs until polkit is asked).

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{call, is_root, start_bus, unit_path, wait_for_name, write_vm, Daemon};
use serde_json::json;
use tokio::sync::mpsc;
use zbus::{
    fdo::DBusProxy,
    names::BusName,
    zvariant::{ObjectPath, OwnedObjectPath},
};

const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// The units the stand-in knows: name → (ActiveState, SubState).
type Units = Arc<Mutex<HashMap<String, (String, String)>>>;

/// A stand-in for systemd's manager: `StopUnit` puts the unit into
/// `deactivating`, returns a fresh job and tells the test, which decides
/// when the job ends.
struct FakeSystemd {
    units: Units,
    next_job: u32,
    stops: mpsc::UnboundedSender<(u32, OwnedObjectPath, String)>,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum FakeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchUnit(String),
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn subscribe(&self) {}

    fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, FakeError> {
        if self.units.lock().unwrap().contains_key(name) {
            Ok(unit_path(name))
        } else {
            Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded.")))
        }
    }

    fn stop_unit(&mut self, name: &str, _mode: &str) -> Result<OwnedObjectPath, FakeError> {
        let mut units = self.units.lock().unwrap();
        let Some(state) = units.get_mut(name) else {
            return Err(FakeError::NoSuchUnit(format!("Unit {name} not loaded.")));
        };
        *state = ("deactivating".into(), "stop-sigterm".into());
        self.next_job += 1;
        let job =
            OwnedObjectPath::try_from(format!("{SYSTEMD_PATH}/job/{}", self.next_job)).unwrap();
        self.stops
            .send((self.next_job, job.clone(), name.to_string()))
            .unwrap();
        Ok(job)
    }

    fn reset_failed_unit(&self, _name: &str) {}

    fn revert_unit_files(&self, _names: Vec<String>) -> Vec<(String, String, String)> {
        Vec::new()
    }

    fn reload(&self) {}
}

/// A unit object of the stand-in, reading the shared state.
struct FakeUnit {
    name: String,
    units: Units,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.units.lock().unwrap()[&self.name].0.clone()
    }

    #[zbus(property)]
    fn sub_state(&self) -> String {
        self.units.lock().unwrap()[&self.name].1.clone()
    }
}

/// Emits `JobRemoved(id, job, unit, "done")` on `conn` as if from
/// systemd's manager object, to everybody or to `destination`.
async fn emit_job_removed(
    conn: &zbus::Connection,
    destination: Option<&str>,
    (id, job, unit): &(u32, OwnedObjectPath, String),
) {
    conn.emit_signal(
        destination,
        SYSTEMD_PATH,
        MANAGER,
        "JobRemoved",
        &(*id, ObjectPath::from(job.clone()), unit.as_str(), "done"),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_job_removed_deletes_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: only root may remove VMs (polkit is not asked yet)");
        return;
    }
    let Some(bus) = start_bus() else { return };
    let units: Units = Arc::new(Mutex::new(HashMap::new()));
    for name in ["vm@blog.service", "vm@web.service"] {
        units
            .lock()
            .unwrap()
            .insert(name.into(), ("active".into(), "running".into()));
    }
    let (stops_tx, mut stops) = mpsc::unbounded_channel();
    let systemd = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(
            SYSTEMD_PATH,
            FakeSystemd {
                units: units.clone(),
                next_job: 6,
                stops: stops_tx,
            },
        )
        .unwrap()
        .serve_at(
            unit_path("vm@blog.service"),
            FakeUnit {
                name: "vm@blog.service".into(),
                units: units.clone(),
            },
        )
        .unwrap()
        .serve_at(
            unit_path("vm@web.service"),
            FakeUnit {
                name: "vm@web.service".into(),
                units: units.clone(),
            },
        )
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut daemon = Daemon::start_logged(&["--dbus-address", &bus.address]);
    let state = daemon.dir.path().join("state");
    let (spec, disk) = write_vm(&state, "blog", 3);
    let attacker = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    wait_for_name(&attacker, "org.vmctl.Manager1", &mut daemon).await;
    let vmctld = DBusProxy::new(&attacker)
        .await
        .unwrap()
        .get_name_owner(BusName::try_from("org.vmctl.Manager1").unwrap())
        .await
        .unwrap();

    // A flood of forged JobRemoved signals straight to vmctld, for the job
    // id systemd is about to hand out, all through the rm.
    let flood = tokio::spawn({
        let attacker = attacker.clone();
        let vmctld = vmctld.to_string();
        async move {
            let guess = (
                7u32,
                OwnedObjectPath::try_from(format!("{SYSTEMD_PATH}/job/7")).unwrap(),
                "vm@blog.service".to_string(),
            );
            loop {
                emit_job_removed(&attacker, Some(&vmctld), &guess).await;
                tokio::task::yield_now().await;
            }
        }
    });

    // vmctl rm blog: vmctld asks systemd to stop the unit and waits.
    let socket = daemon.socket.clone();
    let remove = tokio::spawn(async move {
        call(
            &socket,
            "io.vmctl.Manager.Remove",
            Some(json!({"name": "blog"})),
        )
        .await
    });
    let job = tokio::time::timeout(Duration::from_secs(20), stops.recv())
        .await
        .expect("vmctld did not stop the unit")
        .unwrap();
    assert_eq!((job.0, job.2.as_str()), (7, "vm@blog.service"));

    // The attacker's JobRemoved for exactly that job: to everybody, and
    // straight to vmctld's connection (which no match rule filters).
    emit_job_removed(&attacker, None, &job).await;
    emit_job_removed(&attacker, Some(vmctld.as_str()), &job).await;
    // Give a wrongly believed signal time to act, then check nothing did:
    // the wait goes on (vmctld logs each job's end), the files are there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!remove.is_finished(), "rm returned on a forged signal");
    assert!(
        !daemon.log().contains("vm@blog.service: job result"),
        "vmctld took a forged signal for the job's end:\n{}",
        daemon.log()
    );
    assert!(
        spec.exists() && disk.exists(),
        "files deleted on a forged signal"
    );

    // systemd's own signal, once the unit is down: rm completes.
    units
        .lock()
        .unwrap()
        .insert(job.2.clone(), ("inactive".into(), "dead".into()));
    emit_job_removed(&systemd, None, &job).await;
    let reply = tokio::time::timeout(Duration::from_secs(20), remove)
        .await
        .expect("rm did not finish after systemd's JobRemoved")
        .unwrap();
    assert_eq!(reply.unwrap(), json!({}));
    assert!(!spec.exists() && !disk.exists(), "rm left files behind");
    flood.abort();

    // systemd says "done" but the unit is still running (another job took
    // over): the state is read again and nothing is deleted.
    let (spec, disk) = write_vm(&state, "web", 4);
    let socket = daemon.socket.clone();
    let remove = tokio::spawn(async move {
        call(
            &socket,
            "io.vmctl.Manager.Remove",
            Some(json!({"name": "web"})),
        )
        .await
    });
    let job = tokio::time::timeout(Duration::from_secs(20), stops.recv())
        .await
        .expect("vmctld did not stop the unit")
        .unwrap();
    units
        .lock()
        .unwrap()
        .insert(job.2.clone(), ("active".into(), "running".into()));
    emit_job_removed(&systemd, None, &job).await;
    let reply = tokio::time::timeout(Duration::from_secs(20), remove)
        .await
        .expect("rm did not finish after systemd's JobRemoved")
        .unwrap();
    let error = reply.unwrap_err();
    assert_eq!(error.error, vmctl_api::errors::INTERNAL_ERROR, "{error:?}");
    let message = error.parameters.unwrap()["message"].to_string();
    assert!(message.contains("active (running)"), "{message}");
    assert!(
        spec.exists() && disk.exists(),
        "files of a running VM deleted"
    );
    assert!(daemon.is_running());
}
