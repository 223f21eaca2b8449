//! The live state of VMs, read from systemd: a VM runs as
//! `vm@NAME.service`, so its state is that unit's `ActiveState`.
//!
//! Asked over D-Bus (`org.freedesktop.systemd1`) on the bus vmctld is
//! connected to. Any failure to ask yields `unknown` rather than a guess.

use vmctl_api::spec::unit_name;
use zbus::{zvariant::OwnedObjectPath, Connection};

use crate::manager::STATE_UNKNOWN;

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
    /// A client on `conn` (the system bus in production).
    pub fn new(conn: Connection) -> Self {
        Self { conn }
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
