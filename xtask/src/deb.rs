//! `cargo xtask deb`: the Debian packages `vmctl`, `libnss-vmctl` and
//! `vmctl-guest-agent`.
//!
//! Each package is staged with [`install::install`] (only its own files of
//! the one install list) and archived with `dpkg-deb`. Neither cargo-deb
//! nor debhelper: cargo-deb wants its own copy of the file list in
//! `Cargo.toml` metadata, and debhelper wants a source package
//! (`debian/rules`, `dpkg-buildpackage`, dh-cargo's vendored build) for what
//! here is "stage, then archive". What debhelper would add is done here in
//! the open: stripping, compressed man pages and changelog, `md5sums`, the
//! `libc6` dependency from `dpkg-shlibdeps`, the NSS module's `shlibs`,
//! `Installed-Size`. The maintainer scripts are files in `packaging/deb/`.

use crate::cmd;
use crate::install::{self, Package};
use crate::paths::{target_dir, workspace_root, Profile};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Who the packages name as their maintainer.
const MAINTAINER: &str = "vmctl maintainers <maintainers@users.noreply.b-seed-9f84f163.example>";

/// Maintainer scripts and control files a package may have in
/// `packaging/deb/<package>/`.
const CONTROL_FILES: [(&str, u32); 5] = [
    ("preinst", 0o755),
    ("postinst", 0o755),
    ("prerm", 0o755),
    ("postrm", 0o755),
    ("triggers", 0o644),
];

/// What to build.
#[derive(Clone, Debug)]
pub struct Options {
    /// Which build to package.
    pub profile: Profile,
    /// Package version; the workspace version when `None` (tests build a
    /// higher one to upgrade to).
    pub version: Option<String>,
    /// Where the `.deb` files go.
    pub out_dir: PathBuf,
}

impl Options {
    /// The workspace version of `profile`'s build, into `target/debian/`
    /// (release) or `target/debian/dev/`, so that building one never
    /// disturbs a dev host installing the other.
    pub fn new(profile: Profile) -> Self {
        let out_dir = match profile {
            Profile::Release => target_dir().join("debian"),
            Profile::Dev => target_dir().join("debian/dev"),
        };
        Options {
            profile,
            version: None,
            out_dir,
        }
    }
}

/// The control fields of a package that are not computed.
struct Spec {
    section: &'static str,
    multi_arch: Option<&'static str>,
    depends: &'static [&'static str],
    recommends: &'static [&'static str],
    suggests: &'static [&'static str],
    /// Synopsis, then the extended description (lines start with a space).
    description: &'static str,
}

fn spec(package: Package) -> Spec {
    match package {
        Package::Vmctl => Spec {
            section: "admin",
            multi_arch: None,
            depends: &[
                "systemd",
                "default-dbus-system-bus | dbus-system-bus",
                "polkitd",
                // Bookworm has QEMU 10 in bookworm-backports only: its 7.2
                // crashes trixie guests under TCG.
                "qemu-system-x86 (>= 1:10) | cloud-hypervisor",
                // The launcher isolates owners on the bridge with `nft`.
                "nftables",
                // vmctld makes each VM's SSH host key with ssh-keygen.
                "openssh-client",
                // vmctld's store (dpkg-shlibdeps finds it too; named here
                // so the package says so even if the link changes).
                "libsqlite3-0",
                // vmctld makes data volumes' file systems with mkfs.ext4.
                "e2fsprogs",
            ],
            // Like systemd-container recommending libnss-mymachines: names
            // are a convenience, not needed to run VMs.
            recommends: &["libnss-vmctl", "systemd-container"],
            suggests: &["mkosi"],
            description: "systemd-native virtual machines\n \
                Every VM is a vm@NAME.service unit; vmctld serves a varlink \
                and a D-Bus\n API over one service layer, and `vmctl` \
                creates, starts, enters (exec,\n shell, console, cp) and \
                removes VMs. QEMU or cloud-hypervisor run the\n guests, \
                which talk to the host over vsock.\n .\n \
                vmctld is socket-activated (vmctld.socket); members of the \
                vmctl group\n may manage their own VMs through polkit.",
        },
        Package::LibnssVmctl => Spec {
            section: "admin",
            multi_arch: Some("same"),
            depends: &[],
            recommends: &[],
            suggests: &[],
            description: "NSS module resolving vmctl VM names\n \
                libnss_vmctl.so.2 makes NAME.vm resolve to the address of \
                vmctl VM NAME\n (from /run/vmctl/hosts). Installing it adds \
                `vmctl` to the hosts: line\n of /etc/nsswitch.conf, after \
                `files`; removing it takes it out again.",
        },
        Package::GuestAgent => Spec {
            section: "admin",
            multi_arch: None,
            depends: &[],
            recommends: &[],
            suggests: &[],
            description: "guest agent for vmctl virtual machines\n \
                Runs inside a vmctl guest, listens on vsock port 1024, runs \
                commands for\n `vmctl exec` and `vmctl shell`, copies files \
                for `vmctl cp` and tells the\n host when the guest is up. \
                Install it into guest images; it is enabled on\n \
                installation.",
        },
    }
}

