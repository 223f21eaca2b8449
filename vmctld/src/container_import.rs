//! `vmctl image import NAME FILE` of a container image: a `docker export`
//! / `podman export` tarball, or an OCI image layout directory (its
//! `index.json`, the manifest, the layers applied in order with their
//! whiteouts).
//!
//! The client sends the tarball or the layout directory as one descriptor;
//! vmctld reads the layout's files relative to it, never following a link
//! (`O_NOFOLLOW` at each step) and checking each blob's SHA-256. The layers
//! are unpacked into a temporary tree ([`crate::rootfs`]), the guest agent
//! is added as `/sbin/init` (it runs as PID 1 in a guest without an init:
//! `vmctl-guest`'s `init` module) and `root.raw` is made with `mkfs.ext4
//! -d` (no loop mount), the owners and modes vmctld could not set being
//! written with `debugfs`. A container has no kernel: the image boots
//! vmctl's own guest kernel, copied from the `default` image (no initrd:
//! it has the drivers built in). Everything happens in a dot-directory
//! beside the images that is renamed into place at the end and removed on
//! any failure, like the raw import.

use std::{
    cell::Cell,
    fs::{self, File},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{FileExt, MetadataExt, PermissionsExt},
    },
    path::Path,
    process::Command,
    rc::Rc,
};

use rustix::fs::{Mode, OFlags};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    rootfs::{relative, whiteout, EntryError, Owner, Tree},
    ManagerError,
};

/// Where vmctld finds the statically linked guest agent it puts into
/// imported container images (installed by the `vmctl` package: a
/// container's C library, if it has one, is not the host's).
pub const GUEST_AGENT: &str = "/usr/lib/vmctl/guest/vmctl-guest-agent";

/// Where the agent goes in the image (as in vmctl's own image); the
/// kernel starts `/sbin/init`, a link to it.
const AGENT_IN_IMAGE: &str = "usr/libexec/vmctl-guest-agent";

/// The layer media types vmctl unpacks (gzip is recognised by its magic).
const LAYER_TYPES: [&str; 4] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What to import from.
pub enum Source {
    /// A tarball of a root file system (plain or gzip).
    Tarball(File),
    /// An OCI image layout directory.
    Layout(OwnedFd),
}

impl Source {
    /// A directory descriptor is a layout, a regular file a tarball.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ManagerError> {
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| invalid(format!("cannot read the container image: {e}")))?;
        if meta.is_dir() {
            Ok(Source::Layout(file.into()))
        } else if meta.is_file() {
            Ok(Source::Tarball(file))
        } else {
            Err(invalid(
                "the container image is neither a tarball nor an OCI layout directory".into(),
            ))
        }
    }
}

/// The inputs of an import besides the source.
pub struct Inputs<'a> {
    /// `/var/lib/vmctl/images`.
    pub images: &'a Path,
    /// The new image's name.
    pub name: &'a str,
    /// The guest agent binary to add.
    pub agent: &'a Path,
}

fn invalid(reason: String) -> ManagerError {
    ManagerError::InvalidArgument {
        what: "image".into(),
        reason,
    }
}

fn internal(path: &Path) -> impl FnOnce(io::Error) -> ManagerError + '_ {
    move |e| ManagerError::internal(format!("{}: {e}", path.display()))
}

