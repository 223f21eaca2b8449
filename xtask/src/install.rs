//! `cargo xtask install`: puts every file where a Debian package would.
//!
//! The layout is one table ([`layout`]) so that the install, the tests and
//! the Debian packages ([`crate::deb`]) read the same truth: every entry
//! names the binary package it belongs to. Installing is idempotent: a file
//! whose content and mode already match is left alone, so a second run
//! reports nothing changed.

use crate::cmd;
use crate::paths::{target_dir, workspace_root, Profile};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Installation options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Staging root; `/` installs onto this machine.
    pub destdir: PathBuf,
    /// Installation prefix, `/usr` for a distribution package.
    pub prefix: PathBuf,
    /// Which build to install.
    pub profile: Profile,
    /// Install only the files of this package (all files when `None`).
    pub only: Option<Package>,
}

/// The binary packages the files are split into, as Debian users expect:
/// the NSS module on its own like `libnss-mymachines`, and the guest agent
/// for image builders, who want it without the host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Package {
    /// The CLI, the daemon, the launcher and their system integration.
    Vmctl,
    /// `libnss_vmctl.so.2`: `NAME.vm` host names.
    LibnssVmctl,
    /// The agent that runs inside guests.
    GuestAgent,
}

impl Package {
    /// Every package, in build order.
    pub const ALL: [Package; 3] = [Package::Vmctl, Package::LibnssVmctl, Package::GuestAgent];

    /// The Debian package name.
    pub fn name(self) -> &'static str {
        match self {
            Package::Vmctl => "vmctl",
            Package::LibnssVmctl => "libnss-vmctl",
            Package::GuestAgent => "vmctl-guest-agent",
        }
    }
}

/// One file to install.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Source file on the build machine.
    pub source: PathBuf,
    /// Absolute target path (before `destdir` is prepended).
    pub target: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Whether `/usr/` in the file refers to the prefix and must follow it.
    pub relocate: bool,
    /// The binary package shipping it.
    pub package: Package,
}

/// What an install changed.
#[derive(Debug, Default)]
pub struct Report {
    /// Files written because they were missing or different.
    pub changed: Vec<PathBuf>,
    /// Files already identical.
    pub unchanged: usize,
}

/// The Debian multiarch triplet of this build (library directory name).
pub fn multiarch() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}

/// Builds the workspace binaries the install needs.
pub fn build(profile: Profile) -> Result<()> {
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(["build", "--quiet"])
            .args([
                "-p",
                "vmctld",
                "-p",
                "vmctl-launch",
                "-p",
                "vmctl",
                "-p",
                "vmctl-ssh",
                "-p",
                "vmctl-https",
                "-p",
                "nss-vmctl",
                "-p",
                "vmctl-guest",
            ])
            .args(profile.cargo_args()),
    )?;
    build_static_agent()
}

/// The target triple of the statically linked agent.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest agent linked statically (glibc's `crt-static`), which vmctld
/// adds to imported container images whatever C library they have (or
/// none). Release-built like the image's agent (it is on the boot path).
/// `--target` keeps the flag off build scripts and proc macros.
fn build_static_agent() -> Result<()> {
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args(["build", "--quiet", "--release", "--target", STATIC_TARGET])
            .args(["-p", "vmctl-guest", "--bin", "vmctl-guest-agent"]),
    )
}

fn static_agent() -> PathBuf {
    target_dir()
        .join(STATIC_TARGET)
        .join("release/vmctl-guest-agent")
}

/// Generates man pages and completions with the built binaries into
/// `out/man` and `out/completions`.
fn generate_docs(profile: Profile) -> Result<PathBuf> {
    let out = profile.out_dir().join("generated-docs");
    for binary in ["vmctl", "vmctld"] {
        cmd::output(
            Command::new(profile.out_dir().join(binary))
                .args(["generate-docs", "--out"])
                .arg(&out),
        )?;
    }
    Ok(out)
}

