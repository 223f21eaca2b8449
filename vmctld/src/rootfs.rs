//! A root file system tree being assembled from container layers: tar
//! entries applied in order, whiteouts honoured, nothing written outside
//! the tree.
//!
//! Every entry's parent directory is resolved inside the tree, component
//! by component (as `openat2(RESOLVE_IN_ROOT)` would), so a symbolic link
//! in the image (`/lib -> usr/lib`, or an absolute `/etc/alternatives/x`)
//! resolves as it would inside the guest, never on the host; the entry
//! itself is created without following a link at its own name. Paths with
//! `..` are refused outright.
//!
//! vmctld has no `CAP_CHOWN` or `CAP_FOWNER` and may not make setuid files,
//! so files are written owned by vmctld with their owner's bits widened
//! enough to read them back; each entry's real owner, group and mode are
//! kept in [`Tree::fixups`] and written into the finished ext4 image
//! (`debugfs set_inode_field`) by the caller.

use std::{
    collections::{BTreeMap, VecDeque},
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

/// The name prefix of a whiteout entry (OCI image spec, "Whiteouts").
const WHITEOUT: &str = ".wh.";
/// The entry marking its directory opaque.
const OPAQUE: &str = ".wh..wh..opq";

/// What one entry's owner, group and mode should be in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The owner's uid.
    pub uid: u64,
    /// The group's gid.
    pub gid: u64,
    /// Permission bits, setuid/setgid/sticky included (no file type).
    pub mode: u32,
}

/// A tree under construction.
pub struct Tree {
    root: PathBuf,
    owners: BTreeMap<PathBuf, Owner>,
    skipped: usize,
}

/// Why an entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// A path that is absolute after normalisation or climbs with `..`.
    #[error("entry {0:?}: paths with \"..\" are refused (they could leave the image's root)")]
    Escapes(String),
    /// A hard link whose target is missing or a directory.
    #[error("entry {path:?}: hard link to {target:?}, which is not a file in the image")]
    BadLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A file system error while writing the entry.
    #[error("entry {path:?}: {error}")]
    Io {
        /// The entry.
        path: String,
        /// What failed.
        error: io::Error,
    },
}

/// The archive path `raw` as a path relative to the root: leading `/` and
/// `.` components dropped; `None` for the root itself; `..` refused.
pub fn relative(raw: &Path) -> Result<Option<PathBuf>, EntryError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(EntryError::Escapes(raw.display().to_string()))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// What a whiteout entry hides, if `name` is one.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// `.wh..wh..opq`: everything the lower layers had in this directory.
    Opaque,
    /// `.wh.NAME`: NAME from the lower layers.
    Hide(&'a OsStr),
}

/// `Some` when the file name `name` is a whiteout.
pub fn whiteout(name: &OsStr) -> Option<Whiteout<'_>> {
    let s = name.to_str()?;
    if s == OPAQUE {
        Some(Whiteout::Opaque)
    } else {
        s.strip_prefix(WHITEOUT)
            .filter(|rest| !rest.is_empty() && *rest != "." && *rest != "..")
            .map(|rest| Whiteout::Hide(OsStr::new(rest)))
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> EntryError + '_ {
    move |error| EntryError::Io {
        path: path.display().to_string(),
        error,
    }
}

