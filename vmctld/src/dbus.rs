//! The D-Bus front end: `org.vmctl.Manager1` at `/org/vmctl/Manager1`,
//! a thin typed translation onto the [`Manager`].
//!
//! `List` returns `a(ssuuts)`: name, state, owner UID, vCPUs, memory in
//! bytes and IPv4 address (empty when none; D-Bus has no null), which
//! `busctl call` prints as one readable line per VM.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmctl_api::{
    names::{DBUS_NAME, DBUS_PATH},
    Vm,
};
use zbus::{fdo::DBusProxy, interface, message::Header, zvariant::Type, Connection};

use crate::{Caller, Manager, ManagerError};

/// Errors as D-Bus sees them: `org.vmctl.Manager1.Error.<IDL name>`, with
/// the human-readable message as the error text.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.vmctl.Manager1.Error")]
pub enum DbusError {
    /// A transport-level zbus error.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// See [`ManagerError::NoSuchVm`].
    NoSuchVM(String),
    /// See [`ManagerError::InvalidName`].
    InvalidName(String),
    /// See [`ManagerError::PermissionDenied`].
    PermissionDenied(String),
    /// See [`ManagerError::QuotaExceeded`].
    QuotaExceeded(String),
    /// See [`ManagerError::Internal`].
    InternalError(String),
}

impl From<ManagerError> for DbusError {
    fn from(e: ManagerError) -> Self {
        let text = e.to_string();
        match e {
            ManagerError::NoSuchVm { .. } => Self::NoSuchVM(text),
            ManagerError::InvalidName { .. } => Self::InvalidName(text),
            ManagerError::PermissionDenied { .. } => Self::PermissionDenied(text),
            ManagerError::QuotaExceeded { .. } => Self::QuotaExceeded(text),
            ManagerError::Internal { .. } => Self::InternalError(text),
        }
    }
}

/// A VM as a D-Bus struct `(ssuuts)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct DbusVm {
    /// VM name.
    pub name: String,
    /// Lifecycle state.
    pub state: String,
    /// Owner UID.
    pub owner_uid: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// IPv4 address, empty when none is allocated.
    pub ipv4: String,
}

impl From<Vm> for DbusVm {
    fn from(vm: Vm) -> Self {
        Self {
            name: vm.name,
            state: vm.state,
            owner_uid: vm.owner_uid,
            vcpus: vm.vcpus,
            memory_bytes: vm.memory_bytes,
            ipv4: vm.ipv4.unwrap_or_default(),
        }
    }
}

/// The object served at `/org/vmctl/Manager1`.
#[derive(Debug)]
pub struct ManagerObject {
    manager: Arc<Manager>,
}

impl ManagerObject {
    /// The object answering with `manager`.
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }
}

#[interface(name = "org.vmctl.Manager1")]
impl ManagerObject {
    /// The version of vmctld.
    async fn get_version(&self) -> String {
        self.manager.version().to_string()
    }

    /// The VMs the caller may see, sorted by name.
    async fn list(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<DbusVm>, DbusError> {
        let caller = caller(conn, &header).await?;
        let vms = self.manager.list(&caller).await?;
        Ok(vms.into_iter().map(DbusVm::from).collect())
    }

    /// The version of vmctld, as a property for `busctl introspect`.
    #[zbus(property)]
    async fn version(&self) -> String {
        self.manager.version().to_string()
    }
}

/// The credentials of the message's sender, asked from the bus daemon.
async fn caller(conn: &Connection, header: &Header<'_>) -> Result<Caller, DbusError> {
    let sender = header
        .sender()
        .ok_or_else(|| ManagerError::internal("message has no sender"))?;
    let creds = DBusProxy::new(conn)
        .await?
        .get_connection_credentials(sender.clone().into())
        .await
        .map_err(|e| ManagerError::internal(format!("cannot get credentials of {sender}: {e}")))?;
    let uid = creds
        .unix_user_id()
        .ok_or_else(|| ManagerError::internal(format!("bus reports no UID for {sender}")))?;
    Ok(Caller {
        uid,
        pid: creds.process_id().unwrap_or(0),
    })
}

/// Where to connect for D-Bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    /// The system bus.
    System,
    /// A bus at this address (tests, private buses).
    Address(String),
}

impl std::fmt::Display for BusChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::System => write!(f, "the system bus"),
            Self::Address(address) => write!(f, "the bus at {address}"),
        }
    }
}

/// Connects to the bus (without taking a name yet).
pub async fn connect(bus: &BusChoice) -> anyhow::Result<Connection> {
    let builder = match bus {
        BusChoice::System => zbus::connection::Builder::system()?,
        BusChoice::Address(address) => zbus::connection::Builder::address(address.as_str())?,
    };
    Ok(builder.build().await?)
}

/// Serves the manager object on `conn` and then takes the well-known name,
/// so that callers activated by the name find the object in place.
pub async fn serve(conn: &Connection, manager: Arc<Manager>) -> anyhow::Result<()> {
    conn.object_server()
        .at(DBUS_PATH, ManagerObject::new(manager))
        .await?;
    conn.request_name(DBUS_NAME).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError as _;

    #[test]
    fn dbus_error_names_match_manager_error() {
        for e in [
            ManagerError::NoSuchVm { name: "a".into() },
            ManagerError::InvalidName {
                name: "a b".into(),
                reason: "r".into(),
            },
            ManagerError::PermissionDenied { action: "x".into() },
            ManagerError::QuotaExceeded {
                resource: "vms".into(),
                limit: 1,
                requested: 2,
            },
            ManagerError::internal("boom"),
        ] {
            let expected = e.dbus_name();
            let text = e.to_string();
            let d = DbusError::from(e);
            assert_eq!(d.name().as_str(), expected);
            assert_eq!(d.description(), Some(text.as_str()));
        }
    }

    #[test]
    fn vm_struct_signature() {
        assert_eq!(DbusVm::SIGNATURE.to_string(), "(ssuuts)");
    }
}