/// Every file of the installation.
pub fn layout(prefix: &Path, profile: Profile) -> Result<Vec<Entry>> {
    let root = workspace_root();
    let out = profile.out_dir();
    let p = |rel: &str| prefix.join(rel);
    let mut entries = vec![
        Entry::binary(out.join("vmctl"), p("bin/vmctl")),
        Entry::binary(out.join("vmctld"), p("libexec/vmctl/vmctld")),
        Entry::binary(out.join("vmctl-launch"), p("libexec/vmctl/vmctl-launch")),
        // The SSH gateway (vmctl-ssh.socket starts it).
        Entry::binary(out.join("vmctl-ssh"), p("libexec/vmctl/vmctl-ssh")),
        // The HTTPS proxy (vmctl-https.socket starts it).
        Entry::binary(out.join("vmctl-https"), p("libexec/vmctl/vmctl-https")),
        Entry::data(
            out.join("libnss_vmctl.so"),
            p(&format!("lib/{}/libnss_vmctl.so.2", multiarch())),
        )
        .of(Package::LibnssVmctl),
        Entry::data(
            root.join("api/io.vmctl.Manager.varlink"),
            p("share/vmctl/varlink/io.vmctl.Manager.varlink"),
        ),
        // The static agent vmctld puts into imported container images
        // (vmctld/src/container_import.rs).
        Entry::binary(static_agent(), p("lib/vmctl/guest/vmctl-guest-agent")),
        // The guest agent, where the guest image puts it (`xtask image`).
        Entry::binary(
            out.join("vmctl-guest-agent"),
            p("libexec/vmctl-guest-agent"),
        )
        .of(Package::GuestAgent),
        Entry::data(
            root.join("guest/vmctl-guest-agent.service"),
            p("lib/systemd/system/vmctl-guest-agent.service"),
        )
        .of(Package::GuestAgent)
        .relocated(),
        Entry::data(
            root.join("guest/PROTOCOL.md"),
            p("share/doc/vmctl-guest-agent/PROTOCOL.md"),
        )
        .of(Package::GuestAgent),
    ];
    // Files in the tree, by directory and suffix, to where systemd, D-Bus and
    // polkit look for them.
    let tree: &[(&str, &str, &str)] = &[
        ("units", ".service", "lib/systemd/system"),
        ("units", ".socket", "lib/systemd/system"),
        ("units", ".slice", "lib/systemd/system"),
        ("units", ".preset", "lib/systemd/system-preset"),
        ("units/network", ".netdev", "lib/systemd/network"),
        ("units/network", ".network", "lib/systemd/network"),
        ("units/sysusers.d", ".conf", "lib/sysusers.d"),
        ("units/tmpfiles.d", ".conf", "lib/tmpfiles.d"),
        ("units/dbus", ".conf", "share/dbus-1/system.d"),
        ("units/dbus", ".service", "share/dbus-1/system-services"),
        ("polkit", ".policy", "share/polkit-1/actions"),
        ("polkit", ".rules", "share/polkit-1/rules.d"),
    ];
    for (dir, suffix, target_dir) in tree {
        for source in files_with_suffix(&root.join(dir), suffix)? {
            let name = source.file_name().expect("listed files have names");
            entries.push(Entry::data(source.clone(), p(target_dir).join(name)).relocated());
        }
    }
    // OpenSSH reads drop-ins only from /etc: `Host *.vm` trusts the known
    // hosts vmctld publishes.
    let sysconf = if prefix == Path::new("/usr") {
        PathBuf::from("/etc")
    } else {
        prefix.join("etc")
    };
    entries.push(Entry::data(
        root.join("units/ssh_config.d/50-vmctl.conf"),
        sysconf.join("ssh/ssh_config.d/50-vmctl.conf"),
    ));
    let docs = generate_docs(profile)?;
    for page in files_with_suffix(&docs.join("man"), "")? {
        let name = page.file_name().expect("listed files have names");
        let section = page
            .extension()
            .and_then(|e| e.to_str())
            .with_context(|| format!("man page without a section: {}", page.display()))?
            .to_owned();
        entries.push(Entry::data(
            page.clone(),
            p(&format!("share/man/man{section}")).join(name),
        ));
    }
    let completions = docs.join("completions");
    for (file, target) in [
        ("vmctl.bash", "share/bash-completion/completions/vmctl"),
        ("_vmctl", "share/zsh/vendor-completions/_vmctl"),
        ("vmctl.fish", "share/fish/vendor_completions.d/vmctl.fish"),
    ] {
        entries.push(Entry::data(completions.join(file), p(target)));
    }
    Ok(entries)
}

