//! VM events: what changes about VMs, as one broadcast both front ends
//! consume (the D-Bus objects and varlink `List` with `more`).
//!
//! - **Added** and **Removed** come from the service layer: `Create` and
//!   `Remove` call [`Events::added`] and [`Events::removed`] once their work
//!   is done.
//! - **Changed** comes from systemd's own signals for `vm@*.service`, read
//!   by [`watch`] on vmctld's bus connection: after `Subscribe()`, systemd
//!   sends `PropertiesChanged` for `org.freedesktop.systemd1.Unit` with the
//!   new `ActiveState`, `UnitNew` and `UnitRemoved`. Nothing is polled: one
//!   `ListUnitsByPatterns` when the watch starts (and again if systemd
//!   re-executes) and then signals only.
//!
//! The watch also keeps the last state of every VM, so `List` answers
//! from memory instead of asking systemd once per VM ([`Events::state`]).
//!
//! # Which signals are believed
//!
//! Any local user may emit a signal that looks like systemd's, broadcast or
//! straight to vmctld. The match rules name the unique bus name that owns
//! `org.freedesktop.systemd1` as the sender, and every message is checked
//! again here ([`from_systemd`]): only systemd's own change a state.
//! The owner is followed through `NameOwnerChanged`, believed only from the
//! bus driver (`org.freedesktop.DBus`, a name no client can send as).
//!
//! # Order
//!
//! A state may be read two ways: from a signal, or from a reply (the list
//! at start, the read after a job vmctld ran). Both carry systemd's
//! message serial, which grows with every message systemd sends on its
//! connection; a state is taken only from a message newer than the one the
//! current state came from, so a signal that was queued before a reply
//! cannot undo what the reply said.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use vmctl_api::bus_label_unescape;
use zbus::{
    names::OwnedUniqueName,
    zvariant::{OwnedObjectPath, OwnedValue},
    Connection, MatchRule, Message, MessageStream,
};

use crate::units::vm_state;

/// How many events a slow consumer may fall behind before it is told
/// that it missed some ([`tokio::sync::broadcast`]'s `Lagged`).
pub const EVENT_QUEUE: usize = 1024;
/// How many of systemd's signals may queue in zbus while the watch works.
const SIGNAL_QUEUE: usize = 4096;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
const SYSTEMD_UNIT: &str = "org.freedesktop.systemd1.Unit";
const UNIT_PATH_NAMESPACE: &str = "/org/freedesktop/systemd1/unit";
/// `vm@` escaped as a bus label: the start of every VM unit's path element.
const VM_UNIT_LABEL_PREFIX: &str = "vm_40";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const BUS: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";

/// What happened to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEventKind {
    /// The VM was created.
    Added,
    /// Its state (as `List` reports it: `running`, `stopped`, ...) changed.
    Changed {
        /// The new state.
        state: String,
    },
    /// The VM was removed.
    Removed,
}

/// One change of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEvent {
    /// The VM's name.
    pub name: String,
    /// What happened.
    pub kind: VmEventKind,
}

/// The broadcast of [`VmEvent`]s and the last known state of each VM.
#[derive(Debug, Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: tokio::sync::broadcast::Sender<VmEvent>,
    states: Mutex<States>,
}

/// The states the watch has seen. Meaningful only while `live`: then a
/// VM missing from `map` has no loaded unit, so it is `stopped`.
#[derive(Debug, Default)]
struct States {
    live: bool,
    map: HashMap<String, Observed>,
}