/// Imports `source` as image `inputs.name`: whole or not at all.
pub fn import(inputs: &Inputs<'_>, source: Source) -> Result<(), ManagerError> {
    let kernel_dir = inputs.images.join("default");
    if !kernel_dir.join("vmlinuz").is_file() {
        return Err(ManagerError::internal(format!(
            "an imported container boots vmctl's guest kernel from the image \"default\", \
             and {} is missing: reinstall the vmctl package",
            kernel_dir.join("vmlinuz").display()
        )));
    }
    let agent = File::open(inputs.agent).map_err(|e| {
        ManagerError::internal(format!(
            "cannot open the guest agent {} to add to the image: {e}",
            inputs.agent.display()
        ))
    })?;
    let tmp = inputs.images.join(format!(".{}.import", inputs.name));
    let _ = fs::remove_dir_all(&tmp);
    let result = build(inputs, source, agent, &kernel_dir, &tmp).and_then(|()| {
        let target = inputs.images.join(inputs.name);
        fs::rename(&tmp, &target).map_err(|e| {
            if target.exists() {
                invalid(format!("image {:?} was made meanwhile", inputs.name))
            } else {
                internal(&target)(e)
            }
        })
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn build(
    inputs: &Inputs<'_>,
    source: Source,
    mut agent: File,
    kernel_dir: &Path,
    tmp: &Path,
) -> Result<(), ManagerError> {
    let name = inputs.name;
    fs::create_dir(tmp).map_err(internal(tmp))?;
    let tree_dir = tmp.join("tree");
    fs::create_dir(&tree_dir).map_err(internal(&tree_dir))?;
    let mut tree = Tree::new(&tree_dir).map_err(internal(&tree_dir))?;
    match source {
        Source::Tarball(file) => {
            tracing::info!("image import {name}: unpacking the tarball");
            apply_layer(&mut tree, &file, "the tarball")?;
        }
        Source::Layout(dir) => {
            let layers = layout_layers(&dir)?;
            let count = layers.len();
            for (i, layer) in layers.iter().enumerate() {
                let what = format!("layer {} of {count} ({})", i + 1, layer.digest);
                let file = open_blob(&dir, &layer.digest)?;
                check_digest(&file, &layer.digest, &what)?;
                apply_layer(&mut tree, &file, &what)?;
                tracing::info!("image import {name}: {what} applied");
            }
        }
    }
    if tree.skipped() > 0 {
        tracing::info!(
            "image import {name}: {} device nodes and FIFOs left out (the guest's /dev is a devtmpfs)",
            tree.skipped()
        );
    }
    add_init(&mut tree, &mut agent)?;
    make_root(name, &tree, &tree_dir, &tmp.join("root.raw"))?;
    fs::remove_dir_all(&tree_dir).map_err(internal(&tree_dir))?;
    for file in ["vmlinuz", "vmlinux"] {
        let from = kernel_dir.join(file);
        if from.is_file() {
            fs::copy(&from, tmp.join(file)).map_err(internal(&from))?;
        }
    }
    for entry in fs::read_dir(tmp).map_err(internal(tmp))? {
        let path = entry.map_err(internal(tmp))?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(internal(&path))?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(internal(&path))?;
    }
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).map_err(internal(tmp))?;
    File::open(tmp)
        .and_then(|d| d.sync_all())
        .map_err(internal(tmp))?;
    tracing::info!("image import {name}: complete");
    Ok(())
}

/// The agent as `/sbin/init`, and the mount points its init mode needs.
fn add_init(tree: &mut Tree, agent: &mut File) -> Result<(), ManagerError> {
    let root = |mode| Owner {
        uid: 0,
        gid: 0,
        mode,
    };
    let err = |e: EntryError| ManagerError::internal(format!("adding the guest agent: {e}"));
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
    ] {
        tree.mkdir(Path::new(dir), root(mode)).map_err(err)?;
    }
    tree.add_file(Path::new(AGENT_IN_IMAGE), agent, root(0o755))
        .map_err(err)?;
    tree.symlink(
        Path::new("sbin/init"),
        &Path::new("/").join(AGENT_IN_IMAGE),
        root(0o777),
    )
    .map_err(err)
}

/// A reader over a file from its start by `pread` (a layer is read
/// twice), counting what it read for error messages.
struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The tar stream of `file`, gunzipped if it starts with gzip's magic.
fn tar_stream<'a>(file: &'a File, read: Rc<Cell<u64>>) -> Box<dyn Read + 'a> {
    let mut magic = [0u8; 2];
    let gzip = file.read_exact_at(&mut magic, 0).is_ok() && magic == [0x1f, 0x8b];
    let raw = At { file, pos: 0 };
    if gzip {
        Box::new(Counted {
            inner: flate2::read::MultiGzDecoder::new(raw),
            read,
        })
    } else {
        Box::new(Counted { inner: raw, read })
    }
}

