//! One D-Bus object per VM: `/org/vmctl/VM/<escaped name>` with interface
//! `org.vmctl.VM1`, exported through `org.freedesktop.DBus.ObjectManager` on
//! `/org/vmctl/Manager1`, and kept current by [`crate::events`]:
//! `InterfacesAdded` when a VM is created, `PropertiesChanged` (`State`)
//! when systemd reports a new state of its unit, `InterfacesRemoved` when it
//! is removed.
//!
//! # Who sees what
//!
//! The bus shows every object to every client (`busctl tree`), and
//! broadcast signals reach anyone who listens. So what is public is what
//! systemd already makes public about `vm@NAME.service` to every local user
//! (`systemctl list-units 'vm@*'`): `Name`, `Unit` and `State`. They are the
//! only properties in the signals. The rest (`Owner`, `OwnerUID`, `VCPUs`,
//! `MemoryBytes`, `Image`, `Addresses`, `MAC`) is answered per call, only
//! to a caller who may see the VM (its owner, root, manage-any), as
//! `Describe` decides: `Get` says `AccessDenied` to anybody else, `GetAll`
//! and `GetManagedObjects` leave those properties out. The methods ask the
//! [`Manager`] with the D-Bus caller, exactly as varlink does.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast::error::RecvError;
use vmctl_api::{
    names::{DBUS_PATH, DBUS_VM_INTERFACE},
    vm_object_path, VmDetails,
};
use zbus::{
    fdo,
    message::Header,
    names::InterfaceName,
    object_server::SignalEmitter,
    zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value},
    Connection,
};

use crate::{
    dbus::{caller, DbusError},
    events::{VmEvent, VmEventKind},
    Manager, ManagerError,
};

/// `GetManagedObjects`' answer: path → interface → property → value.
pub type ManagedObjects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;

/// The object of one VM.
#[derive(Debug)]
pub struct VmObject {
    name: String,
    manager: Arc<Manager>,
    /// The details read for the call being answered (sender, serial), so a
    /// `GetAll` asks once, not once per property.
    last: Mutex<Option<(String, u32, Option<VmDetails>)>>,
}

impl VmObject {
    /// The object of VM `name`.
    pub fn new(name: &str, manager: Arc<Manager>) -> Self {
        Self {
            name: name.to_string(),
            manager,
            last: Mutex::new(None),
        }
    }

    /// The VM's details if the sender of `header` may see it.
    async fn details(
        &self,
        conn: &Connection,
        header: Option<&Header<'_>>,
    ) -> fdo::Result<VmDetails> {
        let denied = || fdo::Error::AccessDenied(format!("no access to VM {}", self.name));
        let header = header.ok_or_else(denied)?;
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        let serial = header.primary().serial_num().get();
        if let Some((s, n, details)) = self.lock().as_ref() {
            if *s == sender && *n == serial {
                return details.clone().ok_or_else(denied);
            }
        }
        let details = match caller(conn, header).await {
            Ok(caller) => self.manager.describe(&caller, &self.name).await.ok(),
            Err(_) => None,
        };
        *self.lock() = Some((sender, serial, details.clone()));
        details.ok_or_else(denied)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, u32, Option<VmDetails>)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[zbus::interface(name = "org.vmctl.VM1")]
impl VmObject {
    /// Starts the VM and returns when its unit is up.
    async fn start(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.start(&caller, &self.name).await?)
    }

