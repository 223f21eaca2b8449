//! The service layer: the one core both front ends call.
//!
//! Every operation takes the [`Caller`] so that authorisation (root always,
//! polkit otherwise) and ownership are decided here, once. New operations
//! (Create, Start, ...) are added as methods returning
//! `Result<_, ManagerError>`; the front ends then only translate.

use vmctl_api::Vm;

use crate::{Caller, ManagerError, Registry};

/// The vmctl manager: owns the registry and answers API calls.
#[derive(Debug)]
pub struct Manager {
    registry: Registry,
}

impl Manager {
    /// A manager over `registry`.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// The registry this manager owns.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The version of vmctld.
    pub fn version(&self) -> &'static str {
        crate::VERSION
    }

    /// The VMs `caller` may see, sorted by name: root sees every VM, other
    /// users see the VMs they own.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<Vm>, ManagerError> {
        let vms = self.registry.list()?;
        Ok(vms
            .into_iter()
            .filter(|vm| caller.is_root() || vm.owner_uid == caller.uid)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_see_their_own_vms_root_sees_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vms")).unwrap();
        for (name, uid) in [("a", 0), ("b", 1000), ("c", 1001)] {
            let vm = Vm {
                name: name.into(),
                state: "stopped".into(),
                owner_uid: uid,
                vcpus: 1,
                memory_bytes: 1 << 30,
                ipv4: None,
            };
            std::fs::write(
                dir.path().join(format!("vms/{name}.json")),
                serde_json::to_string(&vm).unwrap(),
            )
            .unwrap();
        }
        let m = Manager::new(Registry::new(dir.path()));
        let names = |vms: Vec<Vm>| vms.into_iter().map(|v| v.name).collect::<Vec<_>>();
        assert_eq!(names(m.list(&Caller::ROOT).await.unwrap()), ["a", "b", "c"]);
        let user = Caller { uid: 1000, pid: 42 };
        assert_eq!(names(m.list(&user).await.unwrap()), ["b"]);
    }
}
