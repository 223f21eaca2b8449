//! The VM registry: the definition ([`VmSpec`]) of every VM. The rows of
//! the [`Store`] are the truth; each complete VM also has its spec as a
//! JSON file at `<state directory>/vms/<name>.json` (the layout of
//! [`vmctl_api::spec::Layout`]) because the launcher reads it. vmctld is
//! the only writer of both; the file is written from the row.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use vmctl_api::{names::DEFAULT_STATE_DIRECTORY, spec::VmSpec, validate_vm_name};

use crate::{
    store::{Store, VmRow, VmState, DB_FILE},
    ManagerError,
};

/// The VM registry stored under a state directory.
#[derive(Debug, Clone)]
pub struct Registry {
    vms_dir: PathBuf,
    store: Arc<Store>,
    /// VMs with a create or remove under way in this process, which
    /// reconciliation must leave alone (counted: two calls may race on
    /// one name, and the loser's end must not unmark the winner).
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// The spec directory and store as the last import found them: while
    /// both stay so, no spec file can lack a row it did not lack then.
    scanned: Arc<Mutex<Option<SpecDirState>>>,
}

/// What a scan of the spec files depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpecDirState {
    /// The directory's change time (seconds, nanoseconds): it moves when a
    /// file is added, removed or renamed there, and cannot be set back.
    ctime: (i64, i64),
    /// The store's version: a row removed by hand would make its file
    /// importable again.
    store: crate::store::Version,
}

/// How old the directory's change time must be before a scan is trusted
/// to stand for it: file-system timestamps are coarse (a clock tick), so
/// a file added in the same tick as the scan may leave the time as it was.
const SETTLED: Duration = Duration::from_secs(2);

/// Marks a VM's operation as under way until dropped.
#[derive(Debug)]
pub struct InFlight {
    name: String,
    set: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut set = lock(&self.set);
        if let Some(count) = set.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                set.remove(&self.name);
            }
        }
    }
}

/// Whether a change time `(seconds, nanoseconds)` lies at least
/// [`SETTLED`] in the past.
fn settled((secs, nanos): (i64, i64)) -> bool {
    let Ok(secs) = u64::try_from(secs) else {
        return false;
    };
    let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
    SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age >= SETTLED)
}

