//! The D-Bus front end: `org.vmctl.Manager1` at `/org/vmctl/Manager1`,
//! a thin typed translation onto the [`Manager`].
//!
//! `List` returns `a(ssuutsss)`: name, state, owner UID, vCPUs, memory in
//! bytes, IPv4 address, IPv6 address and MAC (each empty when none; D-Bus
//! has no null), which `busctl call` prints as one readable line per VM.
//!
//! `Create(s name, a{sv} options) -> a{sv}` takes the optional settings by
//! name, as systemd's `StartTransientUnit` does, so busctl users write only
//! what they change:
//!
//! ```sh
//! busctl call org.vmctl.Manager1 /org/vmctl/Manager1 org.vmctl.Manager1 \
//!     Create 'sa{sv}' blog 2 vcpus u 2 memory_bytes t 2147483648
//! ```
//!
//! Options: `image` (s), `vcpus` (u), `memory_bytes` (t), `disk_bytes`
//! (t), `vmm` (s), `network` (s: `none` or `default`),
//! `ssh_authorized_keys` (as); any integer type is accepted for the
//! numbers.
//! `ListEx(a{sv} options) -> a(ssuutsss)` is `List` with options by name:
//! `all` (b) lists every user's VMs (needs manage-any), as `vmctl list
//! --all` does over varlink:
//!
//! ```sh
//! busctl call org.vmctl.Manager1 /org/vmctl/Manager1 org.vmctl.Manager1 \
//!     ListEx 'a{sv}' 1 all b true
//! ```
//!
//! `Describe(s) -> a{sv}` and Create's reply have the fields of the varlink
//! `VMDetails`. `Start`, `Stop`, `Restart` and `Remove` take the name and
//! return when systemd's job is done: a TCG boot may take minutes, so call
//! them with `busctl --timeout=5min`.
//! `OpenGuest(s name, s channel) -> h` hands the caller a socket connected
//! to the VM's guest agent (`agent`) or serial console (`console`).
//! `GetQuota(u uid) -> a{sv}` (uid 4294967295: the caller),
//! `SetQuota(u uid, a{st} limits) -> a{sv}` and `Doctor(b repair) ->
//! a(ssssb)` are the twins of the varlink methods of the same names.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};
use vmctl_api::{
    names::{DBUS_NAME, DBUS_PATH},
    CreateParams, Vm, VmDetails,
};
use zbus::{
    fdo::DBusProxy,
    interface,
    message::Header,
    zvariant::{OwnedValue, Type, Value},
    Connection,
};

use crate::{caller::Subject, Caller, Manager, ManagerError};

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
    /// See [`ManagerError::VmExists`].
    VMExists(String),
    /// See [`ManagerError::NoSuchImage`].
    NoSuchImage(String),
    /// See [`ManagerError::InvalidSize`].
    InvalidSize(String),
    /// See [`ManagerError::UnitFailed`].
    UnitFailed(String),
    /// An argument of the call is malformed (unknown option, wrong type).
    InvalidArgs(String),
    /// See [`ManagerError::InvalidArgument`].
    InvalidArgument(String),
    /// See [`ManagerError::NoFreeAddress`].
    NoFreeAddress(String),
    /// See [`ManagerError::VmNotRunning`].
    VMNotRunning(String),
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
            ManagerError::VmExists { .. } => Self::VMExists(text),
            ManagerError::NoSuchImage { .. } => Self::NoSuchImage(text),
            ManagerError::InvalidSize { .. } => Self::InvalidSize(text),
            ManagerError::UnitFailed { .. } => Self::UnitFailed(text),
            ManagerError::InvalidArgument { .. } => Self::InvalidArgument(text),
            ManagerError::NoFreeAddress { .. } => Self::NoFreeAddress(text),
            ManagerError::VmNotRunning { .. } => Self::VMNotRunning(text),
            ManagerError::Internal { .. } => Self::InternalError(text),
        }
    }
}

