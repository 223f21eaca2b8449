//! The live state of VMs, read from systemd: a VM runs as
//! `vm@NAME.service`, so its state is that unit's `ActiveState`.
//!
//! Asked over D-Bus (`org.freedesktop.systemd1`). Any failure to ask for a
//! state yields `unknown` rather than a guess.
//!
//! # Which connection, and why it is allowed
//!
//! vmctld runs as root but with an empty capability bounding set
//! (`units/vmctld.service`). On the system bus systemd authorises
//! state-changing calls (`StartUnit`, `SetUnitProperties`, ...) by
//! CAP_SYS_ADMIN of the sender and, lacking that, asks polkit, which always
//! authorises uid 0. So vmctld needs polkit running (it does anyway for its
//! own callers) but no capability.
//!
//! systemd's private socket `/run/systemd/private` (what `systemctl` uses
//! as root, trusted without polkit) was tried and does not work with zbus
//! 5.19: systemd stamps its replies and signals there with the sender
//! `org.freedesktop.systemd1`, a well-known name, and zbus panics
//! ("Invalid field reconstruction: Invalid unique name") when it reads the
//! sender field, which must be a unique name on a bus. Verified in the dev
//! host (a p2p zbus connection to the socket, first method reply).
//!
//! Job results come as `JobRemoved` signals, which systemd sends to bus
//! clients after `Subscribe()`: we open the signal stream before starting
//! the job, so its end cannot be missed. Any local user can emit a signal
//! that looks like it, so only one sent by the current owner of
//! `org.freedesktop.systemd1` from its manager object, for exactly our job
//! and unit, is believed ([`job_removed_result`]); and before anything is
//! deleted the unit's state is read again ([`Systemd::ensure_stopped`]).

use futures_util::StreamExt;

use crate::events::while_draining;
use vmctl_api::spec::unit_name;
use zbus::{
    names::{OwnedUniqueName, UniqueName},
    zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value},
    Connection, MatchRule, MessageStream,
};

use crate::{limits::UnitLimits, manager::STATE_UNKNOWN, ManagerError};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const BUS: &str = "org.freedesktop.DBus";
/// How often the owner of systemd's bus name is asked again while a job
/// runs (it changes only when systemd re-executes).
pub const OWNER_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// How many of systemd's `JobRemoved` signals (for any unit) may queue
/// while vmctld is between reads (during its own calls to systemd).
const JOB_SIGNAL_QUEUE: usize = 1024;
const BUS_PATH: &str = "/org/freedesktop/DBus";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
const SYSTEMD_UNIT: &str = "org.freedesktop.systemd1.Unit";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// A client of systemd's D-Bus API.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: Connection,
    /// Told the unit's state after each job vmctld ran.
    events: Option<crate::events::Events>,
}

impl Systemd {
    /// A client on `conn`: a bus connection (the system bus, or a test bus)
    /// or a peer-to-peer connection to systemd.
    pub fn new(conn: Connection) -> Self {
        Self { conn, events: None }
    }

    /// Tells `events` the state of a VM's unit after each job on it, so
    /// that a `List` right after `Start` returned says `running` even if
    /// systemd's signals are still queued.
    pub fn with_events(mut self, events: crate::events::Events) -> Self {
        self.events = Some(events);
        self
    }

    /// Asks systemd to send job signals to this connection (needed on a
    /// bus; harmless on the private socket).
    pub async fn subscribe(&self) -> zbus::Result<()> {
        self.manager_call("Subscribe", &()).await.map(drop)
    }