#[derive(Debug, Clone)]
struct Observed {
    state: String,
    /// The serial of systemd's message the state was read from.
    serial: u32,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// No subscribers, no states (not live) yet.
    pub fn new() -> Self {
        let (tx, _) = tokio::sync::broadcast::channel(EVENT_QUEUE);
        Self {
            inner: Arc::new(Inner {
                tx,
                states: Mutex::new(States::default()),
            }),
        }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<VmEvent> {
        self.inner.tx.subscribe()
    }

    /// Tells subscribers that VM `name` was created.
    pub fn added(&self, name: &str) {
        self.send(name, VmEventKind::Added);
    }

    /// Tells subscribers that VM `name` was removed, and forgets its state.
    pub fn removed(&self, name: &str) {
        self.lock().map.remove(name);
        self.send(name, VmEventKind::Removed);
    }

    /// The state of VM `name` as the watch knows it, `None` while no watch
    /// runs (then ask systemd).
    pub fn state(&self, name: &str) -> Option<String> {
        let states = self.lock();
        if !states.live {
            return None;
        }
        Some(match states.map.get(name) {
            Some(observed) => observed.state.clone(),
            None => vm_state(None).to_string(),
        })
    }

    /// Whether the watch runs, so that [`Events::state`] answers.
    pub fn is_live(&self) -> bool {
        self.lock().live
    }

    /// Takes `state` for `name`, read from systemd's message `serial`,
    /// unless a newer message said otherwise; sends `Changed` if it differs
    /// from what was known.
    pub fn observe(&self, name: &str, state: &str, serial: u32) {
        let mut states = self.lock();
        let before = states.map.get(name).cloned();
        if before.as_ref().is_some_and(|b| b.serial > serial) {
            return;
        }
        let old_state = before.map(|b| b.state);
        states.map.insert(
            name.to_string(),
            Observed {
                state: state.to_string(),
                serial,
            },
        );
        drop(states);
        if old_state.as_deref().unwrap_or(vm_state(None)) != state {
            self.send(
                name,
                VmEventKind::Changed {
                    state: state.to_string(),
                },
            );
        }
    }

    /// Replaces every known state by `now` (a fresh list from systemd's
    /// reply `serial`), except those read from a newer message (a signal
    /// taken while the list was on its way), sending `Changed` for each VM
    /// whose state differs from before, and marks the states live.
    fn reset(&self, now: HashMap<String, String>, serial: u32) {
        let mut states = self.lock();
        let was_live = states.live;
        let mut map: HashMap<String, Observed> = now
            .into_iter()
            .map(|(name, state)| (name, Observed { state, serial }))
            .collect();
        let old: HashMap<String, String> = states
            .map
            .drain()
            .map(|(name, o)| {
                if o.serial > serial {
                    map.insert(name.clone(), o.clone());
                }
                (name, o.state)
            })
            .collect();
        let now: HashMap<String, String> = map
            .iter()
            .map(|(name, o)| (name.clone(), o.state.clone()))
            .collect();
        states.map = map;
        states.live = true;
        drop(states);
        if !was_live {
            return;
        }
        let stopped = vm_state(None);
        let mut names: Vec<&String> = old.keys().chain(now.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let before = old.get(name).map_or(stopped, String::as_str);
            let after = now.get(name).map_or(stopped, String::as_str);
            if before != after {
                self.send(
                    name,
                    VmEventKind::Changed {
                        state: after.to_string(),
                    },
                );
            }
        }
    }

    /// Makes every known state older than any message to come: systemd
    /// has a new bus connection, whose serials start again.
    fn forget_serials(&self) {
        for observed in self.lock().map.values_mut() {
            observed.serial = 0;
        }
    }

    /// Forgets the states (the watch ended): [`Events::state`] says `None`.
    fn stop(&self) {
        let mut states = self.lock();
        states.live = false;
        states.map.clear();
    }

    fn send(&self, name: &str, kind: VmEventKind) {
        // No receivers is not an error: nobody watches.
        let _ = self.inner.tx.send(VmEvent {
            name: name.to_string(),
            kind,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, States> {
        // A panic while holding the lock leaves plain data behind.
        self.inner
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The VM name of the unit `vm@NAME.service`.
pub fn vm_of_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix("vm@")?.strip_suffix(".service")
}

/// The VM name of the unit object at `path`
/// (`/org/freedesktop/systemd1/unit/vm_40NAME_2eservice`).
pub fn vm_of_unit_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_NAMESPACE)?.strip_prefix('/')?;
    if !label.starts_with(VM_UNIT_LABEL_PREFIX) || label.contains('/') {
        return None;
    }
    let unit = bus_label_unescape(label)?;
    vm_of_unit(&unit).map(str::to_string)
}

/// Whether `msg` is a signal sent by `owner` (systemd's unique name).
pub fn from_systemd(msg: &Message, owner: &str) -> bool {
    msg.message_type() == zbus::message::Type::Signal
        && msg.header().sender().map(|s| s.as_str()) == Some(owner)
}

/// The VM state a unit's `PropertiesChanged` carries: `Some(Some(state))`
/// when `ActiveState` has a new value, `Some(None)` when it was only
/// invalidated (read it), `None` when it did not change.
pub fn changed_state(msg: &Message) -> Option<Option<String>> {
    let (interface, changed, invalidated): (String, HashMap<String, OwnedValue>, Vec<String>) =
        msg.body().deserialize().ok()?;
    if interface != SYSTEMD_UNIT {
        return None;
    }
    if let Some(value) = changed.get("ActiveState") {
        let active = String::try_from(value.try_clone().ok()?).ok()?;
        return Some(Some(vm_state(Some(&active)).to_string()));
    }
    invalidated
        .iter()
        .any(|p| p == "ActiveState")
        .then_some(None)
}

/// Follows systemd's signals about `vm@*.service` on `conn` and feeds
/// `events` until the connection closes. Run it as a task of its own.
pub async fn watch(conn: Connection, events: Events) {
    if let Err(e) = watch_inner(&conn, &events).await {
        tracing::warn!("events: stopped following systemd: {e}; states are read on demand");
    }
    events.stop();
}

/// The signal loop. It never waits for a reply from the bus while its
/// streams are not being read: a full zbus stream queue stops the
/// connection's socket reader for every message, the awaited reply
/// included, and then nothing on vmctld's bus connection moves again
/// (50 concurrent `vmctl rm`, each making systemd reload and announce every
/// unit anew, did exactly that when this loop read VM states itself). The
/// calls go to a [`Refresher`] task instead, or are awaited with
/// [`while_draining`].
async fn watch_inner(conn: &Connection, events: &Events) -> zbus::Result<()> {
    let mut owners = owner_changes(conn).await?.fuse();
    loop {
        let (owner, seen) = while_draining(systemd_owner(conn), &mut owners).await;
        let owner = owner?;
        if owner_moved(seen.iter().flatten(), owner.as_ref()) {
            continue;
        }
        let Some(owner) = owner else {
            events.stop();
            tracing::info!("events: systemd is not on the bus; waiting for it");
            wait_for_owner(&mut owners).await?;
            continue;
        };
        let (signals, seen) = while_draining(systemd_signals(conn, &owner), &mut owners).await;
        let mut signals = signals?.fuse();
        if owner_moved(seen.iter().flatten(), Some(&owner)) {
            continue;
        }
        // Messages of an earlier systemd carry serials of its connection,
        // which say nothing about the order of this one's.
        events.forget_serials();
        let refresher = Refresher::spawn(conn.clone(), events.clone(), owner.clone());
        refresher.relist();
        loop {
            tokio::select! {
                msg = signals.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let Ok(msg) = msg else { continue };
                    on_signal(events, &refresher, &owner, &msg);
                }
                msg = owners.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let Ok(msg) = msg else { continue };
                    if owner_moved([&msg], Some(&owner)) {
                        tracing::info!("events: systemd's bus name moved");
                        break;
                    }
                }
            }
        }
    }
}

/// Whether one of `msgs` says systemd's name now has another owner than
/// `owner`.
fn owner_moved<'a>(
    msgs: impl IntoIterator<Item = &'a Message>,
    owner: Option<&OwnedUniqueName>,
) -> bool {
    let owner = owner.map_or("", |o| o.as_str());
    msgs.into_iter()
        .filter_map(new_systemd_owner)
        .any(|new| new != owner)
}

