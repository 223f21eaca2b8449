//! The development host: a real systemd to install vmctl into and test in.
//!
//! On a machine whose PID 1 is not systemd (the CI machines), the host is a
//! Debian trixie root filesystem booted with `systemd-nspawn --boot` in its
//! own network namespace, so bridges, TAP devices and NAT rules made inside
//! stay inside. Step by step, `up`:
//! 1. builds the base root filesystem with debootstrap once, cached under
//!    `<cache>/devhost/base-<hash>` (see [`crate::paths::cache_dir`]) where
//!    the hash covers everything that
//!    defines it (suite, mirror, package list, provisioning version);
//! 2. copies it to a fresh working root `target/devhost/root` (reflink where
//!    the filesystem can), so every `up` starts from a clean machine;
//! 3. adds what VMs need beyond the packages (the default guest image,
//!    vhost-device-vsock);
//! 4. boots it and waits for `systemctl is-system-running`;
//! 5. installs the Debian packages of the current build ([`crate::deb`])
//!    inside with `apt-get install ./*.deb`, so every run tests the
//!    packages and their maintainer scripts.
//!
//! Commands run inside through `nsenter` into the namespaces of the
//! container's PID 1 with a clean environment. With `--local` (only when
//! this machine's PID 1 is systemd) the machine itself is the host.

use crate::cmd;
use crate::deb;
use crate::image::{self, Image};
use crate::paths::{cache_dir, devhost_dir, remove_stale, Profile};
use crate::tools;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Debian release of the development host (systemd 257, QEMU 10, varlinkctl).
const SUITE: &str = "trixie";

/// Bump when the provisioning of the base image changes in a way the
/// package list does not show.
const PROVISION_VERSION: u32 = 1;

/// The machine name of the container (also its hostname).
pub const MACHINE: &str = "vmctl-dev";

/// Packages of the development host.
pub const HOST_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "dbus-broker",
    "polkitd",
    "libpam-systemd",
    "systemd-container",
    "udev",
    "iproute2",
    "nftables",
    "procps",
    "kmod",
    "less",
    // `systemd-analyze verify` checks that Documentation=man: pages exist.
    "man-db",
    "qemu-system-x86",
    "qemu-utils",
    "openssh-client",
    "curl",
    // `ping -c1 VM` in the network tests.
    "iputils-ping",
    // The vmctl package depends on it (data volumes); the container has no
    // network to fetch it at install time.
    "e2fsprogs",
];

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";

/// How `up` should provide the host.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpOptions {
    /// Use this machine's own systemd instead of a container.
    pub local: bool,
    /// Which build to install.
    pub profile: Option<Profile>,
}

/// A running development host.
#[derive(Debug, Clone)]
pub enum DevHost {
    /// This machine (PID 1 is systemd).
    Local,
    /// A systemd-nspawn container whose PID 1 has this host PID.
    Container {
        /// PID of `systemd-nspawn`.
        nspawn: u32,
        /// PID (in our namespace) of the container's systemd.
        leader: u32,
    },
}

fn state_file() -> PathBuf {
    devhost_dir().join("state")
}

fn working_root() -> PathBuf {
    devhost_dir().join("root")
}

/// Whether PID 1 of this machine is systemd.
pub fn pid1_is_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// Where in the host the packages are copied to be installed from.
pub const PACKAGE_DIR: &str = "/var/tmp/vmctl-debs";