    /// Sets the limits of `unit` persistently (`runtime=false`): systemd
    /// writes them as drop-ins under
    /// `/etc/systemd/system.control/UNIT.d/`, so `systemctl show` tells
    /// the truth.
    pub async fn set_limits(&self, unit: &str, limits: &UnitLimits) -> Result<(), ManagerError> {
        let properties: Vec<(&str, Value<'_>)> = vec![
            ("MemoryMax", Value::U64(limits.memory_max)),
            (
                "CPUQuotaPerSecUSec",
                Value::U64(limits.cpu_quota_per_sec_usec),
            ),
            ("TasksMax", Value::U64(limits.tasks_max)),
        ];
        self.manager_call("SetUnitProperties", &(unit, false, properties))
            .await
            .map(drop)
            .map_err(|e| systemd_error(format!("cannot set the limits of {unit}"), e))
    }

    /// Starts `unit` and waits for the job.
    pub async fn start(&self, unit: &str) -> Result<(), ManagerError> {
        self.run_job("StartUnit", unit).await
    }

    /// Stops `unit` and waits for the job. A unit systemd does not know is
    /// stopped already.
    pub async fn stop(&self, unit: &str) -> Result<(), ManagerError> {
        self.run_job("StopUnit", unit).await
    }

    /// Restarts `unit` and waits for the job.
    pub async fn restart(&self, unit: &str) -> Result<(), ManagerError> {
        self.run_job("RestartUnit", unit).await
    }

    /// Forgets the failed state of `unit` (no error when there is none).
    pub async fn reset_failed(&self, unit: &str) -> Result<(), ManagerError> {
        match self.manager_call("ResetFailedUnit", &(unit,)).await {
            Ok(_) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(e) => Err(systemd_error(format!("cannot reset {unit}"), e)),
        }
    }

    /// Removes the drop-ins of `unit` that [`Systemd::set_limits`] wrote
    /// (`RevertUnitFiles`: the `system.control` drop-ins, persistent and
    /// runtime) and reloads systemd so that it forgets them.
    pub async fn revert(&self, unit: &str) -> Result<(), ManagerError> {
        self.manager_call("RevertUnitFiles", &(vec![unit],))
            .await
            .map_err(|e| systemd_error(format!("cannot remove the drop-ins of {unit}"), e))?;
        self.manager_call("Reload", &())
            .await
            .map_err(|e| systemd_error("cannot reload systemd".into(), e))?;
        Ok(())
    }

    /// Calls `method` (`StartUnit`, ...) with mode `replace` and waits for
    /// the job's `JobRemoved`; a result other than `done` is a
    /// [`ManagerError::UnitFailed`] carrying the unit's `Result`.
    ///
    /// Only systemd's own `JobRemoved` ends the wait: any local user can
    /// emit a signal of that name on the system bus, to everybody or
    /// straight to vmctld. So the unique name of systemd's connection is
    /// asked for (`GetNameOwner`) and put in the match rule: the bus then
    /// delivers nothing else for it, and zbus, which can only match a
    /// unique sender locally (a well-known one it lets through), queues
    /// nothing else in the stream. A forged signal sent straight to vmctld
    /// therefore cannot fill the stream's queue either, which would stall
    /// the whole bus connection (zbus waits for room). Each message is
    /// still checked ([`job_removed_result`]). systemd re-executing gets a
    /// new unique name: the owner is asked again every
    /// [`OWNER_RECHECK`] while waiting (not followed through
    /// `NameOwnerChanged`, whose well-known sender zbus cannot filter, so
    /// forged copies could fill that stream).
    async fn run_job(&self, method: &str, unit: &str) -> Result<(), ManagerError> {
        let result = self.run_job_inner(method, unit).await;
        if let (Some(events), Some(name)) = (&self.events, crate::events::vm_of_unit(unit)) {
            crate::events::refresh(&self.conn, events, name).await;
        }
        result
    }

