//! The Debian packages in the dev host, where `cargo xtask host up`
//! installed them with `apt-get install ./*.deb`: the maintainer scripts
//! make the API work at once, put the NSS module into nsswitch.conf exactly
//! once (also on reinstallation), upgrade vmctld without touching a running
//! VM, and removal and purge leave what they promise.
//!
//! This changes the shared host's installation, in one test because every
//! step starts from the previous one's state. A guard puts the original
//! packages and the guest image back at the end, pass or fail, so the other
//! end-to-end files work whichever order they run in.

use std::path::PathBuf;
use vmctl_e2e::{host, host_path_exists, unit_property, Run};
use xtask::deb;
use xtask::host::DevHost;
use xtask::install::Package;
use xtask::paths::{target_dir, Profile};

const VM: &str = "pkgtest";

/// A file the vmctl package ships in /etc (a conffile).
const SSH_CONFFILE: &str = "/etc/ssh/ssh_config.d/50-vmctl.conf";

fn dev_host() -> DevHost {
    DevHost::current().expect("the development host must be up (cargo xtask test)")
}

/// The packages `host up` installed (the debug build, workspace version).
fn installed_debs() -> Vec<PathBuf> {
    deb_paths(&deb::Options::new(Profile::Dev), env!("CARGO_PKG_VERSION"))
}

fn deb_paths(opts: &deb::Options, version: &str) -> Vec<PathBuf> {
    [Package::Vmctl, Package::LibnssVmctl]
        .map(|p| {
            opts.out_dir
                .join(format!("{}_{version}_amd64.deb", p.name()))
        })
        .into()
}

/// `apt-get install` of `debs` in the host, with `extra` options.
fn apt_install(debs: &[PathBuf], extra: &[&str]) -> Run {
    let argv = dev_host()
        .apt_install_argv(debs, extra)
        .expect("cannot copy the packages into the host");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    host(&argv)
}

fn apt(args: &[&str]) -> Run {
    let mut argv = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-q",
    ];
    argv.extend_from_slice(args);
    host(&argv)
}

/// How often `vmctl` is listed on the hosts: line of nsswitch.conf.
fn nss_entries() -> usize {
    let text = host(&["cat", "/etc/nsswitch.conf"]).ok().stdout;
    text.lines()
        .filter(|l| l.starts_with("hosts:"))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| *w == "vmctl")
        .count()
}

/// dpkg's status abbreviation and version, `ii 0.1.0` for example; empty
/// when dpkg does not know the package (any more).
fn package_status(name: &str) -> String {
    let run = host(&["dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", name]);
    run.stdout.trim().to_owned()
}