/// Awaits `call` while reading `stream`, so that the stream's queue cannot
/// fill (and stop the bus connection, the reply to `call` included) while
/// nobody reads it; returns the call's output and what the stream
/// delivered meanwhile, in order.
pub async fn while_draining<F, S>(call: F, stream: &mut S) -> (F::Output, Vec<S::Item>)
where
    F: std::future::Future,
    S: futures_util::stream::FusedStream + Unpin,
{
    let mut call = std::pin::pin!(call);
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            biased;
            output = &mut call => return (output, seen),
            Some(item) = stream.next() => seen.push(item),
        }
    }
}

/// One of systemd's signals: a unit's `PropertiesChanged`, or the
/// manager's `UnitNew` and `UnitRemoved`. Takes what the signal says, and
/// leaves anything that needs a call to systemd to the `refresher`.
fn on_signal(events: &Events, refresher: &Refresher, owner: &OwnedUniqueName, msg: &Message) {
    if !from_systemd(msg, owner) {
        return;
    }
    let header = msg.header();
    let Some(path) = header.path() else { return };
    if path.as_str() == SYSTEMD_PATH {
        if header.interface().map(|i| i.as_str()) != Some(SYSTEMD_MANAGER) {
            return;
        }
        let Ok((unit, _path)) = msg.body().deserialize::<(String, OwnedObjectPath)>() else {
            return;
        };
        let Some(name) = vm_of_unit(&unit) else {
            return;
        };
        match header.member().map(|m| m.as_str()) {
            Some("UnitNew") => refresher.refresh(name),
            // Unloaded: nothing of it runs.
            Some("UnitRemoved") => events.observe(name, vm_state(None), serial(msg)),
            _ => {}
        }
        return;
    }
    if header.interface().map(|i| i.as_str()) != Some(PROPERTIES)
        || header.member().map(|m| m.as_str()) != Some("PropertiesChanged")
    {
        return;
    }
    let Some(name) = vm_of_unit_path(path.as_str()) else {
        return;
    };
    match changed_state(msg) {
        Some(Some(state)) => events.observe(&name, &state, serial(msg)),
        Some(None) => refresher.refresh(&name),
        None => {}
    }
}