/// Applies one layer: its whiteouts first (they hide only what the lower
/// layers had), then its entries.
fn apply_layer(tree: &mut Tree, file: &File, what: &str) -> Result<(), ManagerError> {
    for pass in [Pass::Whiteouts, Pass::Entries] {
        let read = Rc::new(Cell::new(0));
        let mut archive = tar::Archive::new(tar_stream(file, read.clone()));
        let mut last: Option<String> = None;
        let corrupt = |e: &dyn std::fmt::Display, last: &Option<String>| {
            invalid(format!(
                "{what} is not a valid tar archive: at byte {} of the tar stream ({}): {e}",
                read.get(),
                match last {
                    Some(l) => format!("after entry {l:?}"),
                    None => "before the first entry".into(),
                }
            ))
        };
        let entries = archive.entries().map_err(|e| corrupt(&e, &last))?;
        let mut any = false;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(&e, &last))?;
            any = true;
            let bad = |e: EntryError| invalid(format!("{what}: {e}"));
            let path = entry.path().map_err(|e| corrupt(&e, &last))?.into_owned();
            let rel = relative(&path).map_err(bad)?;
            let is_whiteout = rel
                .as_deref()
                .and_then(Path::file_name)
                .and_then(whiteout)
                .is_some();
            match (pass, is_whiteout, rel) {
                (Pass::Whiteouts, true, Some(rel)) => tree.apply_whiteout(&rel).map_err(bad)?,
                (Pass::Entries, false, _) => tree.apply(&mut entry).map_err(bad)?,
                _ => {}
            }
            last = Some(path.display().to_string());
        }
        if !any {
            return Err(invalid(format!(
                "{what} holds no files (an empty or truncated tar archive)"
            )));
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Pass {
    Whiteouts,
    Entries,
}

/// `mkfs.ext4 -d` of the tree into `out`, then the owners and modes.
fn make_root(name: &str, tree: &Tree, dir: &Path, out: &Path) -> Result<(), ManagerError> {
    let (bytes, inodes) = usage(dir).map_err(internal(dir))?;
    // Room to work in: half again, at least 256 MiB, in whole MiB.
    let size = (bytes + (bytes / 2).max(256 << 20)).div_ceil(1 << 20) << 20;
    let inodes = inodes + inodes / 2 + 8192;
    tracing::info!(
        "image import {name}: making root.raw ({} MiB, {} files) with mkfs.ext4",
        size >> 20,
        inodes
    );
    File::create(out)
        .and_then(|f| f.set_len(size))
        .map_err(internal(out))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-N", &inodes.to_string(), "-d"])
        .arg(dir)
        .arg(out))?;
    let mut script = String::new();
    let mut unquotable = 0;
    for (path, link, owner) in tree.fixups() {
        let Some(p) = path.to_str().filter(|p| !p.contains(['"', '\n', '\\'])) else {
            unquotable += 1;
            continue;
        };
        script.push_str(&format!("sif \"{p}\" uid {}\n", owner.uid));
        script.push_str(&format!("sif \"{p}\" gid {}\n", owner.gid));
        if !link {
            let kind = fs::symlink_metadata(dir.join(p.trim_start_matches('/')))
                .map(|m| m.mode() & 0o170000)
                .unwrap_or(0o100000);
            script.push_str(&format!("sif \"{p}\" mode 0{:o}\n", kind | owner.mode));
        }
    }
    if unquotable > 0 {
        tracing::warn!(
            "image import {name}: {unquotable} files with '\"', '\\' or a newline in their names keep owner root and their mode without setuid bits"
        );
    }
    if !script.is_empty() {
        let script_path = out.with_extension("debugfs");
        File::create(&script_path)
            .and_then(|mut f| f.write_all(script.as_bytes()))
            .map_err(internal(&script_path))?;
        let output = run(Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(out))?;
        let _ = fs::remove_file(&script_path);
        // debugfs exits 0 whatever its commands did: its errors are the
        // lines that are not its banner or the echoed commands.
        let errors: Vec<_> = output
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .collect();
        if !errors.is_empty() {
            return Err(ManagerError::internal(format!(
                "setting owners and modes in {}: {}",
                out.display(),
                errors.join("; ")
            )));
        }
    }
    Ok(())
}

/// Bytes allocated and entries under `dir`, links not followed.
fn usage(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0, 1);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        entries += 1;
        bytes += meta.blocks() * 512 + 4096;
        if meta.is_dir() {
            let (b, e) = usage(&entry.path())?;
            bytes += b;
            entries += e;
        }
    }
    Ok((bytes, entries))
}