fn lock(set: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Opens the registry in `state_dir` (created if needed): its store
    /// `vmctl.db`, migrated to the current schema, then imports every spec
    /// file that has no row (the VMs of an install from before the store;
    /// vmctld's own operations never leave a spec file without a row).
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self, ManagerError> {
        let state_dir = state_dir.as_ref();
        let registry = Self {
            vms_dir: state_dir.join("vms"),
            store: Arc::new(Store::open(&state_dir.join(DB_FILE))?),
            in_flight: Arc::default(),
            scanned: Arc::default(),
        };
        // Not fatal: the store works without the files, and List says
        // what is wrong with them.
        if let Err(e) = registry.import_spec_files() {
            tracing::warn!("store: cannot import the spec files: {e}");
        }
        Ok(registry)
    }

    /// Stores the spec files that have no row as complete VMs; one that
    /// collides with a stored VM is left for `vmctl doctor` to report.
    /// Also done at each `list`, so a spec file put in place by hand (as
    /// before the store) is taken in; vmctld itself never leaves a spec
    /// file without a row (the row comes first and goes last).
    fn import_spec_files(&self) -> Result<(), ManagerError> {
        // Reading 1,000 directory entries and names took a quarter of a
        // `List` of 1,000 VMs; nothing can have changed since the last
        // scan while directory and store are as they were.
        let before = self.spec_dir_state()?;
        let mut scanned = self.scanned.lock().unwrap_or_else(|p| p.into_inner());
        if before.is_some() && *scanned == before {
            return Ok(());
        }
        let known: HashSet<String> = self.store.names()?.into_iter().collect();
        for name in self.spec_file_names()? {
            if !known.contains(&name) {
                self.import_spec_file(&name)?;
            }
        }
        // A change made during the scan moved the state past `before`, so
        // the next call scans again.
        *scanned = before.filter(|state| settled(state.ctime));
        Ok(())
    }

    /// The spec directory's and the store's state now; `None` without the
    /// directory.
    fn spec_dir_state(&self) -> Result<Option<SpecDirState>, ManagerError> {
        let store = self.store.version()?;
        Ok(fs::metadata(&self.vms_dir).ok().map(|meta| SpecDirState {
            ctime: (meta.ctime(), meta.ctime_nsec()),
            store,
        }))
    }

    /// Imports VM `name`'s spec file if it has one and no row; returns the
    /// row.
    fn import_spec_file(&self, name: &str) -> Result<Option<VmRow>, ManagerError> {
        if validate_vm_name(name).is_err() {
            return Ok(None);
        }
        let spec = match self.spec_file_contents(name) {
            Ok(Some(spec)) => spec,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!("ignoring VM spec: {e}");
                return Ok(None);
            }
        };
        match self.store.adopt(&spec) {
            Ok(()) => tracing::info!("store: imported VM {name} from its spec file"),
            Err(e) => tracing::warn!("store: cannot import VM {name}: {e}"),
        }
        self.store.vm(name)
    }

    /// The names of the spec files (`NAME.json`), unsorted.
    fn spec_file_names(&self) -> Result<Vec<String>, ManagerError> {
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
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".json").map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect())
    }

    /// Marks VM `name`'s create or remove as under way (until the guard
    /// is dropped).
    pub fn begin(&self, name: &str) -> InFlight {
        *lock(&self.in_flight).entry(name.to_string()).or_default() += 1;
        InFlight {
            name: name.to_string(),
            set: self.in_flight.clone(),
        }
    }

    /// Whether an operation on VM `name` is under way.
    pub fn is_in_flight(&self, name: &str) -> bool {
        lock(&self.in_flight).contains_key(name)
    }

    /// [`Registry::open`] for tests and tools that cannot go on without it.
    ///
    /// # Panics
    /// When the store cannot be opened.
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self::open(state_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The store holding the VMs' rows.
    pub fn store(&self) -> &Store {
        &self.store
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

    /// The VMs that exist, sorted by name: those complete or being
    /// removed (a VM being created does not exist until it is complete).
    pub fn list(&self) -> Result<Vec<VmSpec>, ManagerError> {
        self.import_spec_files()?;
        Ok(self
            .store
            .vms()?
            .into_iter()
            .filter(|row| row.state != VmState::Creating)
            .map(|row| row.spec)
            .collect())
    }

    /// What `List` shows of every VM (not those being created), sorted by
    /// name; spec files without a row are imported first, as in
    /// [`Registry::list`].
    pub fn summaries(&self) -> Result<Arc<[crate::store::VmSummary]>, ManagerError> {
        self.import_spec_files()?;
        self.store.summaries()
    }

    /// The specs in the spec files, sorted by name (what the launcher
    /// would read). A missing directory has none. Unreadable or invalid
    /// files are skipped with a warning, so one bad file cannot hide every
    /// other VM.
    pub fn spec_files(&self) -> Result<Vec<VmSpec>, ManagerError> {
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

    /// The spec of VM `name`, `None` when there is none (or it is still
    /// being created).
    pub fn get(&self, name: &str) -> Result<Option<VmSpec>, ManagerError> {
        let row = match self.store.vm(name)? {
            None => self.import_spec_file(name)?,
            row => row,
        };
        Ok(row
            .filter(|row| row.state != VmState::Creating)
            .map(|row| row.spec))
    }

    /// The spec in VM `name`'s spec file, `None` when there is none.
    pub fn spec_file_contents(&self, name: &str) -> Result<Option<VmSpec>, ManagerError> {
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

    /// A spec for tests; its ID and CID are derived from the name, so
    /// specs of different names can be stored together.
    pub fn spec(name: &str, owner_uid: u32) -> VmSpec {
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        // From JSON, so that fields with defaults need no mention here.
        serde_json::from_value(serde_json::json!({
            "name": name,
            "id": format!("{hash:016x}{hash:016x}"),
            "owner_uid": owner_uid,
            "vcpus": 2,
            "memory_bytes": 1u64 << 30,
            "disk_bytes": 10u64 << 30,
            "image": "default",
            "cid": 3 + (hash % 1_000_000) as u32,
        }))
        .expect("a valid spec")
    }

    /// Stores `spec` as a complete VM and writes its spec file.
    pub fn add(registry: &Registry, spec: &VmSpec) {
        registry.store().adopt(spec).unwrap();
        registry.write(spec).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path(), "/run/x");
        assert_eq!(
            Registry::new(dir.path()).vms_dir(),
            layout.spec_file("a").parent().unwrap()
        );
    }

    #[test]
    fn a_settled_directory_is_scanned_again_after_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = |registry: &Registry| -> Vec<String> {
            registry
                .summaries()
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        let file = |name: &str| serde_json::to_string(&spec(name, 0)).unwrap();
        write(dir.path(), "a.json", &file("a"));
        let registry = Registry::new(dir.path());
        // Past the coarse timestamps: the next scan is remembered.
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        assert_eq!(names(&registry), ["a"]);
        assert!(registry.scanned.lock().unwrap().is_some());
        // A file put in place by hand: the directory's change time moved.
        write(dir.path(), "b.json", &file("b"));
        assert_eq!(names(&registry), ["a", "b"]);
        // A row removed behind vmctld's back while its file stays: the
        // store's version moved, so the file is imported again.
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        assert_eq!(names(&registry), ["a", "b"]);
        registry.store().delete("b").unwrap();
        assert_eq!(names(&registry), ["a", "b"]);
    }

    #[test]
    fn in_flight_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        let winner = registry.begin("a");
        let loser = registry.begin("a");
        drop(loser);
        assert!(registry.is_in_flight("a"), "the loser unmarked the winner");
        drop(winner);
        assert!(!registry.is_in_flight("a"));
    }

    #[test]
    fn missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        assert_eq!(registry.list().unwrap(), vec![]);
        assert_eq!(registry.spec_files().unwrap(), vec![]);
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
            .spec_files()
            .unwrap()
            .into_iter()
            .map(|vm| vm.name)
            .collect();
        assert_eq!(names, ["blog", "web"]);
    }
}