/// Brings up a fresh host with the current build's packages installed.
pub fn up(opts: UpOptions) -> Result<DevHost> {
    // The debug build by default: `cargo test` built it already, and the
    // packages differ from release ones only in the optimisation level.
    let profile = opts.profile.unwrap_or(Profile::Dev);
    down()?;
    let debs = deb::build(&deb::Options::new(profile))?;
    let host = if opts.local {
        if !pid1_is_systemd() {
            bail!("--local needs a machine whose PID 1 is systemd; this one's is not (drop --local to use a container)");
        }
        install_vm_assets(Path::new("/"), &image::ensure_default()?)?;
        fs::create_dir_all(devhost_dir())?;
        fs::write(state_file(), "local\n")?;
        DevHost::Local
    } else {
        let base = ensure_base()?;
        let root = working_root();
        prepare_root(&base, &root)?;
        install_vm_assets(&root, &image::ensure_default()?)?;
        boot(&root)?
    };
    host.wait_until_booted()?;
    host.install_packages(&debs)?;
    // VMs with a network need networkd's bridge vmbr0 (from the files the
    // packages just installed): enable networkd and make it read them.
    host.check(&["systemctl", "enable", "systemd-networkd.service"])?;
    host.check(&["systemctl", "reload-or-restart", "systemd-networkd.service"])?;
    Ok(host)
}