impl Entry {
    fn binary(source: PathBuf, target: PathBuf) -> Self {
        Entry {
            source,
            target,
            mode: 0o755,
            relocate: false,
            package: Package::Vmctl,
        }
    }

    fn data(source: PathBuf, target: PathBuf) -> Self {
        Entry {
            mode: 0o644,
            ..Entry::binary(source, target)
        }
    }

    fn of(self, package: Package) -> Self {
        Entry { package, ..self }
    }

    fn relocated(self) -> Self {
        Entry {
            relocate: true,
            ..self
        }
    }
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let matches = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(suffix));
        if path.is_file() && matches {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Installs the layout under `opts.destdir`.
pub fn install(opts: &Options) -> Result<Report> {
    if !opts.prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path, got {:?} (for example /usr)",
            opts.prefix
        );
    }
    let mut report = Report::default();
    let entries = layout(&opts.prefix, opts.profile)?
        .into_iter()
        .filter(|e| opts.only.is_none_or(|only| e.package == only));
    for entry in entries {
        let mut content = fs::read(&entry.source).with_context(|| {
            format!(
                "cannot read {} (was it built? try `cargo build`)",
                entry.source.display()
            )
        })?;
        if entry.relocate && opts.prefix != Path::new("/usr") {
            content = relocate(&content, &opts.prefix);
        }
        let target = opts
            .destdir
            .join(entry.target.strip_prefix("/").unwrap_or(&entry.target));
        if write_if_changed(&target, &content, entry.mode)? {
            report.changed.push(entry.target);
        } else {
            report.unchanged += 1;
        }
    }
    Ok(report)
}

/// Rewrites `/usr/libexec/` and `/usr/bin/` references for another prefix.
fn relocate(content: &[u8], prefix: &Path) -> Vec<u8> {
    let text = String::from_utf8_lossy(content);
    let prefix = prefix.to_string_lossy();
    text.replace("/usr/libexec/", &format!("{prefix}/libexec/"))
        .replace("/usr/bin/", &format!("{prefix}/bin/"))
        .into_bytes()
}

/// Writes `content` to `path` atomically unless it is already there with
/// the same mode. Returns whether anything changed.
fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<bool> {
    if let Ok(existing) = fs::read(path) {
        let current_mode = fs::metadata(path)?.permissions().mode() & 0o7777;
        if existing == content && current_mode == mode {
            return Ok(false);
        }
    }
    let dir = path.parent().expect("install targets are absolute paths");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-tmp",
        path.file_name()
            .expect("install targets have names")
            .to_string_lossy()
    ));
    fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_write_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let file = dir.join("a/b/c.conf");
        assert!(write_if_changed(&file, b"x", 0o644).unwrap());
        assert!(!write_if_changed(&file, b"x", 0o644).unwrap());
        assert!(write_if_changed(&file, b"x", 0o755).unwrap());
        assert!(write_if_changed(&file, b"y", 0o755).unwrap());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn relocation_follows_prefix() {
        let unit = b"ExecStart=/usr/libexec/vmctl/vmctld\nExecStartPre=/usr/bin/true\n";
        let out = relocate(unit, Path::new("/opt/vmctl"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ExecStart=/opt/vmctl/libexec/vmctl/vmctld\nExecStartPre=/opt/vmctl/bin/true\n"
        );
    }
}