    /// Stops the VM and returns when its unit is down.
    async fn stop(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.stop(&caller, &self.name).await?)
    }

    /// Restarts the VM and returns when its unit is up again.
    async fn restart(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.restart(&caller, &self.name).await?)
    }

    /// Stops and deletes the VM.
    async fn remove(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let caller = caller(conn, &header).await?;
        Ok(self.manager.remove(&caller, &self.name).await?)
    }

    /// The VM's name.
    #[zbus(property(emits_changed_signal = "const"), name = "Name")]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The unit running the VM, `vm@NAME.service`.
    #[zbus(property(emits_changed_signal = "const"), name = "Unit")]
    fn unit(&self) -> String {
        vmctl_api::spec::unit_name(&self.name)
    }

    /// `stopped`, `starting`, `running`, `stopping`, `failed` or `unknown`.
    #[zbus(property, name = "State")]
    async fn state(&self) -> String {
        self.manager.vm_state(&self.name).await
    }

    /// The owner's user name (only for callers who may see the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "Owner")]
    async fn owner(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        let d = self.details(conn, header.as_ref()).await?;
        Ok(crate::accounts::user_name(d.owner_uid).unwrap_or_else(|| d.owner_uid.to_string()))
    }

    /// The owner's uid (only for callers who may see the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "OwnerUID")]
    async fn owner_uid(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u32> {
        Ok(self.details(conn, header.as_ref()).await?.owner_uid)
    }

    /// Number of virtual CPUs (only for callers who may see the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "VCPUs")]
    async fn vcpus(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u32> {
        Ok(self.details(conn, header.as_ref()).await?.vcpus)
    }

    /// Guest memory in bytes (only for callers who may see the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "MemoryBytes")]
    async fn memory_bytes(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<u64> {
        Ok(self.details(conn, header.as_ref()).await?.memory_bytes)
    }

    /// The image of the root disk (only for callers who may see the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "Image")]
    async fn image(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        Ok(self.details(conn, header.as_ref()).await?.image)
    }

    /// The IPv4 and IPv6 addresses, empty for a VM without network (only
    /// for callers who may see the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "Addresses")]
    async fn addresses(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<String>> {
        let d = self.details(conn, header.as_ref()).await?;
        Ok(d.ipv4.into_iter().chain(d.ipv6).collect())
    }

    /// The MAC address, empty without NIC (only for callers who may see
    /// the VM).
    #[zbus(property(emits_changed_signal = "const"), name = "MAC")]
    async fn mac(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        Ok(self
            .details(conn, header.as_ref())
            .await?
            .mac
            .unwrap_or_default())
    }
}

pub use object_manager::VmObjectManager;

mod object_manager {
    // zbus generates a public trait of signal methods without documentation.
    #![allow(missing_docs)]

    use super::*;

    /// `org.freedesktop.DBus.ObjectManager` on `/org/vmctl/Manager1`, for the
    /// VM objects under `/org/vmctl/VM` (zbus's own only manages objects below
    /// its path, and answers every caller alike).
    #[derive(Debug)]
    pub struct VmObjectManager {
        manager: Arc<Manager>,
    }

    impl VmObjectManager {
        /// The object manager of `manager`'s VMs.
        pub fn new(manager: Arc<Manager>) -> Self {
            Self { manager }
        }
    }

    #[zbus::interface(name = "org.freedesktop.DBus.ObjectManager")]
    impl VmObjectManager {
        /// The VMs the caller may see, with every property of each.
        async fn get_managed_objects(
            &self,
            #[zbus(header)] header: Header<'_>,
            #[zbus(connection)] conn: &Connection,
        ) -> Result<ManagedObjects, DbusError> {
            let caller = caller(conn, &header).await?;
            let mut objects = ManagedObjects::new();
            for vm in self.manager.list(&caller).await? {
                let details = match self.manager.describe(&caller, &vm.name).await {
                    Ok(details) => details,
                    // Removed meanwhile.
                    Err(ManagerError::NoSuchVm { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                let Ok(path) = OwnedObjectPath::try_from(vm_object_path(&vm.name)) else {
                    continue;
                };
                let props = full_properties(details);
                objects.insert(
                    path,
                    HashMap::from([(DBUS_VM_INTERFACE.to_string(), props)]),
                );
            }
            Ok(objects)
        }

        /// A VM was created (only its public properties: see the module
        /// documentation).
        #[zbus(signal)]
        pub(crate) async fn interfaces_added(
            emitter: &SignalEmitter<'_>,
            object_path: ObjectPath<'_>,
            interfaces_and_properties: HashMap<&str, HashMap<&str, Value<'_>>>,
        ) -> zbus::Result<()>;

        /// A VM was removed.
        #[zbus(signal)]
        pub(crate) async fn interfaces_removed(
            emitter: &SignalEmitter<'_>,
            object_path: ObjectPath<'_>,
            interfaces: Vec<&str>,
        ) -> zbus::Result<()>;
    }
}

/// Every property of a VM, for a caller who may see it.
pub fn full_properties(d: VmDetails) -> HashMap<String, OwnedValue> {
    let mut props = HashMap::new();
    let mut put = |key: &str, value: Value<'_>| {
        if let Ok(value) = OwnedValue::try_from(value) {
            props.insert(key.to_string(), value);
        }
    };
    let owner = crate::accounts::user_name(d.owner_uid).unwrap_or_else(|| d.owner_uid.to_string());
    let addresses: Vec<String> = d.ipv4.into_iter().chain(d.ipv6).collect();
    put("Name", Value::from(d.name));
    put("State", Value::from(d.state));
    put("Unit", Value::from(d.unit));
    put("Owner", Value::from(owner));
    put("OwnerUID", Value::U32(d.owner_uid));
    put("VCPUs", Value::U32(d.vcpus));
    put("MemoryBytes", Value::U64(d.memory_bytes));
    put("Image", Value::from(d.image));
    put("Addresses", Value::from(addresses));
    put("MAC", Value::from(d.mac.unwrap_or_default()));
    props
}

/// Puts an object for every VM on `conn` and keeps them current from the
/// events until the bus connection or the event source ends. The event
/// receiver is taken before the objects are made, so nothing is missed.
pub async fn export(conn: Connection, manager: Arc<Manager>) -> anyhow::Result<()> {
    let mut rx = manager.events().subscribe();
    conn.object_server()
        .at(DBUS_PATH, VmObjectManager::new(manager.clone()))
        .await?;
    let mut exported = Exported::default();
    exported.sync(&conn, &manager, false).await;
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => exported.apply(&conn, &manager, event).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("D-Bus: {n} VM events missed, re-reading the VMs");
                    exported.sync(&conn, &manager, true).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(())
}

/// The names of the VMs that have an object.
#[derive(Debug, Default)]
struct Exported {
    names: std::collections::BTreeSet<String>,
}

impl Exported {
    /// Makes the objects match the registry (at start, and after missed
    /// events); `signal`: announce the differences.
    async fn sync(&mut self, conn: &Connection, manager: &Arc<Manager>, signal: bool) {
        let specs = match manager.registry().list() {
            Ok(specs) => specs,
            Err(e) => {
                tracing::warn!("D-Bus: cannot list the VMs: {e}");
                return;
            }
        };
        let now: std::collections::BTreeSet<String> = specs.into_iter().map(|s| s.name).collect();
        let gone: Vec<String> = self.names.difference(&now).cloned().collect();
        for name in gone {
            self.remove(conn, &name, signal).await;
        }
        for name in &now {
            self.add(conn, manager, name, signal).await;
            if signal {
                let state = manager.vm_state(name).await;
                emit_state(conn, name, &state).await;
            }
        }
    }

    async fn apply(&mut self, conn: &Connection, manager: &Arc<Manager>, event: VmEvent) {
        match event.kind {
            VmEventKind::Added => self.add(conn, manager, &event.name, true).await,
            VmEventKind::Removed => self.remove(conn, &event.name, true).await,
            VmEventKind::Changed { state } => {
                if self.names.contains(&event.name) {
                    emit_state(conn, &event.name, &state).await;
                }
            }
        }
    }

    async fn add(&mut self, conn: &Connection, manager: &Arc<Manager>, name: &str, signal: bool) {
        if self.names.contains(name) {
            return;
        }
        let path = vm_object_path(name);
        let object = VmObject::new(name, manager.clone());
        if let Err(e) = conn.object_server().at(path.as_str(), object).await {
            tracing::warn!("D-Bus: cannot export VM {name}: {e}");
            return;
        }
        self.names.insert(name.to_string());
        if !signal {
            return;
        }
        let state = manager.vm_state(name).await;
        let unit = vmctl_api::spec::unit_name(name);
        let props = HashMap::from([
            ("Name", Value::from(name)),
            ("State", Value::from(state.as_str())),
            ("Unit", Value::from(unit.as_str())),
        ]);
        let interfaces = HashMap::from([(DBUS_VM_INTERFACE, props)]);
        if let Some(emitter) = emitter(conn, DBUS_PATH) {
            let Ok(path) = ObjectPath::try_from(path.as_str()) else {
                return;
            };
            if let Err(e) = VmObjectManager::interfaces_added(&emitter, path, interfaces).await {
                tracing::debug!("D-Bus: InterfacesAdded for {name}: {e}");
            }
        }
    }

    async fn remove(&mut self, conn: &Connection, name: &str, signal: bool) {
        if !self.names.remove(name) {
            return;
        }
        let path = vm_object_path(name);
        if let Err(e) = conn
            .object_server()
            .remove::<VmObject, _>(path.as_str())
            .await
        {
            tracing::warn!("D-Bus: cannot withdraw VM {name}: {e}");
        }
        if !signal {
            return;
        }
        if let (Some(emitter), Ok(path)) = (emitter(conn, DBUS_PATH), ObjectPath::try_from(path)) {
            let removed = vec![DBUS_VM_INTERFACE];
            if let Err(e) = VmObjectManager::interfaces_removed(&emitter, path, removed).await {
                tracing::debug!("D-Bus: InterfacesRemoved for {name}: {e}");
            }
        }
    }
}

/// `PropertiesChanged(org.vmctl.VM1, {State}, [])` on the VM's object.
async fn emit_state(conn: &Connection, name: &str, state: &str) {
    let path = vm_object_path(name);
    let Some(emitter) = emitter(conn, &path) else {
        return;
    };
    let changed = HashMap::from([("State", Value::from(state))]);
    let interface = InterfaceName::from_static_str_unchecked(DBUS_VM_INTERFACE);
    if let Err(e) =
        fdo::Properties::properties_changed(&emitter, interface, changed, (&[]).into()).await
    {
        tracing::debug!("D-Bus: PropertiesChanged for {name}: {e}");
    }
}

fn emitter<'a>(conn: &Connection, path: &'a str) -> Option<SignalEmitter<'a>> {
    SignalEmitter::new(conn, path).ok()
}
