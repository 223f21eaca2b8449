//! The VM registry: the stored definition ([`VmSpec`]) of every VM, one
//! JSON file per VM at `<state directory>/vms/<name>.json` (the layout of
//! [`vmctl_api::spec::Layout`]; vmctld is its only writer).
//!
//! Files are small and written rarely, so the registry reads the directory
//! on each query; there is no cache that could go stale.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use vmctl_api::{names::DEFAULT_STATE_DIRECTORY, spec::VmSpec, validate_vm_name};

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

    /// The directory holding the VM specs.
    pub fn vms_dir(&self) -> &Path {
        &self.vms_dir
    }

    /// All VM specs, sorted by name. A missing directory is an empty
    /// registry. Unreadable or invalid files are skipped with a warning, so
    /// one bad file cannot hide every other VM.
    pub fn list(&self) -> Result<Vec<VmSpec>, ManagerError> {
        let cannot_read = |e: io::Error| {
            ManagerError::internal(format!("cannot read {}: {e}", self.vms_dir.display()))
        };
        let entries = match fs::read_dir(&self.vms_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(cannot_read(e)),
        };
        let mut specs = Vec::new();
        for entry in entries {
            let path = entry.map_err(cannot_read)?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match read_spec(&path) {
                Ok(spec) => specs.push(spec),
                Err(e) => tracing::warn!("ignoring VM spec {}: {e}", path.display()),
            }
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }
}

impl Registry {
    /// The file of VM `name` (which must be a valid name).
    pub fn spec_file(&self, name: &str) -> PathBuf {
        self.vms_dir.join(format!("{name}.json"))
    }

    /// The spec of VM `name`, `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<VmSpec>, ManagerError> {
        let path = self.spec_file(name);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ManagerError::internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
            Ok(_) => {}
        }
        read_spec(&path)
            .map(Some)
            .map_err(|e| ManagerError::internal(format!("bad VM spec {}: {e}", path.display())))
    }

    /// Writes `spec` atomically (a 0600 temporary file renamed over the
    /// spec), creating the directory (0700) when needed. Returns the path.
    pub fn write(&self, spec: &VmSpec) -> Result<PathBuf, ManagerError> {
        let path = self.spec_file(&spec.name);
        let tmp = self.vms_dir.join(format!(".{}.json.tmp", spec.name));
        let result = (|| -> io::Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.vms_dir)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut json = serde_json::to_vec_pretty(spec)?;
            json.push(b'\n');
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        result.map(|()| path.clone()).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ManagerError::internal(format!("cannot write {}: {e}", path.display()))
        })
    }
}

/// Reads one spec and checks that it is consistent with its file name.
fn read_spec(path: &Path) -> Result<VmSpec, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let spec: VmSpec = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    validate_vm_name(&spec.name).map_err(|e| e.to_string())?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != spec.name {
        return Err(format!("holds VM {:?}, expected {stem:?}", spec.name));
    }
    Ok(spec)
}

/// Test helpers shared by the unit tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A spec for tests.
    pub fn spec(name: &str, owner_uid: u32) -> VmSpec {
        VmSpec {
            name: name.into(),
            id: "0123456789abcdef0123456789abcdef".into(),
            owner_uid,
            vcpus: 2,
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
            image: "default".into(),
            vmm: Default::default(),
            cid: 3,
            network: None,
            ssh_authorized_keys: Vec::new(),
            guest_user: None,
        }
    }

    /// Writes `spec` as `state_dir/vms/<file>`.
    pub fn write(state_dir: &Path, file: &str, text: &str) {
        fs::create_dir_all(state_dir.join("vms")).unwrap();
        fs::write(state_dir.join("vms").join(file), text).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{spec, write};
    use super::*;
    use vmctl_api::spec::Layout;

    #[test]
    fn uses_the_shared_layout() {
        let dir = Path::new("/x");
        let layout = Layout::under(dir, "/run/x");
        assert_eq!(
            Registry::new(dir).vms_dir(),
            layout.spec_file("a").parent().unwrap()
        );
    }

    #[test]
    fn missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Registry::new(dir.path()).list().unwrap(), vec![]);
    }

    #[test]
    fn lists_sorted_and_skips_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let json = |name: &str| serde_json::to_string(&spec(name, 0)).unwrap();
        write(dir.path(), "web.json", &json("web"));
        write(dir.path(), "blog.json", &json("blog"));
        write(dir.path(), "bad.json", "{not json");
        write(dir.path(), "other.json", &json("web"));
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