/// Runs `cmd`; its stderr on success, the failure as an error.
fn run(cmd: &mut Command) -> Result<String, ManagerError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| ManagerError::internal(format!("cannot run {program}: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(ManagerError::internal(format!(
            "{program} failed ({}): {}",
            out.status,
            stderr.trim()
        )))
    }
}

// --- OCI image layout -------------------------------------------------

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

/// Opens `name` under `dir` without following a link.
fn open_at(dir: impl AsFd, name: &str, directory: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if directory {
        flags |= OFlags::DIRECTORY;
    }
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

fn read_json<T: for<'de> Deserialize<'de>>(file: File, what: &str) -> Result<T, ManagerError> {
    let mut text = Vec::new();
    file.take(4 << 20)
        .read_to_end(&mut text)
        .map_err(|e| invalid(format!("cannot read {what}: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| invalid(format!("{what} is not valid: {e}")))
}

/// The blob `digest` (`sha256:HEX`) of the layout.
fn open_blob(dir: &OwnedFd, digest: &str) -> Result<File, ManagerError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            invalid(format!(
                "digest {digest:?} is not sha256:<64 hex digits> (the only algorithm vmctl reads)"
            ))
        })?;
    let open = || -> io::Result<File> {
        let blobs = open_at(dir, "blobs", true)?;
        let sha = open_at(&blobs, "sha256", true)?;
        Ok(File::from(open_at(&sha, hex, false)?))
    };
    let file = open().map_err(|e| {
        invalid(format!(
            "the layout has no blob blobs/sha256/{hex} (for {digest}): {e}"
        ))
    })?;
    if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(invalid(format!("blobs/sha256/{hex} is not a regular file")));
    }
    Ok(file)
}

fn check_digest(file: &File, digest: &str, what: &str) -> Result<(), ManagerError> {
    let mut hasher = Sha256::new();
    io::copy(&mut At { file, pos: 0 }, &mut hasher)
        .map_err(|e| invalid(format!("cannot read {what}: {e}")))?;
    let got = format!("sha256:{:x}", hasher.finalize());
    if got != digest {
        return Err(invalid(format!(
            "{what}: the blob's content has digest {got}, not {digest} (a damaged layout)"
        )));
    }
    Ok(())
}

/// The layers of the layout's image, lowest first.
fn layout_layers(dir: &OwnedFd) -> Result<Vec<Descriptor>, ManagerError> {
    open_at(dir, "oci-layout", false).map_err(|e| {
        invalid(format!(
            "the directory is not an OCI image layout (no oci-layout file: {e})"
        ))
    })?;
    let index_file = open_at(dir, "index.json", false)
        .map_err(|e| invalid(format!("the OCI layout has no index.json: {e}")))?;
    let mut index: Index = read_json(File::from(index_file), "index.json")?;
    for _ in 0..4 {
        let chosen = choose_manifest(&index.manifests)?;
        let blob = open_blob(dir, &chosen.digest)?;
        check_digest(&blob, &chosen.digest, &chosen.digest)?;
        if INDEX_TYPES.contains(&chosen.media_type.as_str()) {
            index = read_json(blob, &chosen.digest)?;
            continue;
        }
        let manifest: Manifest = read_json(blob, &chosen.digest)?;
        for (i, layer) in manifest.layers.iter().enumerate() {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(invalid(format!(
                    "layer {} ({}) has media type {:?}, which vmctl cannot unpack; it reads {}",
                    i + 1,
                    layer.digest,
                    layer.media_type,
                    LAYER_TYPES.join(", ")
                )));
            }
        }
        return Ok(manifest.layers);
    }
    Err(invalid("image indexes nest too deep".into()))
}