/// Builds every package; returns the `.deb` paths in [`Package::ALL`] order.
pub fn build(opts: &Options) -> Result<Vec<PathBuf>> {
    let version = opts
        .version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    let arch = architecture()?;
    install::build(opts.profile)?;
    // dpkg-shlibdeps reads `debian/control` of its working directory and
    // wants the files it analyses under `debian/<package>/`.
    let work = opts.out_dir.join("build");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    fs::create_dir_all(work.join("debian"))?;
    fs::write(work.join("debian/control"), "")?;
    let mut debs = Vec::new();
    for package in Package::ALL {
        let root = work.join("debian").join(package.name());
        stage(package, opts.profile, &version, &root)?;
        let deb = opts
            .out_dir
            .join(format!("{}_{version}_{arch}.deb", package.name()));
        cmd::run(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&root)
                .arg(&deb),
        )?;
        debs.push(deb);
    }
    Ok(debs)
}

/// Runs lintian on `debs`, printing what it says; fails on errors.
pub fn lintian(debs: &[PathBuf]) -> Result<()> {
    cmd::run(
        Command::new("lintian")
            .args(["--fail-on", "error", "--display-info"])
            .args(debs),
    )
    .context("lintian found errors in the packages")
}

fn architecture() -> Result<String> {
    let out = cmd::output(Command::new("dpkg").arg("--print-architecture"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Lays out `package`'s root filesystem and `DEBIAN/` under `root`.
fn stage(package: Package, profile: Profile, version: &str, root: &Path) -> Result<()> {
    install::install(&install::Options {
        destdir: root.to_path_buf(),
        prefix: "/usr".into(),
        profile,
        only: Some(package),
    })?;
    strip_binaries(root)?;
    compress_man_pages(&root.join("usr/share/man"))?;
    let doc = root.join("usr/share/doc").join(package.name());
    fs::create_dir_all(&doc)?;
    let packaging = workspace_root().join("packaging/deb");
    fs::copy(packaging.join("copyright"), doc.join("copyright"))?;
    fs::write(doc.join("changelog"), changelog(&packaging, version)?)?;
    gzip(&doc.join("changelog"))?;

    let control = root.join("DEBIAN");
    fs::create_dir_all(&control)?;
    for (name, mode) in CONTROL_FILES {
        let source = packaging.join(package.name()).join(name);
        if source.exists() {
            let target = control.join(name);
            fs::copy(&source, &target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        }
    }
    if package == Package::LibnssVmctl {
        fs::write(
            control.join("shlibs"),
            format!("libnss_vmctl 2 libnss-vmctl (>= {version})\n"),
        )?;
    }
    fix_directory_modes(root)?;
    let files = regular_files(root)?;
    // Files in /etc are the administrator's once installed: dpkg keeps
    // their changes on upgrades and removes them only on purge. Like
    // dh_md5sums, md5sums leaves them out (dpkg records their sums itself).
    let (conffiles, others): (Vec<PathBuf>, Vec<PathBuf>) =
        files.iter().cloned().partition(|f| f.starts_with("etc"));
    if !conffiles.is_empty() {
        let list: String = conffiles
            .iter()
            .map(|f| format!("/{}\n", f.display()))
            .collect();
        fs::write(control.join("conffiles"), list)?;
    }
    fs::write(control.join("md5sums"), md5sums(root, &others)?)?;
    let elves: Vec<&PathBuf> = files.iter().filter(|f| is_elf(&root.join(f))).collect();
    let shlibs = shlib_depends(root, package, &elves)?;
    fs::write(
        control.join("control"),
        control_file(
            package,
            version,
            &architecture()?,
            &shlibs,
            installed_size(root)?,
        ),
    )?;
    Ok(())
}

fn control_file(
    package: Package,
    version: &str,
    arch: &str,
    shlib_depends: &[String],
    installed_kib: u64,
) -> String {
    let spec = spec(package);
    let mut depends: Vec<String> = shlib_depends.to_vec();
    depends.extend(spec.depends.iter().map(|d| d.to_string()));
    let mut text = format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n",
        package.name()
    );
    for (field, values) in [
        ("Depends", depends.join(", ")),
        ("Recommends", spec.recommends.join(", ")),
        ("Suggests", spec.suggests.join(", ")),
    ] {
        if !values.is_empty() {
            text.push_str(&format!("{field}: {values}\n"));
        }
    }
    text.push_str(&format!("Section: {}\nPriority: optional\n", spec.section));
    if let Some(multi_arch) = spec.multi_arch {
        text.push_str(&format!("Multi-Arch: {multi_arch}\n"));
    }
    text.push_str(&format!("Description: {}\n", spec.description));
    text
}

/// The changelog: `packaging/deb/changelog`, with an entry for `version`
/// on top when it is not the newest there (test builds).
fn changelog(packaging: &Path, version: &str) -> Result<String> {
    let recorded = fs::read_to_string(packaging.join("changelog"))?;
    if recorded.starts_with(&format!("vmctl ({version}) ")) {
        return Ok(recorded);
    }
    let date = cmd::output(Command::new("date").arg("-R"))?;
    Ok(format!(
        "vmctl ({version}) unstable; urgency=medium\n\n  * Build of the working tree.\n\n -- {MAINTAINER}  {}\n\n{recorded}",
        String::from_utf8_lossy(&date.stdout).trim()
    ))
}

/// Strips binaries as dh_strip does (no separate debug symbols package).
fn strip_binaries(root: &Path) -> Result<()> {
    for file in regular_files(root)? {
        let path = root.join(&file);
        if !is_elf(&path) {
            continue;
        }
        let mut strip = Command::new("strip");
        strip.args(["--remove-section=.comment", "--remove-section=.note"]);
        if path.to_string_lossy().contains(".so") {
            strip.arg("--strip-unneeded");
        }
        cmd::output(strip.arg(&path))?;
    }
    Ok(())
}

fn compress_man_pages(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for file in regular_files(dir)? {
        if file.extension().is_none_or(|e| e != "gz") {
            gzip(&dir.join(file))?;
        }
    }
    Ok(())
}

/// `gzip -9n`: no name or time stamp, so equal input gives equal output.
fn gzip(path: &Path) -> Result<()> {
    cmd::output(Command::new("gzip").args(["-9nf"]).arg(path))?;
    Ok(())
}

fn is_elf(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF"))
}

/// Regular files under `root` (relative paths, sorted), `DEBIAN/` excluded.
fn regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() && path != root.join("DEBIAN") {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                out.push(
                    path.strip_prefix(root)
                        .expect("walked paths are under the root")
                        .to_path_buf(),
                );
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    Ok(files)
}

/// Directories 0755 whatever the umask was (lintian checks them).
fn fix_directory_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fix_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

fn md5sums(root: &Path, files: &[PathBuf]) -> Result<String> {
    let out = cmd::output(Command::new("md5sum").current_dir(root).args(files))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Installed-Size` as dpkg-gencontrol counts it: KiB per file, rounded
/// up, plus one per directory.
fn installed_size(root: &Path) -> Result<u64> {
    fn walk(dir: &Path, skip: &Path) -> Result<u64> {
        let mut kib = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if path != skip {
                    kib += 1 + walk(&path, skip)?;
                }
            } else {
                kib += meta.len().div_ceil(1024);
            }
        }
        Ok(kib)
    }
    walk(root, &root.join("DEBIAN"))
}

/// The shared-library dependencies of `elves` (relative to `root`), from
/// `dpkg-shlibdeps`, which runs in the parent of the `debian/` directory.
fn shlib_depends(root: &Path, package: Package, elves: &[&PathBuf]) -> Result<Vec<String>> {
    if elves.is_empty() {
        return Ok(Vec::new());
    }
    let work = root
        .parent()
        .and_then(Path::parent)
        .context("a package root lives in <work>/debian/<package>")?;
    let mut c = Command::new("dpkg-shlibdeps");
    c.current_dir(work).arg("-O");
    for elf in elves {
        let mut arg = std::ffi::OsString::from("-e");
        arg.push(Path::new("debian").join(package.name()).join(elf));
        c.arg(arg);
    }
    let out = cmd::output(&mut c)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(list) = text.lines().find_map(|l| l.strip_prefix("shlibs:Depends=")) else {
        bail!("dpkg-shlibdeps printed no shlibs:Depends: {text}");
    };
    Ok(list.split(", ").map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(package: &str, name: &str) -> PathBuf {
        workspace_root()
            .join("packaging/deb")
            .join(package)
            .join(name)
    }

    /// Runs a libnss-vmctl maintainer script against a root holding only
    /// `nsswitch.conf`.
    fn run_nss_script(root: &Path, name: &str, args: &[&str]) {
        let status = Command::new("sh")
            .arg(script("libnss-vmctl", name))
            .args(args)
            .env("DPKG_ROOT", root)
            .env("DPKG_MAINTSCRIPT_PACKAGE_INSTCOUNT", "0")
            .status()
            .unwrap();
        assert!(status.success(), "{name} {args:?} failed: {status}");
    }

    fn hosts_line(root: &Path) -> String {
        fs::read_to_string(root.join("etc/nsswitch.conf"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("hosts:"))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn nss_entry_goes_after_files_once_and_out_again() {
        let root = std::env::temp_dir().join(format!("xtask-deb-nss-{}", std::process::id()));
        fs::create_dir_all(root.join("etc")).unwrap();
        let cases = [
            (
                "hosts:          files dns",
                "hosts:          files vmctl dns",
            ),
            (
                "hosts: files mymachines resolve [!UNAVAIL=return] dns myhostname",
                "hosts: files vmctl mymachines resolve [!UNAVAIL=return] dns myhostname",
            ),
            (
                "hosts: files [NOTFOUND=return] dns # files",
                "hosts: files [NOTFOUND=return] vmctl dns # files",
            ),
            ("hosts: dns", "hosts: vmctl dns"),
            ("hosts: files", "hosts: files vmctl"),
        ];
        for (before, after) in cases {
            fs::write(
                root.join("etc/nsswitch.conf"),
                format!("passwd: files\n{before}\nnetworks: files\n"),
            )
            .unwrap();
            run_nss_script(&root, "preinst", &["install"]);
            run_nss_script(&root, "postinst", &["configure"]);
            assert_eq!(hosts_line(&root), after);
            // A reinstallation does not add it twice.
            run_nss_script(&root, "preinst", &["install"]);
            run_nss_script(&root, "postinst", &["configure", "0.1.0"]);
            assert_eq!(hosts_line(&root), after);
            // An upgrade does not put back what the administrator removed.
            fs::write(
                root.join("etc/nsswitch.conf"),
                format!("passwd: files\n{before}\nnetworks: files\n"),
            )
            .unwrap();
            run_nss_script(&root, "preinst", &["upgrade", "0.1.0"]);
            run_nss_script(&root, "postinst", &["configure", "0.1.0"]);
            assert_eq!(hosts_line(&root), before);
            // Removal restores the original line.
            fs::write(
                root.join("etc/nsswitch.conf"),
                format!("passwd: files\n{after}\nnetworks: files\n"),
            )
            .unwrap();
            run_nss_script(&root, "postrm", &["remove"]);
            assert_eq!(hosts_line(&root), before);
            let text = fs::read_to_string(root.join("etc/nsswitch.conf")).unwrap();
            assert!(text.starts_with("passwd: files\n") && text.ends_with("networks: files\n"));
        }
        assert_eq!(
            fs::read_dir(root.join("etc")).unwrap().count(),
            1,
            "the install marker is cleaned up"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn control_lists_computed_and_declared_dependencies() {
        let text = control_file(
            Package::Vmctl,
            "0.1.0",
            "amd64",
            &["libc6 (>= 2.34)".to_owned()],
            42,
        );
        assert!(text.contains("\nDepends: libc6 (>= 2.34), systemd, "));
        assert!(text
            .contains("qemu-system-x86 (>= 1:10) | cloud-hypervisor, nftables, openssh-client, libsqlite3-0, e2fsprogs\n"));
        assert!(text.contains("\nRecommends: libnss-vmctl, systemd-container\n"));
        assert!(text.contains("\nSuggests: mkosi\n"));
        assert!(text.contains("\nInstalled-Size: 42\n"));
        // Every extended description line is indented, none is empty.
        let description = text.split("Description: ").nth(1).unwrap();
        for line in description.lines().skip(1) {
            assert!(line.starts_with(' ') && line.trim() != "", "{line:?}");
        }
    }

    #[test]
    fn every_package_has_scripts_that_parse() {
        for package in Package::ALL {
            for (name, mode) in CONTROL_FILES {
                let path = script(package.name(), name);
                if mode == 0o755 && path.exists() {
                    let status = Command::new("sh").arg("-n").arg(&path).status().unwrap();
                    assert!(status.success(), "{} does not parse", path.display());
                }
            }
        }
    }
}
