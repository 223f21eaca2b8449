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
//! the job, so its end cannot be missed.

use futures_util::StreamExt;
use vmctl_api::spec::unit_name;
use zbus::{
    zvariant::{OwnedObjectPath, OwnedValue, Value},
    Connection, MatchRule, MessageStream,
};

use crate::{limits::UnitLimits, manager::STATE_UNKNOWN, ManagerError};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
const SYSTEMD_UNIT: &str = "org.freedesktop.systemd1.Unit";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// A client of systemd's D-Bus API.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: Connection,
}

impl Systemd {
    /// A client on `conn`: a bus connection (the system bus, or a test bus)
    /// or a peer-to-peer connection to systemd.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
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
    async fn run_job(&self, method: &str, unit: &str) -> Result<(), ManagerError> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(SYSTEMD_MANAGER)
            .and_then(|r| r.member("JobRemoved"))
            .map(|r| r.build())
            .map_err(|e| ManagerError::internal(format!("bad match rule: {e}")))?;
        let mut signals = MessageStream::for_match_rule(rule, &self.conn, Some(256))
            .await
            .map_err(|e| systemd_error("cannot watch systemd jobs".into(), e))?;
        let job: OwnedObjectPath = match self.manager_call(method, &(unit, "replace")).await {
            Ok(reply) => reply
                .body()
                .deserialize()
                .map_err(|e| ManagerError::internal(format!("odd reply to {method}: {e}")))?,
            Err(e) if is_no_such_unit(&e) && method == "StopUnit" => return Ok(()),
            Err(e) => return Err(systemd_error(format!("{method} {unit} failed"), e)),
        };
        tracing::debug!("{method} {unit}: waiting for job {}", job.as_str());
        while let Some(msg) = signals.next().await {
            let Ok(msg) = msg else { continue };
            let Ok((_id, path, _unit, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path != job {
                continue;
            }
            tracing::info!("{method} {unit}: job result {result}");
            return match result.as_str() {
                "done" => Ok(()),
                _ => Err(ManagerError::UnitFailed {
                    unit: unit.to_string(),
                    result: self.unit_result(unit).await.unwrap_or(result),
                }),
            };
        }
        Err(ManagerError::internal(format!(
            "the connection to systemd closed while waiting for {method} {unit}"
        )))
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
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD),
                SYSTEMD_PATH,
                Some(SYSTEMD_MANAGER),
                "GetUnit",
                &(unit,),
            )
            .await;
        let path: OwnedObjectPath = match reply {
            Ok(msg) => msg.body().deserialize()?,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == NO_SUCH_UNIT => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD),
                &path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(SYSTEMD_UNIT, "ActiveState"),
            )
            .await?;
        let value: zbus::zvariant::OwnedValue = reply.body().deserialize()?;
        Ok(Some(String::try_from(value)?))
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
