//! The VM registry: the desired state of every VM, one JSON file per VM at
//! `<state directory>/vms/<name>.json` holding a [`Vm`] record.
//!
//! Files are small and written rarely, so the registry reads the directory
//! on each query; there is no cache that could go stale.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use vmctl_api::{names::DEFAULT_STATE_DIRECTORY, validate_vm_name, Vm};

use crate::ManagerError;

/// The VM registry stored under a state directory.
#[derive(Debug, Clone)]
pub struct Registry {
    vms_dir: PathBuf,
}

impl Registry {
    /// The registry in `state_dir` (which need not exist yet).
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self {
            vms_dir: state_dir.as_ref().join("vms"),
        }
    }

    /// The state directory systemd gives the service (`$STATE_DIRECTORY`,
    /// first entry), or `/var/lib/vmctl`.
    pub fn default_state_dir() -> PathBuf {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|dirs| {
                dirs.to_str()
                    .and_then(|s| s.split(':').next().map(PathBuf::from))
            })
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIRECTORY))
    }

    /// The directory holding the VM records.
    pub fn vms_dir(&self) -> &Path {
        &self.vms_dir
    }

    /// All VMs, sorted by name. A missing directory is an empty registry.
    /// Unreadable or invalid records are skipped with a warning, so one bad
    /// file cannot hide every other VM.
    pub fn list(&self) -> Result<Vec<Vm>, ManagerError> {
        let entries = match fs::read_dir(&self.vms_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ManagerError::internal(format!(
                    "cannot read {}: {e}",
                    self.vms_dir.display()
                )))
            }
        };
        let mut vms = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| {
                    ManagerError::internal(format!("cannot read {}: {e}", self.vms_dir.display()))
                })?
                .path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match read_record(&path) {
                Ok(vm) => vms.push(vm),
                Err(e) => tracing::warn!("ignoring VM record {}: {e}", path.display()),
            }
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }
}

/// Reads one record and checks that it is consistent with its file name.
fn read_record(path: &Path) -> Result<Vm, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let vm: Vm = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    validate_vm_name(&vm.name).map_err(|e| e.to_string())?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != vm.name {
        return Err(format!("holds VM {:?}, expected {stem:?}", vm.name));
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        fs::create_dir_all(dir.join("vms")).unwrap();
        fs::write(dir.join("vms").join(file), text).unwrap();
    }

    #[test]
    fn missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Registry::new(dir.path()).list().unwrap(), vec![]);
    }

    #[test]
    fn lists_sorted_and_skips_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |name: &str| {
            format!(
                r#"{{"name":"{name}","state":"stopped","owner_uid":0,"vcpus":1,"memory_bytes":1024,"ipv4":null}}"#
            )
        };
        write(dir.path(), "web.json", &rec("web"));
        write(dir.path(), "blog.json", &rec("blog"));
        write(dir.path(), "bad.json", "{not json");
        write(dir.path(), "other.json", &rec("web"));
        write(dir.path(), "notes.txt", "hello");
        let names: Vec<_> = Registry::new(dir.path())
            .list()
            .unwrap()
            .into_iter()
            .map(|vm| vm.name)
            .collect();
        assert_eq!(names, ["blog", "web"]);
    }
}
