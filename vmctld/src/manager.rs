//! The service layer: the one core both front ends call.
//!
//! Every operation takes the [`Caller`] so that authorisation (root always,
//! polkit otherwise) and ownership are decided here, once. New operations
//! (Create, Start, ...) are added as methods returning
//! `Result<_, ManagerError>`; the front ends then only translate.

use std::path::{Path, PathBuf};

use vmctl_api::{spec::Layout, Vm};

use crate::{authz::Authority, units::Systemd, Caller, ManagerError, Registry};

/// The state reported when vmctld cannot ask systemd about
/// `vm@NAME.service` (no bus, or systemd not reachable).
pub const STATE_UNKNOWN: &str = "unknown";

/// The vmctl manager: owns the registry and answers API calls.
#[derive(Debug)]
pub struct Manager {
    registry: Registry,
    layout: Layout,
    systemd: Option<Systemd>,
    /// `/etc/vmctl/vmctl.conf`, read at each create (see
    /// [`crate::addresses`]).
    config_path: PathBuf,
    /// Decides for callers other than root (polkit).
    authority: Authority,
    /// VM events and the states followed from systemd's signals.
    events: crate::events::Events,
}

impl Manager {
    /// A manager over `registry`, without systemd (states are `unknown`).
    pub fn new(registry: Registry) -> Self {
        let state_dir = registry
            .vms_dir()
            .parent()
            .unwrap_or(registry.vms_dir())
            .to_path_buf();
        Self {
            registry,
            layout: Layout::under(state_dir, Layout::default().runtime_dir),
            systemd: None,
            config_path: crate::addresses::default_config_path(),
            authority: Authority::default(),
            events: crate::events::Events::new(),
        }
    }

    /// Asks `authority` instead of polkitd on the system bus.
    pub fn with_authority(mut self, authority: Authority) -> Self {
        self.authority = authority;
        self
    }

    /// Who decides for callers other than root.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Publishes runtime files (names for NSS, known hosts) under `dir`
    /// instead of `/run/vmctl`.
    pub fn with_runtime_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.layout.runtime_dir = dir.as_ref().to_path_buf();
        self
    }

    /// Reads the configuration from `path` instead of
    /// `/etc/vmctl/vmctl.conf`.
    pub fn with_config(mut self, path: impl AsRef<Path>) -> Self {
        self.config_path = path.as_ref().to_path_buf();
        self
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Reads VM states from systemd through `systemd`.
    pub fn with_systemd(mut self, systemd: Systemd) -> Self {
        self.systemd = Some(systemd.with_events(self.events.clone()));
        self
    }

    /// The registry this manager owns.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where the VMs' files live.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The systemd client, when vmctld has one.
    pub fn systemd(&self) -> Option<&Systemd> {
        self.systemd.as_ref()
    }

    /// VM events (created, removed, state changed) and the states
    /// followed from systemd's signals (see [`crate::events`]).
    pub fn events(&self) -> &crate::events::Events {
        &self.events
    }

    /// The state of VM `name` (`unknown` without systemd): from memory
    /// while [`crate::events::watch`] follows systemd, else asked now.
    pub async fn vm_state(&self, name: &str) -> String {
        if let Some(state) = self.events.state(name) {
            return state;
        }
        match &self.systemd {
            Some(systemd) => systemd.vm_state(name).await,
            None => STATE_UNKNOWN.to_string(),
        }
    }

    /// The version of vmctld.
    pub fn version(&self) -> &'static str {
        crate::VERSION
    }

    /// The VMs `caller` may see, sorted by name: root sees every VM, other
    /// users see the VMs they own.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<Vm>, ManagerError> {
        self.list_vms(caller, false).await
    }

    /// Like [`Manager::list`]; with `all`, every user's VMs, which needs
    /// manage-any (`vmctl list --all`).
    pub async fn list_vms(&self, caller: &Caller, all: bool) -> Result<Vec<Vm>, ManagerError> {
        if all {
            self.authorize(caller, crate::authz::Action::ManageAny)
                .await?;
        }
        let rows = self.registry.summaries()?;
        let mut owners = crate::accounts::OwnerNames::default();
        let mut vms = Vec::new();
        for row in rows
            .iter()
            .filter(|row| all || caller.is_root() || row.owner_uid == caller.uid)
        {
            let state = self.vm_state(&row.name).await;
            let owner = owners.name(row.owner_uid);
            vms.push(public_view(row, state, owner));
        }
        Ok(vms)
    }
}

/// What the API shows of a stored VM in `state`.
fn public_view(row: &crate::store::VmSummary, state: String, owner: String) -> Vm {
    Vm {
        ipv4: row.ipv4.clone(),
        ipv6: row.ipv6.clone(),
        mac: row.mac.clone(),
        name: row.name.clone(),
        state,
        owner_uid: row.owner_uid,
        owner,
        vcpus: row.vcpus,
        memory_bytes: row.memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{spec, write};

    #[tokio::test]
    async fn users_see_their_own_vms_root_sees_all() {
        let dir = tempfile::tempdir().unwrap();
        for (name, uid) in [("a", 0), ("b", 1000), ("c", 1001)] {
            let json = serde_json::to_string(&spec(name, uid)).unwrap();
            write(dir.path(), &format!("{name}.json"), &json);
        }
        let m = Manager::new(Registry::new(dir.path()));
        let names = |vms: Vec<Vm>| vms.into_iter().map(|v| v.name).collect::<Vec<_>>();
        assert_eq!(names(m.list(&Caller::ROOT).await.unwrap()), ["a", "b", "c"]);
        let user = Caller::without_subject(1000);
        let vms = m.list(&user).await.unwrap();
        assert_eq!(
            vms,
            [Vm {
                name: "b".into(),
                state: "unknown".into(),
                owner_uid: 1000,
                owner: crate::accounts::display_name(1000),
                vcpus: 2,
                memory_bytes: 1 << 30,
                ipv4: None,
                ipv6: None,
                mac: None,
            }]
        );
    }
    #[tokio::test]
    async fn all_needs_manage_any() {
        let dir = tempfile::tempdir().unwrap();
        for (name, uid) in [("a", 1000), ("b", 4_000_000)] {
            let json = serde_json::to_string(&spec(name, uid)).unwrap();
            write(dir.path(), &format!("{name}.json"), &json);
        }
        let m = Manager::new(Registry::new(dir.path())).with_authority(
            crate::authz::Authority::fixed([(1002, crate::authz::Action::ManageAny)]),
        );
        let e = m
            .list_vms(&Caller::without_subject(1000), true)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ManagerError::PermissionDenied {
                action: "org.vmctl.vm.manage-any".into()
            }
        );
        let vms = m
            .list_vms(&Caller::without_subject(1002), true)
            .await
            .unwrap();
        let owners: Vec<_> = vms
            .iter()
            .map(|v| (v.name.as_str(), v.owner.as_str()))
            .collect();
        // A uid without a user name shows as the number.
        assert_eq!(owners.len(), 2);
        assert_eq!(owners[1], ("b", "4000000"));
        // Without all, manage-any does not change what is listed.
        assert!(m
            .list_vms(&Caller::without_subject(1002), false)
            .await
            .unwrap()
            .is_empty());
    }
}