/// The one manifest of `manifests`, or the linux/amd64 one.
fn choose_manifest(manifests: &[Descriptor]) -> Result<&Descriptor, ManagerError> {
    let usable: Vec<_> = manifests
        .iter()
        .filter(|m| {
            MANIFEST_TYPES.contains(&m.media_type.as_str())
                || INDEX_TYPES.contains(&m.media_type.as_str())
        })
        .collect();
    let amd64 = |m: &&&Descriptor| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    match usable.as_slice() {
        [] => Err(invalid(format!(
            "index.json lists no image manifest (media types found: {})",
            manifests
                .iter()
                .map(|m| m.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        [one] => Ok(one),
        many => many.iter().find(amd64).copied().ok_or_else(|| {
            invalid(
                "index.json lists several manifests and none for linux/amd64: keep one \
                 (e.g. skopeo copy --override-arch amd64)"
                    .into(),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if path.ends_with("su") { 0o4755 } else { 0o644 });
                h.set_size(data.len() as u64);
            }
            h.set_uid(if path.contains("home/") { 1000 } else { 0 });
            h.set_gid(if path.contains("home/") { 1000 } else { 0 });
            b.append_data(&mut h, path, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(data))
    }

    fn blob(layout: &Path, data: &[u8]) -> String {
        let d = sha(data);
        let dir = layout.join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    }

    /// An OCI layout of `layers` (media type, bytes).
    fn layout(dir: &Path, layers: &[(&str, Vec<u8>)]) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let config = blob(dir, b"{}");
        let layers: Vec<_> = layers
            .iter()
            .map(|(t, data)| {
                serde_json::json!({"mediaType": t, "digest": blob(dir, data), "size": data.len()})
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES[0],
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": layers,
        }))
        .unwrap();
        let m = blob(dir, &manifest);
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": MANIFEST_TYPES[0], "digest": m, "size": manifest.len()}],
            }))
            .unwrap(),
        )
        .unwrap();
    }

    struct Setup {
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let kernel = dir.path().join("images/default");
            fs::create_dir_all(&kernel).unwrap();
            fs::write(kernel.join("vmlinuz"), b"bzImage").unwrap();
            fs::write(kernel.join("vmlinux"), b"ELF").unwrap();
            fs::write(dir.path().join("agent"), b"#!agent").unwrap();
            Setup { dir }
        }
        fn images(&self) -> PathBuf {
            self.dir.path().join("images")
        }
        fn import(&self, name: &str, source: Source) -> Result<(), ManagerError> {
            let agent = self.dir.path().join("agent");
            import(
                &Inputs {
                    images: &self.images(),
                    name,
                    agent: &agent,
                },
                source,
            )
        }
        fn open(&self, rel: &str) -> OwnedFd {
            File::open(self.dir.path().join(rel)).unwrap().into()
        }
        fn image_names(&self) -> Vec<String> {
            let mut v: Vec<_> = fs::read_dir(self.images())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    /// `debugfs -R CMD` on `disk`: what it printed.
    fn debugfs(disk: &Path, cmd: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", cmd])
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_tarball_becomes_an_image_with_the_agent_as_init() {
        let s = Setup::new();
        let tar = tar_of(&[
            ("etc/", ""),
            ("etc/os-release", "ID=vmctltest\n"),
            ("bin/", ""),
            ("bin/su", "suid"),
            ("home/u/", ""),
            ("home/u/file", "mine"),
        ]);
        fs::write(s.dir.path().join("rootfs.tar.gz"), gzip(&tar)).unwrap();
        let fd = s.open("rootfs.tar.gz");
        s.import("fromtar", Source::from_fd(fd).unwrap()).unwrap();
        let image = s.images().join("fromtar");
        let mut files: Vec<_> = fs::read_dir(&image)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["root.raw", "vmlinux", "vmlinuz"]);
        let root = image.join("root.raw");
        assert_eq!(debugfs(&root, "cat /etc/os-release"), "ID=vmctltest\n");
        assert_eq!(
            debugfs(&root, "cat /usr/libexec/vmctl-guest-agent"),
            "#!agent"
        );
        assert!(
            debugfs(&root, "stat /sbin/init")
                .contains("Fast link dest: \"/usr/libexec/vmctl-guest-agent\""),
            "{}",
            debugfs(&root, "stat /sbin/init")
        );
        let su = debugfs(&root, "stat /bin/su");
        assert!(su.contains("Mode:  04755"), "{su}");
        let home = debugfs(&root, "stat /home/u/file");
        assert!(home.contains("User:  1000   Group:  1000"), "{home}");
        let tmp = debugfs(&root, "stat /tmp");
        assert!(tmp.contains("Mode:  01777"), "{tmp}");
        assert_eq!(s.image_names(), ["default", "fromtar"]);
    }

    #[test]
    fn an_oci_layout_applies_layers_in_order_with_whiteouts() {
        let s = Setup::new();
        let lower = tar_of(&[
            ("etc/", ""),
            ("etc/os-release", "ID=lower\n"),
            ("etc/secret", "s"),
            ("opt/", ""),
            ("opt/a", "a"),
        ]);
        let upper = tar_of(&[
            ("etc/os-release", "ID=upper\n"),
            ("etc/.wh.secret", ""),
            ("opt/.wh..wh..opq", ""),
            ("opt/b", "b"),
        ]);
        layout(
            &s.dir.path().join("oci"),
            &[(LAYER_TYPES[1], gzip(&lower)), (LAYER_TYPES[0], upper)],
        );
        s.import("fromoci", Source::from_fd(s.open("oci")).unwrap())
            .unwrap();
        let root = s.images().join("fromoci/root.raw");
        assert_eq!(debugfs(&root, "cat /etc/os-release"), "ID=upper\n");
        let etc = debugfs(&root, "ls -l /etc");
        assert!(!etc.contains("secret"), "{etc}");
        let opt = debugfs(&root, "ls /opt");
        assert!(opt.contains(" b ") || opt.contains("b  "), "{opt}");
        assert!(!opt.contains(" a "), "{opt}");
    }

    #[test]
    fn bad_inputs_name_the_cause_and_leave_nothing() {
        let s = Setup::new();
        let good = gzip(&tar_of(&[("etc/", ""), ("etc/os-release", "ID=x\n")]));
        // Cut in the middle of the gzip stream.
        fs::write(s.dir.path().join("cut.tar.gz"), &good[..good.len() / 2]).unwrap();
        // A valid header, then garbage where the next header goes.
        let mut garbled = tar_of(&[("etc/os-release", "ID=x\n")]);
        garbled.truncate(1024);
        garbled.extend(std::iter::repeat_n(b'x', 1024));
        fs::write(s.dir.path().join("garbled.tar"), &garbled).unwrap();
        layout(
            &s.dir.path().join("zstd"),
            &[("application/vnd.oci.image.layer.v1.tar+zstd", b"x".to_vec())],
        );
        layout(
            &s.dir.path().join("damaged"),
            &[(LAYER_TYPES[0], tar_of(&[("a", "a")]))],
        );
        let blobs = s.dir.path().join("damaged/blobs/sha256");
        for e in fs::read_dir(&blobs).unwrap() {
            let p = e.unwrap().path();
            if fs::read(&p).unwrap().len() > 512 {
                fs::write(&p, b"tampered").unwrap();
            }
        }
        fs::create_dir(s.dir.path().join("notoci")).unwrap();
        let escape = tar_of(&[("etc/", "")]);
        let mut escape = escape[..512].to_vec();
        escape[..7].copy_from_slice(b"../evil");
        escape[7] = 0;
        let mut h = tar::Header::from_byte_slice(&escape).clone();
        h.set_cksum();
        let mut escape = h.as_bytes().to_vec();
        escape.extend([0u8; 1024]);
        fs::write(s.dir.path().join("escape.tar"), &escape).unwrap();
        for (file, what) in [
            (
                "cut.tar.gz",
                "the tarball is not a valid tar archive: at byte",
            ),
            ("garbled.tar", "after entry \"etc/os-release\""),
            (
                "zstd",
                "has media type \"application/vnd.oci.image.layer.v1.tar+zstd\"",
            ),
            ("damaged", "not sha256:"),
            ("notoci", "not an OCI image layout"),
            (
                "escape.tar",
                "entry \"../evil\": paths with \"..\" are refused",
            ),
        ] {
            let e = s
                .import("bad", Source::from_fd(s.open(file)).unwrap())
                .unwrap_err();
            assert_eq!(e.short_name(), "InvalidArgument", "{file}: {e}");
            assert!(e.to_string().contains(what), "{file}: {e}");
        }
        assert_eq!(s.image_names(), ["default"]);
    }
}