/// Stops the host if one is running (a no-op otherwise).
pub fn down() -> Result<()> {
    let state = match fs::read_to_string(state_file()) {
        Ok(s) => s,
        Err(_) => return Ok(()),
    };
    if let Some(pid) = state
        .strip_prefix("nspawn ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse::<u32>().ok())
    {
        if process_alive(pid) {
            eprintln!("xtask: stopping the development host (systemd-nspawn pid {pid})");
            // SIGTERM asks nspawn to shut the container down cleanly.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            if process_alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
    fs::remove_file(state_file())?;
    Ok(())
}

impl DevHost {
    /// The host started by a previous `up`.
    pub fn current() -> Result<DevHost> {
        let state = fs::read_to_string(state_file())
            .context("no development host is up: run `cargo xtask host up` first")?;
        if state.trim() == "local" {
            return Ok(DevHost::Local);
        }
        let pid: u32 = state
            .strip_prefix("nspawn ")
            .and_then(|rest| rest.trim().parse().ok())
            .with_context(|| format!("corrupt state file {}", state_file().display()))?;
        if !process_alive(pid) {
            bail!("the development host (systemd-nspawn pid {pid}) is gone: run `cargo xtask host up`; its console log is {}", console_log().display());
        }
        let leader = child_of(pid)
            .with_context(|| format!("systemd-nspawn pid {pid} has no container PID 1 (yet?)"))?;
        Ok(DevHost::Container {
            nspawn: pid,
            leader,
        })
    }

    /// A command that runs `argv` inside the host as root or `user`.
    pub fn command<S: AsRef<str>>(&self, argv: &[S], user: Option<&str>) -> Command {
        let mut inner: Vec<String> = Vec::new();
        if let Some(user) = user {
            inner.extend(["runuser", "-u", user, "--"].map(String::from));
        }
        inner.extend(["env", "-i", PATH, "LANG=C.UTF-8", "TERM=dumb"].map(String::from));
        if user.is_none() {
            inner.push("HOME=/root".into());
        }
        inner.extend(argv.iter().map(|a| a.as_ref().to_owned()));
        match self {
            DevHost::Local => {
                let mut c = Command::new(&inner[0]);
                c.args(&inner[1..]);
                c
            }
            DevHost::Container { leader, .. } => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &leader.to_string(), "-a", "--"]).args(&inner);
                c
            }
        }
    }

    /// Runs `argv` inside with inherited stdio and returns its exit status.
    pub fn run<S: AsRef<str>>(&self, argv: &[S], user: Option<&str>) -> Result<ExitStatus> {
        let mut c = self.command(argv, user);
        c.status()
            .with_context(|| format!("cannot run `{}`", cmd::display(&c)))
    }

    /// Runs `argv` inside and captures its output (whatever the exit code).
    pub fn output<S: AsRef<str>>(&self, argv: &[S], user: Option<&str>) -> Result<Output> {
        let mut c = self.command(argv, user);
        c.stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", cmd::display(&c)))
    }

    /// Runs `argv` inside; fails with its output unless it exits 0.
    pub fn check<S: AsRef<str>>(&self, argv: &[S]) -> Result<String> {
        let out = self.output(argv, None)?;
        if !out.status.success() {
            bail!(
                "in the host, `{}` failed ({}):\n{}{}",
                argv.iter()
                    .map(|a| a.as_ref())
                    .collect::<Vec<_>>()
                    .join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_until_booted(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let DevHost::Container { nspawn, .. } = self {
                if !process_alive(*nspawn) {
                    bail!(
                        "the development host died while booting; console log:\n{}",
                        tail(&console_log(), 40)
                    );
                }
            }
            let out = self.output(&["systemctl", "is-system-running"], None)?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed = self.output(&["systemctl", "--failed", "--no-pager"], None)?;
                    eprintln!(
                        "xtask: warning: the host booted degraded:\n{}",
                        String::from_utf8_lossy(&failed.stdout)
                    );
                    return Ok(());
                }
                _ if Instant::now() > deadline => bail!(
                    "the development host did not finish booting within 180 s (state {state:?}); console log: {}",
                    console_log().display()
                ),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Puts the default guest image and vhost-device-vsock into the host
    /// again (purging the package removes `/var/lib/vmctl`).
    pub fn install_vm_assets(&self) -> Result<()> {
        let root = match self {
            DevHost::Local => PathBuf::from("/"),
            DevHost::Container { .. } => working_root(),
        };
        install_vm_assets(&root, &image::ensure_default()?)
    }

    /// Where the host's absolute path `target` is on this machine.
    pub fn path_of(&self, target: &str) -> PathBuf {
        match self {
            DevHost::Local => PathBuf::from(target),
            DevHost::Container { .. } => working_root().join(target.trim_start_matches('/')),
        }
    }

    /// Copies the file `source` of this machine to `target` in the host.
    pub fn copy_in(&self, source: &Path, target: &str) -> Result<()> {
        let dest = self.path_of(target);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(source, &dest)
            .with_context(|| format!("cannot copy {} into the host", source.display()))?;
        Ok(())
    }

    /// Copies `debs` into the host's [`PACKAGE_DIR`] and installs them with
    /// `apt-get install`, maintainer scripts and all.
    pub fn install_packages(&self, debs: &[PathBuf]) -> Result<()> {
        self.check(&self.apt_install_argv(debs, &[])?)?;
        Ok(())
    }

    /// The `apt-get install` command line for `debs`, after copying them
    /// into the host; `extra` goes before the packages.
    pub fn apt_install_argv(&self, debs: &[PathBuf], extra: &[&str]) -> Result<Vec<String>> {
        let mut argv: Vec<String> = [
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-q",
        ]
        .map(String::from)
        .into();
        argv.extend(extra.iter().map(|a| a.to_string()));
        for deb in debs {
            let name = deb
                .file_name()
                .with_context(|| format!("not a package file: {}", deb.display()))?
                .to_string_lossy();
            let target = format!("{PACKAGE_DIR}/{name}");
            self.copy_in(deb, &target)?;
            argv.push(target);
        }
        Ok(argv)
    }
}

fn console_log() -> PathBuf {
    devhost_dir().join("console.log")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the parenthesised command name; Z is a zombie.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The first child process of `parent` (the container's PID 1 for nspawn).
fn child_of(parent: u32) -> Option<u32> {
    let entries = fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// The Debian mirror this machine's apt uses (so the host build reaches
/// only what this machine reaches).
pub fn debian_mirror() -> String {
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        sources.extend(dir.flatten().map(|e| e.path()));
    }
    for path in sources {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for word in text.split_whitespace() {
            let url = word.trim_end_matches('/');
            if (url.starts_with("http://") || url.starts_with("https://"))
                && url.ends_with("/debian")
            {
                return url.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

fn base_key(mirror: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("{SUITE}\n{mirror}\n{PROVISION_VERSION}\n"));
    for p in HOST_PACKAGES {
        hash.update(p);
        hash.update("\n");
    }
    let digest = hash.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the cached base root filesystem if it is not there yet.
fn ensure_base() -> Result<PathBuf> {
    let mirror = debian_mirror();
    let bases = cache_dir().join("devhost");
    let base = bases.join(format!("base-{}", base_key(&mirror)));
    if base.join("usr/lib/systemd/systemd").exists() {
        return Ok(base);
    }
    fs::create_dir_all(&bases)?;
    remove_stale(&bases, "base-", &base)?;
    let tmp = base.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    eprintln!("xtask: building the development host root filesystem ({SUITE}, ~1 min, cached)");
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(HOST_PACKAGES.join(","))
            .arg(SUITE)
            .arg(&tmp)
            .arg(&mirror),
    )?;
    // Slim down: caches are rebuilt on demand.
    let _ = fs::remove_dir_all(tmp.join("var/cache/apt/archives"));
    fs::rename(&tmp, &base)?;
    Ok(base)
}

fn prepare_root(base: &Path, root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    // The base lives in the cache now, so nothing else made target/devhost.
    fs::create_dir_all(devhost_dir())?;
    cmd::run(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(base)
            .arg(root),
    )?;
    fs::write(root.join("etc/hostname"), format!("{MACHINE}\n"))?;
    fs::write(root.join("etc/machine-id"), format!("{}\n", random_id()?))?;
    // debootstrap leaves no /etc/hosts (the installer writes it).
    fs::write(
        root.join("etc/hosts"),
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{MACHINE}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    )?;
    Ok(())
}

/// What VMs need beyond the package: the guest images (an
/// administrator would import them) and vhost-device-vsock, which gives QEMU a
/// hybrid-vsock socket (it is not packaged in Debian).
fn install_vm_assets(root: &Path, image: &Image) -> Result<()> {
    let vsock = tools::ensure(tools::VHOST_DEVICE_VSOCK)?;
    let bin = root.join("usr/local/bin");
    fs::create_dir_all(&bin)?;
    fs::copy(&vsock, bin.join("vhost-device-vsock"))?;
    image.install_into(&root.join("var/lib/vmctl/images"))
}

fn random_id() -> Result<String> {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")?;
    Ok(uuid.trim().replace('-', ""))
}

fn boot(root: &Path) -> Result<DevHost> {
    let log = fs::File::create(console_log())?;
    let mut c = Command::new("systemd-nspawn");
    c.arg("--directory")
        .arg(root)
        .args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=read-only",
            "--machine",
            MACHINE,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C aimed at xtask must not kill it.
        .process_group(0);
    // The host outlives this xtask. Descriptors xtask inherited (such as
    // the one `flock LOCK cargo xtask ...` holds its lock on) must not
    // live on in it, or the lock stays taken after the flock ends.
    // SAFETY: close_range is async-signal-safe and touches only this
    // child's descriptor table, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    eprintln!("xtask: $ {}", cmd::display(&c));
    let child = c.spawn().context("cannot start systemd-nspawn")?;
    let nspawn = child.id();
    fs::write(state_file(), format!("nspawn {nspawn}\n"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(leader) = child_of(nspawn) {
            // nspawn forks its PID 1 before exec'ing systemd; wait for it.
            if fs::read_to_string(format!("/proc/{leader}/comm"))
                .is_ok_and(|c| c.trim() == "systemd")
            {
                return Ok(DevHost::Container { nspawn, leader });
            }
        }
        if !process_alive(nspawn) || Instant::now() > deadline {
            bail!(
                "systemd-nspawn did not start the host; console log:\n{}",
                tail(&console_log(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_key_changes_with_mirror() {
        assert_ne!(base_key("http://a/debian"), base_key("http://b/debian"));
        assert_eq!(base_key("http://a/debian").len(), 16);
    }
}