/// The task that makes the watch's calls to systemd (`Subscribe`, the list
/// of VM units, a VM's state), away from the signal loop. Requests are
/// merged: a VM asked for twice before its turn is read once, so the
/// queue holds at most every VM name once. The task ends when this is
/// dropped.
struct Refresher {
    work: Arc<RefreshWork>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RefreshWork {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    relist: bool,
    names: std::collections::BTreeSet<String>,
}

impl Refresher {
    fn spawn(conn: Connection, events: Events, owner: OwnedUniqueName) -> Self {
        let work = Arc::new(RefreshWork::default());
        let task = tokio::spawn(refresh_loop(conn, events, owner, work.clone()));
        Self { work, task }
    }

    /// Subscribe to systemd and read every VM unit's state.
    fn relist(&self) {
        self.request(|pending| pending.relist = true);
    }

    /// Read the state of VM `name`.
    fn refresh(&self, name: &str) {
        self.request(|pending| {
            pending.names.insert(name.to_string());
        });
    }

    fn request(&self, add: impl FnOnce(&mut Pending)) {
        add(&mut lock(&self.work.pending));
        self.work.wake.notify_one();
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn refresh_loop(
    conn: Connection,
    events: Events,
    owner: OwnedUniqueName,
    work: Arc<RefreshWork>,
) {
    loop {
        work.wake.notified().await;
        let pending = std::mem::take(&mut *lock(&work.pending));
        if pending.relist {
            match relist(&conn, &events).await {
                Ok(loaded) => {
                    tracing::info!("events: following systemd ({owner}), {loaded} VM units loaded")
                }
                Err(e) => tracing::warn!(
                    "events: cannot list systemd's VM units: {e}; states are read on demand"
                ),
            }
        }
        for name in &pending.names {
            refresh(&conn, &events, name).await;
        }
    }
}

/// Subscribes to systemd's signals and takes the state of every loaded VM
/// unit; returns how many there are.
async fn relist(conn: &Connection, events: &Events) -> zbus::Result<usize> {
    // daemon.rs subscribed this connection already: systemd then says
    // AlreadySubscribed, which is what we want.
    match conn
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(SYSTEMD_MANAGER),
            "Subscribe",
            &(),
        )
        .await
    {
        Ok(_) => {}
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
        Err(e) => return Err(e),
    }
    let (now, serial) = list_vm_units(conn).await?;
    let loaded = now.len();
    events.reset(now, serial);
    Ok(loaded)
}

/// Reads the state of VM `name` from systemd now and takes it (with the
/// reply's serial, see the module documentation). Called after vmctld's
/// own jobs, so that a `List` right after `Start` returned says `running`.
pub async fn refresh(conn: &Connection, events: &Events, name: &str) {
    let unit = vmctl_api::spec::unit_name(name);
    let get_unit = conn
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(SYSTEMD_MANAGER),
            "GetUnit",
            &(unit.as_str(),),
        )
        .await;
    let path: OwnedObjectPath = match get_unit {
        Ok(reply) => match reply.body().deserialize() {
            Ok(path) => path,
            Err(_) => return,
        },
        Err(zbus::Error::MethodError(error, _, reply))
            if error.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            events.observe(name, vm_state(None), serial(&reply));
            return;
        }
        Err(e) => {
            tracing::debug!("events: cannot read the state of {unit}: {e}");
            return;
        }
    };
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            &path,
            Some(PROPERTIES),
            "Get",
            &(SYSTEMD_UNIT, "ActiveState"),
        )
        .await;
    let Ok(reply) = reply else { return };
    let Ok(value) = reply.body().deserialize::<OwnedValue>() else {
        return;
    };
    if let Ok(active) = String::try_from(value) {
        events.observe(name, vm_state(Some(&active)), serial(&reply));
    }
}