    async fn run_job_inner(&self, method: &str, unit: &str) -> Result<(), ManagerError> {
        let mut owner = self.systemd_owner().await?;
        let mut jobs = self.job_signals(owner.as_ref()).await?.fuse();
        // The stream is read while every call below waits for its reply:
        // a full queue would stop the bus connection, that reply included.
        let args = (unit, "replace");
        let (reply, early) = while_draining(self.manager_call(method, &args), &mut jobs).await;
        let job: OwnedObjectPath = match reply {
            Ok(reply) => reply
                .body()
                .deserialize()
                .map_err(|e| ManagerError::internal(format!("odd reply to {method}: {e}")))?,
            Err(e) if is_no_such_unit(&e) && method == "StopUnit" => return Ok(()),
            Err(e) => return Err(systemd_error(format!("{method} {unit} failed"), e)),
        };
        tracing::debug!("{method} {unit}: waiting for job {}", job.as_str());
        let mut recheck = tokio::time::interval(OWNER_RECHECK);
        recheck.tick().await;
        let check = |msg: &zbus::Message, owner: Option<&UniqueName<'_>>| {
            self.job_result(msg, owner, &job, unit, method)
        };
        // The job may have ended before its path was known.
        let ended_early = early
            .iter()
            .flatten()
            .find_map(|msg| check(msg, owner.as_deref()));
        let result = if ended_early.is_some() {
            ended_early
        } else {
            loop {
                tokio::select! {
                    msg = jobs.next() => {
                        let Some(msg) = msg else { break None };
                        let Ok(msg) = msg else { continue };
                        if let Some(result) = check(&msg, owner.as_deref()) {
                            break Some(result);
                        }
                    }
                    _ = recheck.tick() => {
                        let (now, _) = while_draining(self.systemd_owner(), &mut jobs).await;
                        let now = now?;
                        if now == owner {
                            continue;
                        }
                        tracing::info!("{method} {unit}: systemd's bus name moved to {now:?}");
                        owner = now;
                        // The old stream's signals are from the old systemd:
                        // whether the job ended meanwhile is read below.
                        let new_jobs = self.job_signals(owner.as_ref());
                        let (new_jobs, _) = while_draining(new_jobs, &mut jobs).await;
                        jobs = new_jobs?.fuse();
                        // If the job ended while systemd was away, no signal
                        // will tell: its state will.
                        let (exists, seen) = while_draining(self.job_exists(&job), &mut jobs).await;
                        let mut seen = seen.iter().flatten();
                        if let Some(result) = seen.find_map(|msg| check(msg, owner.as_deref())) {
                            break Some(result);
                        }
                        if !exists {
                            break Some(String::from("gone"));
                        }
                    }
                }
            }
        };
        let Some(result) = result else {
            return Err(ManagerError::internal(format!(
                "the connection to systemd closed while waiting for {method} {unit}"
            )));
        };
        tracing::info!("{method} {unit}: job result {result}");
        match result.as_str() {
            "done" => Ok(()),
            "gone" => match (method, self.unit_state(unit).await) {
                ("StopUnit", Ok(state)) if state.is_stopped() => Ok(()),
                ("StartUnit" | "RestartUnit", Ok(state)) if state.is_active() => Ok(()),
                (_, state) => Err(ManagerError::internal(format!(
                    "{method} {unit}: the job vanished and the unit is {state:?}"
                ))),
            },
            _ => Err(ManagerError::UnitFailed {
                unit: unit.to_string(),
                result: self.unit_result(unit).await.unwrap_or(result),
            }),
        }
    }

    /// The result `msg` carries if it is systemd's `JobRemoved` for `job`
    /// (see [`job_removed_result`]); a forged one is logged.
    fn job_result(
        &self,
        msg: &zbus::Message,
        owner: Option<&UniqueName<'_>>,
        job: &ObjectPath<'_>,
        unit: &str,
        method: &str,
    ) -> Option<String> {
        match job_removed_result(msg, owner, job, unit) {
            Ok(result) => Some(result),
            Err(Ignored::Forged) => {
                tracing::warn!(
                    "{method} {unit}: ignoring a JobRemoved for job {} from {:?}, \
                     which is not systemd ({:?})",
                    job.as_str(),
                    msg.header().sender().map(|s| s.as_str()),
                    owner.map(|s| s.as_str()),
                );
                None
            }
            Err(Ignored::OtherJob) => None,
        }
    }

    /// systemd's `JobRemoved` signals, sent by `owner` (its unique name;
    /// `None` only on a peer-to-peer connection, where systemd is the
    /// peer). Opened before the call whose job it is to catch.
    async fn job_signals(
        &self,
        owner: Option<&OwnedUniqueName>,
    ) -> Result<MessageStream, ManagerError> {
        let bad_rule = |e: zbus::Error| ManagerError::internal(format!("bad match rule: {e}"));
        let mut rule = MatchRule::builder().msg_type(zbus::message::Type::Signal);
        if let Some(owner) = owner {
            rule = rule.sender(owner.as_str()).map_err(bad_rule)?;
        } else if self.conn.is_bus() {
            return Err(ManagerError::internal(
                "systemd is not on the bus (org.freedesktop.systemd1 has no owner)",
            ));
        }
        let rule = rule
            .path(SYSTEMD_PATH)
            .and_then(|r| r.interface(SYSTEMD_MANAGER))
            .and_then(|r| r.member("JobRemoved"))
            .map_err(bad_rule)?
            .build();
        MessageStream::for_match_rule(rule, &self.conn, Some(JOB_SIGNAL_QUEUE))
            .await
            .map_err(|e| systemd_error("cannot watch systemd's jobs".into(), e))
    }

    /// The unique name of systemd's bus connection, `None` while the name
    /// has no owner, and `None` on a peer-to-peer connection, where the
    /// peer is systemd by construction and stamps no sender.
    async fn systemd_owner(&self) -> Result<Option<OwnedUniqueName>, ManagerError> {
        if !self.conn.is_bus() {
            return Ok(None);
        }
        let reply = self
            .conn
            .call_method(Some(BUS), BUS_PATH, Some(BUS), "GetNameOwner", &(SYSTEMD,))
            .await;
        match reply {
            Ok(reply) => reply
                .body()
                .deserialize::<OwnedUniqueName>()
                .map(Some)
                .map_err(|e| ManagerError::internal(format!("odd reply to GetNameOwner: {e}"))),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
            {
                Ok(None)
            }
            Err(e) => Err(systemd_error(
                "cannot ask who owns systemd's bus name".into(),
                e,
            )),
        }
    }

    /// Whether systemd still has the job at `job`.
    async fn job_exists(&self, job: &OwnedObjectPath) -> bool {
        self.conn
            .call_method(
                Some(SYSTEMD),
                job,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Job", "State"),
            )
            .await
            .is_ok()
    }

    /// The unit's `ActiveState` and `SubState`, read from systemd now.
    pub async fn unit_state(&self, unit: &str) -> zbus::Result<UnitState> {
        let Some(path) = self.unit_path(unit).await? else {
            return Ok(UnitState::NotLoaded);
        };
        let active = self.unit_property(&path, "ActiveState").await?;
        let sub = self.unit_property(&path, "SubState").await?;
        Ok(UnitState::Loaded { active, sub })
    }

    /// Checks, by asking systemd now, that `unit` is down (inactive,
    /// failed, or not loaded): what must hold before a VM's files go.
    pub async fn ensure_stopped(&self, unit: &str) -> Result<(), ManagerError> {
        match self.unit_state(unit).await {
            Ok(state) if state.is_stopped() => Ok(()),
            Ok(state) => Err(ManagerError::internal(format!(
                "{unit} is {state}, not stopped: its files are left in place"
            ))),
            Err(e) => Err(systemd_error(format!("cannot read the state of {unit}"), e)),
        }
    }

    /// The unit's `Result` (`exit-code`, `timeout`, ...), if not `success`.
    async fn unit_result(&self, unit: &str) -> Option<String> {
        let path: OwnedObjectPath = self
            .manager_call("GetUnit", &(unit,))
            .await
            .ok()?
            .body()
            .deserialize()
            .ok()?;
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD),
                &path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Service", "Result"),
            )
            .await
            .ok()?;
        let value: OwnedValue = reply.body().deserialize().ok()?;
        String::try_from(value).ok().filter(|r| r != "success")
    }

    async fn manager_call<B>(&self, method: &str, body: &B) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn
            .call_method(
                Some(SYSTEMD),
                SYSTEMD_PATH,
                Some(SYSTEMD_MANAGER),
                method,
                body,
            )
            .await
    }

    /// The state of VM `name` as the API reports it (see [`vm_state`]).
    pub async fn vm_state(&self, name: &str) -> String {
        let unit = unit_name(name);
        match self.active_state(&unit).await {
            Ok(active) => vm_state(active.as_deref()).to_string(),
            Err(e) => {
                tracing::debug!("cannot read the state of {unit}: {e}");
                STATE_UNKNOWN.to_string()
            }
        }
    }

    /// `ActiveState` of `unit`, or `None` when systemd has not loaded it.
    async fn active_state(&self, unit: &str) -> zbus::Result<Option<String>> {
        match self.unit_path(unit).await? {
            None => Ok(None),
            Some(path) => self.unit_property(&path, "ActiveState").await.map(Some),
        }
    }

    /// The object path of `unit`, or `None` when systemd has not loaded it.
    async fn unit_path(&self, unit: &str) -> zbus::Result<Option<OwnedObjectPath>> {
        match self.manager_call("GetUnit", &(unit,)).await {
            Ok(msg) => Ok(Some(msg.body().deserialize()?)),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == NO_SUCH_UNIT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A string property of the `Unit` interface at `path`.
    async fn unit_property(&self, path: &OwnedObjectPath, property: &str) -> zbus::Result<String> {
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(SYSTEMD_UNIT, property),
            )
            .await?;
        let value: OwnedValue = reply.body().deserialize()?;
        Ok(String::try_from(value)?)
    }
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// systemd has not loaded the unit (it is certainly not running).
    NotLoaded,
    /// The unit's `ActiveState` and `SubState`.
    Loaded {
        /// `ActiveState`: `active`, `inactive`, `deactivating`, ...
        active: String,
        /// `SubState`: `running`, `dead`, `stop-sigterm`, ...
        sub: String,
    },
}