/// A VM as a D-Bus struct `(ssuutsss)`.
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
    /// IPv6 address, empty when none is allocated.
    pub ipv6: String,
    /// MAC address, empty when the VM has no NIC.
    pub mac: String,
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
            ipv6: vm.ipv6.unwrap_or_default(),
            mac: vm.mac.unwrap_or_default(),
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

    /// Like `List`, with options by name (systemd's way for a method that
    /// grows arguments, as `ListUnitsFiltered` did next to `ListUnits`):
    /// `all` (b), every user's VMs, which needs manage-any (`vmctl list
    /// --all`). `List` stays as it was.
    async fn list_ex(
        &self,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<DbusVm>, DbusError> {
        let all = list_options(&options)?;
        let caller = caller(conn, &header).await?;
        let vms = self.manager.list_vms(&caller, all).await?;
        Ok(vms.into_iter().map(DbusVm::from).collect())
    }

    /// Defines a new VM; see the module documentation for the options.
    async fn create(
        &self,
        name: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<HashMap<String, OwnedValue>, DbusError> {
        let caller = caller(conn, &header).await?;
        let params = create_params(name, &options)?;
        let vm = self.manager.create(&caller, params).await?;
        Ok(details_dict(vm))
    }

    /// Starts the VM and returns when its unit is up.
    async fn start(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.start(&caller, &name).await?)
    }

    /// Stops the VM and returns when its unit is down.
    async fn stop(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.stop(&caller, &name).await?)
    }

    /// Restarts the VM and returns when its unit is up again.
    async fn restart(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.restart(&caller, &name).await?)
    }

    /// Stops and deletes the VM.
    async fn remove(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.remove(&caller, &name).await?)
    }

    /// How the HTTPS proxy publishes the VM: `port` (0 keeps it) and
    /// `visibility` ("public", "private", or "" to keep it); returns the
    /// port and whether it is public. The twin of varlink `Publish`.
    async fn publish(
        &self,
        name: String,
        port: u16,
        visibility: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(u16, bool), DbusError> {
        let caller = caller(conn, &header).await?;
        let public = match visibility.as_str() {
            "" => None,
            "public" => Some(true),
            "private" => Some(false),
            other => {
                return Err(ManagerError::InvalidArgument {
                    what: "visibility".into(),
                    reason: format!("{other:?}: expected \"public\", \"private\" or \"\""),
                }
                .into())
            }
        };
        let port = (port != 0).then_some(port);
        let p = self.manager.publish(&caller, &name, port, public).await?;
        Ok((p.port, p.public))
    }

    /// Shares the VM's site on the HTTPS proxy with `user` (a user name
    /// or uid); returns the user names it is shared with now. The twin of
    /// varlink `Share`.
    async fn share(
        &self,
        name: String,
        user: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>, DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.share(&caller, &name, &user).await?)
    }

    /// Stops sharing the VM's site with `user`; the twin of varlink
    /// `Unshare`.
    async fn unshare(
        &self,
        name: String,
        user: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>, DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.unshare(&caller, &name, &user).await?)
    }

    /// Everything known about the VM, as a dictionary.
    async fn describe(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<HashMap<String, OwnedValue>, DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(details_dict(self.manager.describe(&caller, &name).await?))
    }

    /// Opens `channel` (`agent` or `console`) of a running VM the caller
    /// may manage and returns the connected socket (`h`); the twin of
    /// varlink `OpenGuest` (see [`crate::guest_access`]).
    async fn open_guest(
        &self,
        name: String,
        channel: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<zvariant::OwnedFd, DbusError> {
        let caller = caller(conn, &header).await?;
        let channel = channel.parse::<crate::guest_access::Channel>()?;
        let fd = self.manager.open_guest(&caller, &name, channel).await?;
        Ok(zvariant::OwnedFd::from(fd))
    }

    /// The quota and usage of user `uid` (`4294967295`: the caller) as a
    /// dictionary; the twin of varlink `GetQuota`.
    async fn get_quota(
        &self,
        uid: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<HashMap<String, OwnedValue>, DbusError> {
        let caller = caller(conn, &header).await?;
        let uid = (uid != u32::MAX).then_some(uid);
        Ok(quota_dict(self.manager.get_quota(&caller, uid).await?))
    }

    /// Replaces the quota override of user `uid` with `limits`
    /// (`max_vms`, `max_vcpus`, `max_memory_bytes`, `max_disk_bytes`; an
    /// empty dictionary removes it); the twin of varlink `SetQuota`.
    async fn set_quota(
        &self,
        uid: u32,
        limits: HashMap<String, u64>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<HashMap<String, OwnedValue>, DbusError> {
        let caller = caller(conn, &header).await?;
        let mut over = crate::store::QuotaOverride::default();
        for (key, value) in limits {
            let slot = match key.as_str() {
                "max_vms" => &mut over.vms,
                "max_vcpus" => &mut over.vcpus,
                "max_memory_bytes" => &mut over.memory,
                "max_disk_bytes" => &mut over.disk,
                _ => {
                    return Err(ManagerError::InvalidArgument {
                        what: "limits".into(),
                        reason: format!("unknown limit {key:?}"),
                    }
                    .into())
                }
            };
            *slot = Some(value);
        }
        Ok(quota_dict(
            self.manager.set_quota(&caller, uid, over).await?,
        ))
    }

    /// The reconciliation report `a(ssssb)`: kind, VM, path, message (VM
    /// and path empty when none) and whether it was repaired; with
    /// `repair`, repairs. The twin of varlink `Doctor`.
    async fn doctor(
        &self,
        repair: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<(String, String, String, String, bool)>, DbusError> {
        let caller = caller(conn, &header).await?;
        let findings = self.manager.doctor(&caller, repair).await?;
        Ok(findings
            .into_iter()
            .map(|f| {
                (
                    f.kind.to_string(),
                    f.vm.unwrap_or_default(),
                    f.path.unwrap_or_default(),
                    f.message,
                    f.repaired,
                )
            })
            .collect())
    }

    /// The version of vmctld, as a property for `busctl introspect`.
    #[zbus(property)]
    async fn version(&self) -> String {
        self.manager.version().to_string()
    }
}

/// A quota as `GetQuota` and `SetQuota` return it: `uid` (u),
/// `overridden` (b), the usage `vms`, `vcpus`, `memory_bytes`,
/// `disk_bytes` (t) and the limits `max_*` (t), absent when unlimited.
pub fn quota_dict(q: vmctl_api::types::Quota) -> HashMap<String, OwnedValue> {
    let mut dict = HashMap::new();
    let mut put = |key: &str, value: Value<'_>| {
        if let Ok(value) = OwnedValue::try_from(value) {
            dict.insert(key.to_string(), value);
        }
    };
    put("uid", Value::U32(q.uid));
    put("overridden", Value::Bool(q.overridden));
    put("vms", Value::U64(q.vms));
    put("vcpus", Value::U64(q.vcpus));
    put("memory_bytes", Value::U64(q.memory_bytes));
    put("disk_bytes", Value::U64(q.disk_bytes));
    for (key, limit) in [
        ("max_vms", q.max_vms),
        ("max_vcpus", q.max_vcpus),
        ("max_memory_bytes", q.max_memory_bytes),
        ("max_disk_bytes", q.max_disk_bytes),
    ] {
        if let Some(limit) = limit {
            put(key, Value::U64(limit));
        }
    }
    dict
}

/// Decodes `Create`'s options dictionary.
pub fn create_params(
    name: String,
    options: &HashMap<String, OwnedValue>,
) -> Result<CreateParams, DbusError> {
    let mut params = CreateParams {
        name,
        ..Default::default()
    };
    for (key, value) in options {
        let bad = |expected: &str| {
            DbusError::InvalidArgs(format!(
                "option {key:?} must be {expected}, got signature {}",
                value.value_signature()
            ))
        };
        match key.as_str() {
            "image" => params.image = Some(string(value).ok_or_else(|| bad("a string (s)"))?),
            "vmm" => {
                let vmm = string(value).ok_or_else(|| bad("a string (s)"))?;
                params.vmm = Some(vmm.parse().map_err(DbusError::InvalidArgs)?);
            }
            "vcpus" => {
                let n = integer(value).ok_or_else(|| bad("an integer"))?;
                params.vcpus = Some(u32::try_from(n).map_err(|_| bad("a 32-bit count"))?);
            }
            "memory_bytes" => {
                params.memory_bytes = Some(integer(value).ok_or_else(|| bad("an integer"))?)
            }
            "disk_bytes" => {
                params.disk_bytes = Some(integer(value).ok_or_else(|| bad("an integer"))?)
            }
            "network" => params.network = Some(string(value).ok_or_else(|| bad("a string (s)"))?),
            "ssh_authorized_keys" => {
                params.ssh_authorized_keys =
                    Some(strings(value).ok_or_else(|| bad("an array of strings (as)"))?)
            }
            other => {
                return Err(DbusError::InvalidArgs(format!(
                "unknown option {other:?}: expected image, vcpus, memory_bytes, disk_bytes, vmm, network or ssh_authorized_keys"
            )))
            }
        }
    }
    Ok(params)
}

/// The options of `ListEx`: whether `all` VMs are asked for.
pub fn list_options(options: &HashMap<String, OwnedValue>) -> Result<bool, DbusError> {
    let mut all = false;
    for (key, value) in options {
        match (key.as_str(), &**value) {
            ("all", Value::Bool(b)) => all = *b,
            ("all", other) => {
                return Err(DbusError::InvalidArgs(format!(
                    "option \"all\" must be a boolean (b), got signature {}",
                    other.value_signature()
                )))
            }
            (other, _) => {
                return Err(DbusError::InvalidArgs(format!(
                    "unknown option {other:?}: ListEx takes only \"all\" (b)"
                )))
            }
        }
    }
    Ok(all)
}

fn string(value: &Value<'_>) -> Option<String> {
    match value {
        Value::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn strings(value: &Value<'_>) -> Option<Vec<String>> {
    match value {
        Value::Array(array) => array.iter().map(string).collect(),
        _ => None,
    }
}

/// A non-negative integer of any D-Bus integer type.
fn integer(value: &Value<'_>) -> Option<u64> {
    match *value {
        Value::U8(n) => Some(n.into()),
        Value::U16(n) => Some(n.into()),
        Value::U32(n) => Some(n.into()),
        Value::U64(n) => Some(n),
        Value::I16(n) => u64::try_from(n).ok(),
        Value::I32(n) => u64::try_from(n).ok(),
        Value::I64(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// A VM's details as `a{sv}` with the field names of `VMDetails`.
pub fn details_dict(vm: VmDetails) -> HashMap<String, OwnedValue> {
    let mut dict = HashMap::new();
    let mut put = |key: &str, value: Value<'_>| {
        if let Ok(value) = OwnedValue::try_from(value) {
            dict.insert(key.to_string(), value);
        }
    };
    put("name", Value::from(vm.name));
    put("state", Value::from(vm.state));
    put("owner_uid", Value::U32(vm.owner_uid));
    put("owner", Value::from(vm.owner));
    put("vcpus", Value::U32(vm.vcpus));
    put("memory_bytes", Value::U64(vm.memory_bytes));
    put("disk_bytes", Value::U64(vm.disk_bytes));
    put("image", Value::from(vm.image));
    put("vmm", Value::from(vm.vmm));
    put("id", Value::from(vm.id));
    put("cid", Value::U32(vm.cid));
    put("unit", Value::from(vm.unit));
    put("ipv4", Value::from(vm.ipv4.unwrap_or_default()));
    put("ipv6", Value::from(vm.ipv6.unwrap_or_default()));
    put("mac", Value::from(vm.mac.unwrap_or_default()));
    put("ssh_user", Value::from(vm.ssh_user.unwrap_or_default()));
    put("ssh_authorized_keys", Value::from(vm.ssh_authorized_keys));
    put("shared_with", Value::from(vm.shared_with));
    dict
}

/// The credentials of the message's sender, asked from the bus daemon.
pub(crate) async fn caller(conn: &Connection, header: &Header<'_>) -> Result<Caller, DbusError> {
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
        // polkit asks the bus about the sender itself: never a bare pid.
        subject: Subject::BusName(sender.to_string()),
        allow_interaction: header
            .primary()
            .flags()
            .contains(zbus::message::Flags::AllowInteractiveAuth),
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

/// Serves the manager object and the VM objects ([`crate::dbus_vm`]) on
/// `conn` and then takes the well-known name,
/// so that callers activated by the name find the object in place.
pub async fn serve(conn: &Connection, manager: Arc<Manager>) -> anyhow::Result<()> {
    conn.object_server()
        .at(DBUS_PATH, ManagerObject::new(manager.clone()))
        .await?;
    crate::dbus_vm::export(conn.clone(), manager).await?;
    conn.request_name(DBUS_NAME).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError as _;

    #[test]
    fn dbus_error_names_match_manager_error() {
        for e in crate::error::one_of_each() {
            let expected = e.dbus_name();
            let text = e.to_string();
            let d = DbusError::from(e);
            assert_eq!(d.name().as_str(), expected);
            assert_eq!(d.description(), Some(text.as_str()));
        }
    }

    #[test]
    fn list_ex_options() {
        let mut options = HashMap::new();
        assert!(!list_options(&options).unwrap());
        options.insert("all".to_string(), OwnedValue::from(true));
        assert!(list_options(&options).unwrap());
        options.insert("all".to_string(), OwnedValue::from(1u32));
        let Err(DbusError::InvalidArgs(message)) = list_options(&options) else {
            panic!("a number taken for all");
        };
        assert!(message.contains("boolean"), "{message}");
        let options = HashMap::from([("colour".to_string(), OwnedValue::from(true))]);
        let Err(DbusError::InvalidArgs(message)) = list_options(&options) else {
            panic!("an unknown option taken");
        };
        assert!(message.contains("\"colour\""), "{message}");
    }

    #[test]
    fn create_options() {
        let mut options = HashMap::new();
        options.insert("vcpus".to_string(), OwnedValue::from(2u32));
        options.insert("memory_bytes".to_string(), OwnedValue::from(1u64 << 30));
        options.insert(
            "vmm".to_string(),
            OwnedValue::try_from(Value::from("qemu")).unwrap(),
        );
        let p = create_params("blog".into(), &options).unwrap();
        assert_eq!(p.vcpus, Some(2));
        assert_eq!(p.memory_bytes, Some(1 << 30));
        assert_eq!(p.vmm, Some(vmctl_api::spec::VmmChoice::Qemu));
        options.insert("colour".to_string(), OwnedValue::from(1u32));
        assert!(matches!(
            create_params("blog".into(), &options),
            Err(DbusError::InvalidArgs(_))
        ));
        let mut options = HashMap::new();
        let keys = vec!["ssh-ed25519 AAAA a".to_string()];
        options.insert(
            "ssh_authorized_keys".to_string(),
            OwnedValue::try_from(Value::from(keys.clone())).unwrap(),
        );
        options.insert(
            "network".to_string(),
            OwnedValue::try_from(Value::from("none")).unwrap(),
        );
        let p = create_params("blog".into(), &options).unwrap();
        assert_eq!(p.ssh_authorized_keys, Some(keys));
        assert_eq!(p.network.as_deref(), Some("none"));
        options.insert("network".to_string(), OwnedValue::from(1u32));
        assert!(create_params("blog".into(), &options).is_err());
        let mut options = HashMap::new();
        options.insert("vcpus".to_string(), OwnedValue::from(-1i32));
        assert!(create_params("blog".into(), &options).is_err());
    }

    #[test]
    fn vm_struct_signature() {
        assert_eq!(DbusVm::SIGNATURE.to_string(), "(ssuutsss)");
    }
}