fn serial(msg: &Message) -> u32 {
    msg.primary_header().serial_num().get()
}

/// One row of systemd's `ListUnits*` replies (`a(ssssssouso)`): name,
/// description, load, active and sub state, following, unit path, job id,
/// job type, job path. Public for the tests' stand-in systemd.
pub type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// Every loaded `vm@*.service` with its VM state, and the reply's serial.
async fn list_vm_units(conn: &Connection) -> zbus::Result<(HashMap<String, String>, u32)> {
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(SYSTEMD_MANAGER),
            "ListUnitsByPatterns",
            &(Vec::<String>::new(), vec!["vm@*.service"]),
        )
        .await?;
    let rows: Vec<UnitRow> = reply.body().deserialize()?;
    let states = rows
        .into_iter()
        .filter_map(|row| {
            let name = vm_of_unit(&row.0)?.to_string();
            Some((name, vm_state(Some(&row.3)).to_string()))
        })
        .collect();
    Ok((states, serial(&reply)))
}

/// The unique name that owns `org.freedesktop.systemd1`, if any.
async fn systemd_owner(conn: &Connection) -> zbus::Result<Option<OwnedUniqueName>> {
    let reply = conn
        .call_method(Some(BUS), BUS_PATH, Some(BUS), "GetNameOwner", &(SYSTEMD,))
        .await;
    match reply {
        Ok(reply) => Ok(Some(reply.body().deserialize()?)),
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// systemd's signals from `owner` only: `PropertiesChanged` of its unit
/// objects and those of its manager object (`UnitNew`, `UnitRemoved`,
/// ...). One match rule, so one stream and one queue to keep empty.
async fn systemd_signals(
    conn: &Connection,
    owner: &OwnedUniqueName,
) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(owner.as_str())?
        .path_namespace(SYSTEMD_PATH)?
        .build();
    MessageStream::for_match_rule(rule, conn, Some(SIGNAL_QUEUE)).await
}

/// `NameOwnerChanged` for systemd's name.
async fn owner_changes(conn: &Connection) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS)?
        .path(BUS_PATH)?
        .interface(BUS)?
        .member("NameOwnerChanged")?
        .arg(0, SYSTEMD)?
        .build();
    MessageStream::for_match_rule(rule, conn, Some(64)).await
}

/// The new owner of systemd's name if `msg` is the bus driver's
/// `NameOwnerChanged` about it (`Some("")`: no owner now).
pub fn new_systemd_owner(msg: &Message) -> Option<String> {
    let header = msg.header();
    if msg.message_type() != zbus::message::Type::Signal
        || header.sender().map(|s| s.as_str()) != Some(BUS)
        || header.member().map(|m| m.as_str()) != Some("NameOwnerChanged")
    {
        return None;
    }
    let (name, _old, new): (String, String, String) = msg.body().deserialize().ok()?;
    (name == SYSTEMD).then_some(new)
}