/// Puts the host back as `host up` left it: the workspace version of the
/// packages, the guest image, no test VM.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = host(&["vmctl", "rm", VM]);
        let _ = host(&["systemctl", "stop", &format!("vm@{VM}.service")]);
        let run = apt_install(&installed_debs(), &["--allow-downgrades"]);
        if run.code != Some(0) {
            eprintln!("package test: could not reinstall the packages: {run:#?}");
        }
        if let Err(e) = dev_host().install_vm_assets() {
            eprintln!("package test: could not put the guest image back: {e:#}");
        }
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn packages_install_upgrade_remove_and_purge() {
    let restore = Restore;

    // Installed by `host up`: the socket is enabled and listening, so the
    // CLI works without any further step.
    assert_eq!(unit_property("vmctld.socket", "UnitFileState"), "enabled");
    host(&["vmctl", "list"]).ok();
    assert_eq!(nss_entries(), 1, "vmctl is on the hosts: line once");
    assert_eq!(
        host(&["getent", "hosts", "nothing.vm"]).code,
        Some(2),
        "an unknown name is not found"
    );
    // The module on that line is really consulted (a record only it reads,
    // written the way vmctld writes them).
    host(&[
        "sh",
        "-c",
        "mkdir -p /run/vmctl/hosts/name && printf '10.83.0.99\\n' > /run/vmctl/hosts/name/.tmp-probe \
         && mv /run/vmctl/hosts/name/.tmp-probe /run/vmctl/hosts/name/probe",
    ])
    .ok();
    let found = host(&["getent", "hosts", "probe.vm"]).ok().stdout;
    host(&["rm", "/run/vmctl/hosts/name/probe"]).ok();
    assert!(found.starts_with("10.83.0.99"), "{found:?}");

    // Reinstalling runs the scripts again; the entry stays single.
    apt_install(&installed_debs(), &["--reinstall"]).ok();
    assert_eq!(nss_entries(), 1, "a reinstallation added vmctl twice");
    host(&["vmctl", "list"]).ok();

    // An upgrade while a VM runs restarts vmctld, not the VM.
    host(&[
        "vmctl", "create", VM, "--cpus", "1", "--memory", "1G", "--disk", "4G",
    ])
    .ok();
    let unit = format!("vm@{VM}.service");
    host(&["systemctl", "start", &unit]).ok();
    let vm_pid = unit_property(&unit, "MainPID");
    let daemon_pid = unit_property("vmctld.service", "MainPID");
    assert_ne!(vm_pid, "0");
    assert_ne!(daemon_pid, "0", "vmctl list left vmctld running");
    let newer = format!("{}+test1", env!("CARGO_PKG_VERSION"));
    let upgrade = deb::Options {
        version: Some(newer.clone()),
        out_dir: target_dir().join("debian/upgrade-test"),
        ..deb::Options::new(Profile::Dev)
    };
    deb::build(&upgrade).expect("cannot build the upgrade packages");
    apt_install(&deb_paths(&upgrade, &newer), &[]).ok();
    assert_eq!(package_status("vmctl"), format!("ii {newer}"));
    assert_eq!(package_status("libnss-vmctl"), format!("ii {newer}"));
    assert_eq!(unit_property(&unit, "ActiveState"), "active");
    assert_eq!(
        unit_property(&unit, "MainPID"),
        vm_pid,
        "the upgrade restarted the VM"
    );
    let new_daemon_pid = unit_property("vmctld.service", "MainPID");
    assert_ne!(new_daemon_pid, "0", "the upgrade left vmctld stopped");
    assert_ne!(
        new_daemon_pid, daemon_pid,
        "the upgrade did not restart vmctld"
    );
    assert_eq!(nss_entries(), 1, "the upgrade touched nsswitch.conf");
    let list = host(&["vmctl", "list"]).ok().stdout;
    assert!(list.contains(VM), "the new vmctld lost the VM: {list}");

    // Removal stops the API and the VM, takes vmctl out of nsswitch.conf,
    // and keeps the VM's spec and disk.
    apt(&["remove", "vmctl", "libnss-vmctl"]).ok();
    assert_eq!(package_status("vmctl"), format!("rc {newer}"));
    for unit in ["vmctld.socket", "vmctld.service", unit.as_str()] {
        assert_eq!(unit_property(unit, "ActiveState"), "inactive", "{unit}");
    }
    assert!(!host_path_exists("/usr/lib/systemd/system/vmctld.socket"));
    assert!(!host_path_exists("/run/vmctl/io.vmctl.Manager"));
    assert_eq!(host(&["pgrep", "-x", "vmctld"]).code, Some(1));
    assert_eq!(nss_entries(), 0, "removal left vmctl in nsswitch.conf");
    assert!(host_path_exists(&format!("/var/lib/vmctl/vms/{VM}.json")));
    assert!(host_path_exists(&format!("/var/lib/vmctl/disks/{VM}")));
    assert!(host_path_exists(SSH_CONFFILE), "removal deleted a conffile");

    // Purging removes the state too, and the socket's enablement.
    apt(&["purge", "vmctl", "libnss-vmctl"]).ok();
    for package in ["vmctl", "libnss-vmctl"] {
        let status = package_status(package);
        assert!(
            status.is_empty() || status.starts_with("un") || status.starts_with("pn"),
            "{package} is still known to dpkg after the purge: {status}"
        );
    }
    assert!(!host_path_exists("/var/lib/vmctl"));
    assert!(!host_path_exists(SSH_CONFFILE), "purge left a conffile");
    assert!(!host_path_exists(&format!(
        "/etc/systemd/system.control/vm@{VM}.service.d"
    )));
    assert!(!host_path_exists(
        "/etc/systemd/system/sockets.target.wants/vmctld.socket"
    ));
    assert!(!host_path_exists(
        "/etc/nsswitch.conf.nss.libnss-vmctl-will-install"
    ));

    // A fresh installation after the purge works at once again.
    drop(restore);
    host(&["vmctl", "list"]).ok();
    assert_eq!(nss_entries(), 1);
    assert!(host_path_exists("/var/lib/vmctl/images/default/root.raw"));
}