impl UnitState {
    /// Not loaded, `inactive` or `failed`: nothing of the unit runs.
    pub fn is_stopped(&self) -> bool {
        match self {
            Self::NotLoaded => true,
            Self::Loaded { active, .. } => active == "inactive" || active == "failed",
        }
    }

    /// `active`.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Loaded { active, .. } if active == "active")
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLoaded => f.write_str("not loaded"),
            Self::Loaded { active, sub } => write!(f, "{active} ({sub})"),
        }
    }
}

/// Why a `JobRemoved` delivered to us does not end the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// It is not systemd's: wrong sender, object path or interface.
    Forged,
    /// It is systemd's, about another job or unit.
    OtherJob,
}

/// The result (`done`, `failed`, ...) carried by `msg` if it is systemd's
/// `JobRemoved` for `job` of `unit`: sent by `owner` (the unique name that
/// owns `org.freedesktop.systemd1`; `None` only on a peer-to-peer
/// connection to systemd, where there is no sender to check), from
/// systemd's manager object, for exactly that job path and unit.
pub fn job_removed_result(
    msg: &zbus::Message,
    owner: Option<&UniqueName<'_>>,
    job: &ObjectPath<'_>,
    unit: &str,
) -> Result<String, Ignored> {
    let header = msg.header();
    let from_systemd = msg.message_type() == zbus::message::Type::Signal
        && match owner {
            Some(owner) => header.sender() == Some(owner),
            None => {
                header.sender().is_none() || header.sender().map(|s| s.as_str()) == Some(SYSTEMD)
            }
        }
        && header.path().map(|p| p.as_str()) == Some(SYSTEMD_PATH)
        && header.interface().map(|i| i.as_str()) == Some(SYSTEMD_MANAGER)
        && header.member().map(|m| m.as_str()) == Some("JobRemoved");
    if !from_systemd {
        return Err(Ignored::Forged);
    }
    match msg
        .body()
        .deserialize::<(u32, OwnedObjectPath, String, String)>()
    {
        Ok((_id, path, removed_unit, result))
            if path.as_str() == job.as_str() && removed_unit == unit =>
        {
            Ok(result)
        }
        _ => Err(Ignored::OtherJob),
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == NO_SUCH_UNIT || name.as_str() == "org.freedesktop.systemd1.LoadFailed")
}