async fn wait_for_owner<S>(owners: &mut S) -> zbus::Result<()>
where
    S: futures_util::Stream<Item = zbus::Result<Message>> + Unpin,
{
    while let Some(msg) = owners.next().await {
        let Ok(msg) = msg else { continue };
        if new_systemd_owner(&msg).is_some_and(|new| !new.is_empty()) {
            return Ok(());
        }
    }
    Err(zbus::Error::Failure("the bus connection closed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use zbus::zvariant::Value;

    fn changed(sender: &str, path: &str, active: &str) -> Message {
        let mut props: HashMap<&str, Value<'_>> = HashMap::new();
        props.insert("ActiveState", Value::from(active));
        Message::signal(path, PROPERTIES, "PropertiesChanged")
            .unwrap()
            .sender(sender)
            .unwrap()
            .build(&(SYSTEMD_UNIT, props, Vec::<String>::new()))
            .unwrap()
    }

    #[test]
    fn unit_paths_name_vms() {
        assert_eq!(
            vm_of_unit_path("/org/freedesktop/systemd1/unit/vm_40web_2d1_2eservice").as_deref(),
            Some("web-1")
        );
        assert_eq!(
            vm_of_unit_path("/org/freedesktop/systemd1/unit/vmctld_2eservice"),
            None
        );
        assert_eq!(
            vm_of_unit_path("/org/freedesktop/systemd1/unit/vm_40a_2esocket"),
            None
        );
        assert_eq!(vm_of_unit_path("/org/freedesktop/systemd1"), None);
        assert_eq!(vm_of_unit("vm@blog.service"), Some("blog"));
        assert_eq!(vm_of_unit("vmctld.service"), None);
    }

    #[test]
    fn reads_active_state_from_systemd_only() {
        let path = "/org/freedesktop/systemd1/unit/vm_40a_2eservice";
        let msg = changed(":1.3", path, "activating");
        assert!(from_systemd(&msg, ":1.3"));
        assert!(!from_systemd(&msg, ":1.4"));
        assert_eq!(changed_state(&msg), Some(Some("starting".to_string())));
        let invalidated = Message::signal(path, PROPERTIES, "PropertiesChanged")
            .unwrap()
            .sender(":1.3")
            .unwrap()
            .build(&(
                SYSTEMD_UNIT,
                HashMap::<&str, Value<'_>>::new(),
                vec!["ActiveState"],
            ))
            .unwrap();
        assert_eq!(changed_state(&invalidated), Some(None));
        let other = Message::signal(path, PROPERTIES, "PropertiesChanged")
            .unwrap()
            .sender(":1.3")
            .unwrap()
            .build(&(
                "org.freedesktop.systemd1.Service",
                HashMap::<&str, Value<'_>>::new(),
                Vec::<String>::new(),
            ))
            .unwrap();
        assert_eq!(changed_state(&other), None);
    }

    #[test]
    fn owner_changes_only_from_the_bus_driver() {
        let from = |sender: &str| {
            Message::signal(BUS_PATH, BUS, "NameOwnerChanged")
                .unwrap()
                .sender(sender)
                .unwrap()
                .build(&(SYSTEMD, ":1.3", ":1.9"))
                .unwrap()
        };
        assert_eq!(new_systemd_owner(&from(BUS)).as_deref(), Some(":1.9"));
        assert_eq!(new_systemd_owner(&from(":1.66")), None);
    }

    #[tokio::test]
    async fn older_messages_do_not_undo_newer_ones() {
        let events = Events::new();
        let mut rx = events.subscribe();
        assert_eq!(events.state("a"), None, "not live before the first list");
        events.reset(HashMap::new(), 10);
        assert_eq!(events.state("a").as_deref(), Some("stopped"));
        events.observe("a", "running", 20);
        // A signal queued before the reply above.
        events.observe("a", "starting", 15);
        assert_eq!(events.state("a").as_deref(), Some("running"));
        events.observe("a", "running", 21);
        events.observe("a", "stopping", 22);
        events.removed("a");
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push(event.kind);
        }
        assert_eq!(
            seen,
            [
                VmEventKind::Changed {
                    state: "running".into()
                },
                VmEventKind::Changed {
                    state: "stopping".into()
                },
                VmEventKind::Removed,
            ]
        );
        assert_eq!(events.state("a").as_deref(), Some("stopped"));
    }

    #[test]
    fn a_list_keeps_states_from_newer_signals() {
        let events = Events::new();
        events.reset(HashMap::new(), 1);
        // Taken while the list below was on its way.
        events.observe("a", "running", 20);
        let listed = HashMap::from([("a".to_string(), "starting".to_string())]);
        events.reset(listed.clone(), 15);
        assert_eq!(events.state("a").as_deref(), Some("running"));
        // A new systemd connection starts its serials again.
        events.forget_serials();
        events.reset(listed, 3);
        assert_eq!(events.state("a").as_deref(), Some("starting"));
    }

    #[tokio::test]
    async fn a_new_list_reports_what_changed_meanwhile() {
        let events = Events::new();
        events.reset(HashMap::from([("a".to_string(), "running".to_string())]), 1);
        let mut rx = events.subscribe();
        events.reset(HashMap::from([("b".to_string(), "running".to_string())]), 1);
        let mut seen = Vec::new();
        while let Ok(event) = rx.try_recv() {
            seen.push((event.name, event.kind));
        }
        assert_eq!(
            seen,
            [
                (
                    "a".to_string(),
                    VmEventKind::Changed {
                        state: "stopped".into()
                    }
                ),
                (
                    "b".to_string(),
                    VmEventKind::Changed {
                        state: "running".into()
                    }
                ),
            ]
        );
    }
}
