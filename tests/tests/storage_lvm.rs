//! LVM thin for real, inside a VM (issue 12): the dev host has no
//! device-mapper, but Debian's kernel has `dm-thin-pool` as a module. So a
//! VM of the `debian-lvm` image (`mkosi/lvm/`: the default image plus lvm2
//! and thin-provisioning-tools, Debian's kernel and initrd) is made with a
//! data disk (`vmctl create --data 2G`, `/dev/vdb` in the guest), the
//! storage backend's check binary (`vmctld/examples/lvm-thin-check.rs`,
//! vmctld's own `storage::lvm` code) goes in with `vmctl cp` and runs there
//! with `vmctl exec` against a real VG and thin pools on that disk: pool,
//! image volume, 5 root snapshots, activation with and without the skip
//! flag, writes kept apart, a data volume grown and not shrunk, a missing
//! VG, a missing pool, a full pool, removal of all; `lvs --reportformat
//! json` matches what is expected after every step.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmctl_e2e::{copy_into_vm, host, vm_exec};
use xtask::host::DevHost;
use xtask::image::LVM;
use xtask::paths::{target_dir, workspace_root};

const VM: &str = "lvmcheck";
const CHECK: &str = "lvm-thin-check";

/// Stops and removes its VM (and data volume) when dropped, so a failing
/// test leaves nothing behind for the next one.
struct Vm(&'static str);

impl Drop for Vm {
    fn drop(&mut self) {
        host(&["systemctl", "stop", &format!("vm@{}.service", self.0)]);
        host(&["vmctl", "rm", "--delete-data", self.0]);
    }
}

/// The check binary, built (debug) and stripped: the debug build is
/// ~95 MB, mostly debug info the guest does not need.
fn check_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "vmctld", "--example", CHECK])
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "cargo build --example {CHECK}: {status}");
    let stripped = target_dir().join("e2e").join(CHECK);
    fs::create_dir_all(stripped.parent().unwrap()).unwrap();
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(target_dir().join("debug/examples").join(CHECK))
        .status()
        .expect("cannot run strip");
    assert!(status.success(), "strip: {status}");
    stripped
}

/// Puts the `debian-lvm` image (built and cached by `xtask::image`, as
/// `cargo xtask image --lvm` does) into the host's image directory, 0755
/// and 0644 like installed images (the VMM's user reads them).
fn install_image(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dev = DevHost::current().expect("the development host must be up (cargo xtask test)");
    let to = dev.path_of(&format!("/var/lib/vmctl/images/{LVM}"));
    if to.exists() {
        fs::remove_dir_all(&to).unwrap();
    }
    fs::create_dir_all(&to).unwrap();
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        let status = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(entry.path())
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success(), "cp {}: {status}", entry.path().display());
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn the_lvm_thin_backend_runs_against_a_real_pool_in_a_vm() {
    let image = xtask::image::ensure_lvm().expect("cannot build the debian-lvm image");
    install_image(&image);
    let binary = check_binary();
    host(&["vmctl", "rm", "--delete-data", VM]);
    host(&[
        "vmctl", "create", VM, "--image", LVM, "--cpus", "2", "--memory", "1G", "--data", "2G",
    ])
    .ok();
    let _guard = Vm(VM);
    host(&["vmctl", "start", VM]).ok();

    let release = vm_exec(VM, &["uname", "-r"]).ok().stdout;
    assert!(
        release.contains("cloud-amd64"),
        "Debian's kernel: {release}"
    );
    // The data disk is a plain virtio disk, /dev/vdb, mounted by the
    // guest's fstab credential: unmounted, it is the PV.
    let size = vm_exec(VM, &["blockdev", "--getsize64", "/dev/vdb"])
        .ok()
        .stdout;
    assert_eq!(size.trim(), (2u64 << 30).to_string(), "/dev/vdb");
    vm_exec(VM, &["umount", "/var/lib/vmctl-data"]).ok();

    let guest_path = format!("/usr/local/bin/{CHECK}");
    copy_into_vm(VM, &binary, &guest_path);
    vm_exec(VM, &["chmod", "0755", &guest_path]).ok();
    let run = vm_exec(VM, &[&guest_path, "/dev/vdb"]);
    println!("{}\n{}", run.stdout, run.stderr);
    let run = run.ok();
    let last = run.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("lvm-thin-check: passed ("),
        "the last line: {last:?}"
    );
    for step in [
        "missing VG: refused: the volume group \"vmctlnovg\" of Pool=vmctlnovg/thin does not exist",
        "no thin pool: refused: the thin pool vmctlcheck/thin does not exist",
        "root of vm5: snapshot, active",
        "a write to vm1's root is in vm1 only",
        "vm5 and vm6 activated (-K)",
        "data volume grown to 256 MiB",
        "data volume shrunk: refused",
        "image bigger than the free space: refused",
        "volume in a full pool: refused: the thin pool vmctlcheck/tiny is full (data",
        "every volume removed",
    ] {
        assert!(run.stdout.contains(step), "no {step:?} in the output");
    }
    // The module came from the image's own kernel.
    vm_exec(VM, &["test", "-d", "/sys/module/dm_thin_pool"]).ok();
}