impl Tree {
    /// A tree in the existing empty directory `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        if !fs::symlink_metadata(root)?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Self {
            root: root.to_path_buf(),
            owners: BTreeMap::new(),
            skipped: 0,
        })
    }

    /// Device nodes and FIFOs left out (the guest's `/dev` is a devtmpfs).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The real host path of directory `rel` (relative to the root),
    /// resolved inside the root as the guest's kernel would: a link's
    /// target is followed inside the tree (an absolute one from the root,
    /// `..` stopping at the root). `create` makes missing directories (also
    /// where a dangling link points).
    ///
    /// Component by component with `lstat`, not `openat2(RESOLVE_IN_ROOT)`:
    /// vmctld's `RestrictSUIDSGID=yes` filter refuses openat2 (ENOSYS). No
    /// race: only this import writes its private tree.
    fn dir(&self, rel: &Path, create: bool) -> io::Result<PathBuf> {
        let mut todo: VecDeque<OsString> = components(rel).collect();
        let mut at = PathBuf::new();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                at.pop();
                continue;
            }
            let host = self.root.join(&at).join(&c);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => at.push(&c),
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = fs::read_link(&host)?;
                    if target.is_absolute() {
                        at = PathBuf::new();
                    }
                    for t in components(&target).rev() {
                        todo.push_front(t);
                    }
                }
                Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&host)?;
                    at.push(&c);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.root.join(at))
    }

    /// The host path entry `rel` lands on: its parent resolved inside the
    /// root (made if missing), its own name not followed.
    fn place(&self, rel: &Path, create_parent: bool) -> io::Result<PathBuf> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")), create_parent)?;
        Ok(parent.join(rel.file_name().unwrap_or_default()))
    }

    /// Applies whiteout `rel` (`DIR/.wh.NAME` or `DIR/.wh..wh..opq`) to
    /// what the lower layers left. Missing targets are fine.
    pub fn apply_whiteout(&mut self, rel: &Path) -> Result<(), EntryError> {
        let Some(kind) = rel.file_name().and_then(whiteout) else {
            return Ok(());
        };
        let dir_rel = rel.parent().unwrap_or(Path::new(""));
        let dir = match self.dir(dir_rel, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(rel)(e)),
        };
        match kind {
            Whiteout::Hide(name) => remove_any(&dir.join(name)).map_err(io_at(rel)),
            Whiteout::Opaque => {
                for entry in fs::read_dir(&dir).map_err(io_at(rel))? {
                    let entry = entry.map_err(io_at(rel))?;
                    remove_any(&entry.path()).map_err(io_at(rel))?;
                }
                Ok(())
            }
        }
    }

    /// Writes one non-whiteout tar entry.
    pub fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
        let raw = entry
            .path()
            .map_err(|error| EntryError::Io {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                error,
            })?
            .into_owned();
        let header = entry.header();
        let owner = Owner {
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mode: header.mode().unwrap_or(0o644) & 0o7777,
        };
        let kind = header.entry_type();
        let Some(rel) = relative(&raw)? else {
            // The root directory itself: only its owner and mode.
            if kind.is_dir() {
                self.owners.insert(PathBuf::new(), owner);
            }
            return Ok(());
        };
        use tar::EntryType as T;
        match kind {
            T::Directory => self.mkdir(&rel, owner),
            T::Regular | T::Continuous | T::GNUSparse => {
                let path = self.place(&rel, true).map_err(io_at(&rel))?;
                self.write_file(&rel, &path, entry, owner)
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(io_at(&rel))?
                    .ok_or_else(|| io_at(&rel)(io::Error::other("symlink without a target")))?
                    .into_owned();
                self.symlink(&rel, &target, owner)
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(io_at(&rel))?
                    .ok_or_else(|| io_at(&rel)(io::Error::other("hard link without a target")))?
                    .into_owned();
                self.hard_link(&rel, &target)
            }
            T::Char | T::Block | T::Fifo => {
                self.skipped += 1;
                Ok(())
            }
            // PAX and GNU long-name headers are consumed by the tar crate;
            // anything else carries no file.
            _ => Ok(()),
        }
    }

    /// Makes directory `rel` (keeping an existing one and its contents).
    pub fn mkdir(&mut self, rel: &Path, owner: Owner) -> Result<(), EntryError> {
        let path = self.place(rel, true).map_err(io_at(rel))?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove_any(&path).map_err(io_at(rel))?;
                fs::create_dir(&path).map_err(io_at(rel))?;
            }
            Err(_) => fs::create_dir(&path).map_err(io_at(rel))?,
        }
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(owner.mode & 0o777 | 0o700),
        )
        .map_err(io_at(rel))?;
        self.record(&path, owner);
        Ok(())
    }

    /// Writes regular file `rel` with the contents of `from`.
    pub fn write_file(
        &mut self,
        rel: &Path,
        path: &Path,
        from: &mut impl Read,
        owner: Owner,
    ) -> Result<(), EntryError> {
        if fs::symlink_metadata(path).is_ok() {
            remove_any(path).map_err(io_at(rel))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_at(rel))?;
        io::copy(from, &mut file).map_err(io_at(rel))?;
        file.set_permissions(fs::Permissions::from_mode(owner.mode & 0o777 | 0o600))
            .map_err(io_at(rel))?;
        self.record(path, owner);
        Ok(())
    }

    /// Writes regular file `rel` (parents made as needed).
    pub fn add_file(
        &mut self,
        rel: &Path,
        from: &mut impl Read,
        owner: Owner,
    ) -> Result<(), EntryError> {
        let path = self.place(rel, true).map_err(io_at(rel))?;
        self.write_file(rel, &path, from, owner)
    }

    /// Makes symbolic link `rel` pointing at `target`, verbatim (it is
    /// resolved in the guest, never here).
    pub fn symlink(&mut self, rel: &Path, target: &Path, owner: Owner) -> Result<(), EntryError> {
        let path = self.place(rel, true).map_err(io_at(rel))?;
        if fs::symlink_metadata(&path).is_ok() {
            remove_any(&path).map_err(io_at(rel))?;
        }
        symlink(target, &path).map_err(io_at(rel))?;
        self.record(&path, owner);
        Ok(())
    }

    /// Makes `rel` a hard link to the file `target` (an archive path).
    fn hard_link(&mut self, rel: &Path, target: &Path) -> Result<(), EntryError> {
        let bad = || EntryError::BadLink {
            path: rel.display().to_string(),
            target: target.display().to_string(),
        };
        let target_rel = relative(target)?.ok_or_else(bad)?;
        let source = self.place(&target_rel, false).map_err(|_| bad())?;
        match fs::symlink_metadata(&source) {
            Ok(m) if !m.is_dir() => {}
            _ => return Err(bad()),
        }
        let path = self.place(rel, true).map_err(io_at(rel))?;
        if path == source {
            return Ok(());
        }
        if fs::symlink_metadata(&path).is_ok() {
            remove_any(&path).map_err(io_at(rel))?;
        }
        fs::hard_link(&source, &path).map_err(io_at(rel))
    }

    fn record(&mut self, path: &Path, owner: Owner) {
        if let Ok(rel) = path.strip_prefix(&self.root) {
            self.owners.insert(rel.to_path_buf(), owner);
        }
    }

    /// Each entry whose owner, group or mode in the image must differ from
    /// the file written here, with what it must be: `(path in the image,
    /// is a symlink, owner)`.
    pub fn fixups(&self) -> Vec<(PathBuf, bool, Owner)> {
        let mut out = Vec::new();
        for (rel, owner) in &self.owners {
            let Ok(meta) = fs::symlink_metadata(self.root.join(rel)) else {
                // Removed by a later layer.
                continue;
            };
            let link = meta.file_type().is_symlink();
            let same = meta.uid() as u64 == owner.uid
                && meta.gid() as u64 == owner.gid
                && (link || meta.mode() & 0o7777 == owner.mode);
            if !same {
                out.push((Path::new("/").join(rel), link, *owner));
            }
        }
        out
    }
}