fn systemd_error(what: String, e: zbus::Error) -> ManagerError {
    ManagerError::internal(format!("{what}: {e}"))
}

/// Maps a unit's `ActiveState` (`None`: not loaded) to a VM state.
pub fn vm_state(active_state: Option<&str>) -> &'static str {
    match active_state {
        None | Some("inactive") => "stopped",
        Some("activating") | Some("reloading") | Some("refreshing") => "starting",
        Some("active") => "running",
        Some("deactivating") => "stopping",
        Some("failed") => "failed",
        Some(_) => STATE_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "/org/freedesktop/systemd1/job/42";

    fn job_removed(sender: &str, path: &str, job: &str, unit: &str) -> zbus::Message {
        zbus::Message::signal(path, SYSTEMD_MANAGER, "JobRemoved")
            .unwrap()
            .sender(sender)
            .unwrap()
            .build(&(42u32, ObjectPath::try_from(job).unwrap(), unit, "done"))
            .unwrap()
    }

    #[test]
    fn believes_only_systemds_job_removed() {
        let owner = UniqueName::try_from(":1.3").unwrap();
        let job = ObjectPath::try_from(JOB).unwrap();
        let check =
            |msg: &zbus::Message| job_removed_result(msg, Some(&owner), &job, "vm@a.service");
        // systemd's own.
        let real = job_removed(":1.3", SYSTEMD_PATH, JOB, "vm@a.service");
        assert_eq!(check(&real), Ok("done".to_string()));
        // Same signal from another connection (`busctl emit` by a user).
        let forged = job_removed(":1.99", SYSTEMD_PATH, JOB, "vm@a.service");
        assert_eq!(check(&forged), Err(Ignored::Forged));
        // From systemd's connection but another object.
        let elsewhere = job_removed(
            ":1.3",
            "/org/freedesktop/systemd1/unit/x",
            JOB,
            "vm@a.service",
        );
        assert_eq!(check(&elsewhere), Err(Ignored::Forged));
        // Another job or another unit.
        let other = job_removed(
            ":1.3",
            SYSTEMD_PATH,
            "/org/freedesktop/systemd1/job/43",
            "vm@a.service",
        );
        assert_eq!(check(&other), Err(Ignored::OtherJob));
        let other_unit = job_removed(":1.3", SYSTEMD_PATH, JOB, "vm@b.service");
        assert_eq!(check(&other_unit), Err(Ignored::OtherJob));
    }

    #[test]
    fn stopped_states() {
        let loaded = |active: &str| UnitState::Loaded {
            active: active.into(),
            sub: "x".into(),
        };
        assert!(UnitState::NotLoaded.is_stopped());
        assert!(loaded("inactive").is_stopped());
        assert!(loaded("failed").is_stopped());
        for running in ["active", "deactivating", "activating", "reloading"] {
            assert!(!loaded(running).is_stopped(), "{running}");
        }
    }

    #[test]
    fn maps_active_states() {
        assert_eq!(vm_state(None), "stopped");
        assert_eq!(vm_state(Some("inactive")), "stopped");
        assert_eq!(vm_state(Some("activating")), "starting");
        assert_eq!(vm_state(Some("active")), "running");
        assert_eq!(vm_state(Some("deactivating")), "stopping");
        assert_eq!(vm_state(Some("failed")), "failed");
        assert_eq!(vm_state(Some("maintenance")), "unknown");
    }
}