/// The normal and `..` components of `path` (root and `.` dropped).
fn components(path: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

/// Removes `path` whatever it is, without following it.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for reading without following a link at its name.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive from `(path, kind, data or link target)`.
    pub(crate) fn archive(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                }
                'l' | 'h' => {
                    h.set_entry_type(if *kind == 'l' {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_size(0);
                    h.set_link_name(data).unwrap();
                }
                _ => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                }
            }
            // Raw names: set_path refuses "..", which these tests need.
            let name = h.as_old_mut().name.as_mut();
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            let content = if matches!(kind, 'l' | 'h') { "" } else { data };
            b.append(&h, content.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Applies one layer as the importer does: whiteouts, then entries.
    fn apply_all(tree: &mut Tree, data: &[u8]) -> Result<(), EntryError> {
        for whiteouts in [true, false] {
            let mut a = tar::Archive::new(data);
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let rel = relative(&e.path().unwrap())?;
                let is_whiteout = rel
                    .as_deref()
                    .and_then(Path::file_name)
                    .and_then(whiteout)
                    .is_some();
                match (whiteouts, is_whiteout, rel) {
                    (true, true, Some(rel)) => tree.apply_whiteout(&rel)?,
                    (false, false, _) => tree.apply(&mut e)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    #[test]
    fn paths_are_normalised_and_dotdot_refused() {
        assert_eq!(
            relative(Path::new("./etc/os-release")).unwrap(),
            Some(PathBuf::from("etc/os-release"))
        );
        assert_eq!(
            relative(Path::new("/usr/bin/")).unwrap(),
            Some(PathBuf::from("usr/bin"))
        );
        assert_eq!(relative(Path::new("./")).unwrap(), None);
        for bad in ["../x", "a/../../x", "/a/.."] {
            let e = relative(Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("\"..\" are refused"), "{bad}: {e}");
        }
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout(OsStr::new(".wh..wh..opq")), Some(Whiteout::Opaque));
        assert_eq!(
            whiteout(OsStr::new(".wh.secret")),
            Some(Whiteout::Hide(OsStr::new("secret")))
        );
        for not in [".wh.", ".wh..", "wh.x", "x.wh.y", "secret"] {
            assert_eq!(whiteout(OsStr::new(not)), None, "{not}");
        }
    }

    #[test]
    fn symlinks_in_the_image_resolve_inside_the_root_never_on_the_host() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(dir.path()).unwrap();
        let escape = outside.path().display().to_string();
        let data = archive(&[
            ("usr/", 'd', ""),
            ("usr/lib/", 'd', ""),
            // Merged /usr: /lib -> usr/lib, written through.
            ("lib", 'l', "usr/lib"),
            ("lib/libx.so", 'f', "x"),
            // An absolute link pointing at a host directory: inside the
            // image it means <root>/<that path>.
            ("evil", 'l', &escape),
            ("evil/planted", 'f', "gotcha"),
            // A relative link climbing out: stays at the root.
            ("up", 'l', "../../../../.."),
            ("up/planted2", 'f', "gotcha"),
            ("usr/lib/hard", 'h', "usr/lib/libx.so"),
        ]);
        apply_all(&mut tree, &data).unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        let root = dir.path();
        assert_eq!(fs::read(root.join("usr/lib/libx.so")).unwrap(), b"x");
        assert!(fs::symlink_metadata(root.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read(root.join(escape.trim_start_matches('/')).join("planted")).unwrap(),
            b"gotcha"
        );
        assert_eq!(fs::read(root.join("planted2")).unwrap(), b"gotcha");
        assert_eq!(
            fs::metadata(root.join("usr/lib/hard")).unwrap().ino(),
            fs::metadata(root.join("usr/lib/libx.so")).unwrap().ino()
        );
    }

    #[test]
    fn dotdot_entries_and_links_to_nothing_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(dir.path()).unwrap();
        let e = apply_all(&mut tree, &archive(&[("a/../../etc/x", 'f', "x")])).unwrap_err();
        assert!(matches!(e, EntryError::Escapes(_)), "{e}");
        let e = apply_all(&mut tree, &archive(&[("h", 'h', "../etc/shadow")])).unwrap_err();
        assert!(matches!(e, EntryError::Escapes(_)), "{e}");
        let e = apply_all(&mut tree, &archive(&[("h", 'h', "missing")])).unwrap_err();
        assert!(e.to_string().contains("hard link to \"missing\""), "{e}");
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut tree = Tree::new(root).unwrap();
        apply_all(
            &mut tree,
            &archive(&[
                ("etc/", 'd', ""),
                ("etc/secret", 'f', "s"),
                ("etc/keep", 'f', "k"),
                ("opt/", 'd', ""),
                ("opt/old/", 'd', ""),
                ("opt/old/file", 'f', "o"),
                ("opt/lower", 'f', "l"),
            ]),
        )
        .unwrap();
        apply_all(
            &mut tree,
            &archive(&[
                ("etc/.wh.secret", 'f', ""),
                // The same layer's own entries stay, whatever the order.
                ("opt/new", 'f', "n"),
                ("opt/.wh..wh..opq", 'f', ""),
                ("gone/.wh.nothing", 'f', ""),
            ]),
        )
        .unwrap();
        assert!(!root.join("etc/secret").exists());
        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"k");
        let mut opt: Vec<_> = fs::read_dir(root.join("opt"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        opt.sort();
        assert_eq!(opt, ["new"]);
        assert!(!root.join("etc/.wh.secret").exists());
    }

    #[test]
    fn owners_and_modes_vmctld_cannot_set_are_fixups() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(dir.path()).unwrap();
        let me = (
            fs::metadata(dir.path()).unwrap().uid() as u64,
            fs::metadata(dir.path()).unwrap().gid() as u64,
        );
        let owner = |mode| Owner {
            uid: me.0,
            gid: me.1,
            mode,
        };
        tree.add_file(Path::new("bin/su"), &mut &b"x"[..], owner(0o4755))
            .unwrap();
        tree.add_file(Path::new("etc/shadow"), &mut &b"x"[..], owner(0o000))
            .unwrap();
        tree.add_file(Path::new("etc/plain"), &mut &b"x"[..], owner(0o644))
            .unwrap();
        let other = Owner {
            uid: me.0 + 1000,
            gid: me.1 + 1000,
            mode: 0o644,
        };
        tree.add_file(Path::new("home/u/f"), &mut &b"x"[..], other)
            .unwrap();
        // Readable by vmctld (it has no CAP_DAC_OVERRIDE) for mkfs.ext4 -d.
        let shadow = fs::metadata(dir.path().join("etc/shadow")).unwrap();
        assert_eq!(shadow.mode() & 0o777, 0o600);
        let fixups: Vec<_> = tree
            .fixups()
            .into_iter()
            .map(|(p, _, o)| (p.display().to_string(), o.mode))
            .collect();
        assert_eq!(
            fixups,
            [
                ("/bin/su".to_string(), 0o4755),
                ("/etc/shadow".to_string(), 0o000),
                ("/home/u/f".to_string(), 0o644),
            ]
        );
    }
}
