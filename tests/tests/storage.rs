//! Storage end to end in the dev host, one real guest: a data volume made
//! by `vmctl create --data` is mounted in the guest at
//! /var/lib/vmctl-data, survives `vmctl rebuild` (which does discard what
//! the guest wrote on its root), is grown by `vmctl resize-disk` (seen by
//! the guest after a restart), is kept by `vmctl rm` and attached to a new
//! VM with `--data-volume`, and goes with `vmctl volume rm`. Bad input
//! changes nothing.
//!
//! One VM is booted three times (TCG boots cost tens of seconds each).

use vmctl_e2e::{host, host_path_exists, vm_exec, Run};

const VM: &str = "stor1";
const VM2: &str = "stor2";
const DATA: &str = "/var/lib/vmctl-data";

fn vmctl(args: &[&str]) -> Run {
    let mut argv = vec!["vmctl"];
    argv.extend_from_slice(args);
    host(&argv)
}

/// The guest's view of the data disk: size of /dev/vdb in bytes and the
/// size of the file system mounted at /var/lib/vmctl-data in 1K blocks.
fn guest_data_sizes(vm: &str) -> (u64, u64) {
    let dev = vm_exec(vm, &["blockdev", "--getsize64", "/dev/vdb"]).ok();
    let df = vm_exec(vm, &["df", "--output=size,target", DATA]).ok();
    println!(
        "{vm}: /dev/vdb {} bytes; df:\n{}",
        dev.stdout.trim(),
        df.stdout
    );
    let fs_line = df.stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(fs_line.ends_with(DATA), "mounted at {DATA}: {fs_line:?}");
    (
        dev.stdout.trim().parse().unwrap(),
        fs_line.split_whitespace().next().unwrap().parse().unwrap(),
    )
}

fn volume_list() -> String {
    let out = vmctl(&["volume", "list"]).ok().stdout;
    println!("vmctl volume list:\n{out}");
    out
}

fn cleanup() {
    for vm in [VM, VM2] {
        let _ = vmctl(&["rm", "--delete-data", vm]);
    }
    for vol in [VM, VM2] {
        let _ = vmctl(&["volume", "rm", vol]);
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn data_volumes_outlive_rebuild_resize_and_rm() {
    cleanup();

    // Bad input first: nothing may appear.
    let before = volume_list();
    for args in [
        vec!["create", VM, "--data", "1M"],
        vec!["create", VM, "--data", "10G", "--data-volume", "x"],
        vec!["create", VM, "--data-volume", "../../etc"],
        vec!["create", VM, "--data-volume", "nosuchvolume"],
    ] {
        let r = vmctl(&args);
        println!("vmctl {args:?}: {}", r.stderr.trim());
        assert_ne!(r.code, Some(0), "{args:?} succeeded");
    }
    assert_eq!(volume_list(), before);
    assert!(!host_path_exists(&format!("/var/lib/vmctl/vms/{VM}.json")));
    assert!(!host_path_exists("/var/lib/vmctl/volumes/x.raw"));

    vmctl(&["create", VM, "--data", "256M"]).ok();
    // The image it was made from is in use: listed with the VM, not removable.
    let images = vmctl(&["image", "list"]).ok().stdout;
    println!("vmctl image list:\n{images}");
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("default ") && l.contains(VM)),
        "{images}"
    );
    let r = vmctl(&["image", "rm", "default"]);
    assert_ne!(r.code, Some(0), "removed an image in use");
    assert!(r.stderr.contains(VM), "names the VM: {}", r.stderr);
    assert!(host_path_exists("/var/lib/vmctl/images/default/root.raw"));
    assert!(volume_list().contains(&format!("{VM}  data")));
    vmctl(&["start", VM]).ok();
    let (dev, fs) = guest_data_sizes(VM);
    assert_eq!(dev, 256 << 20);
    assert!(fs > 200 * 1024, "an ext4 of about 256 MiB: {fs} KiB");
    vm_exec(
        VM,
        &[
            "sh",
            "-c",
            "echo kept > /var/lib/vmctl-data/note && echo gone > /root/note && sync",
        ],
    )
    .ok();

    // Rebuild: refused while running; then a fresh root, the same data.
    let r = vmctl(&["rebuild", VM]);
    assert_ne!(r.code, Some(0), "rebuild of a running VM");
    assert!(r.stderr.contains("stop it first"), "{}", r.stderr);
    vmctl(&["stop", VM]).ok();
    let r = vmctl(&["resize-disk", VM, "data", "128M"]);
    assert_ne!(r.code, Some(0), "shrinking succeeded");
    println!("shrink: {}", r.stderr.trim());
    vmctl(&["rebuild", VM]).ok();
    vmctl(&["resize-disk", VM, "data", "512M"]).ok();
    vmctl(&["start", VM]).ok();
    assert_eq!(
        vm_exec(VM, &["cat", "/var/lib/vmctl-data/note"])
            .ok()
            .stdout,
        "kept\n"
    );
    let root_note = vm_exec(VM, &["cat", "/root/note"]);
    assert_ne!(
        root_note.code,
        Some(0),
        "the root was rebuilt: {root_note:?}"
    );
    // systemd-growfs runs after the mount: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (dev, fs) = loop {
        let (dev, fs) = guest_data_sizes(VM);
        if fs > 400 * 1024 || std::time::Instant::now() > deadline {
            break (dev, fs);
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    assert_eq!(dev, 512 << 20, "the guest sees the grown disk");
    assert!(fs > 400 * 1024, "and its file system grew: {fs} KiB");

    // rm keeps the volume; a new VM attaches it.
    vmctl(&["rm", VM]).ok();
    let list = volume_list();
    assert!(
        list.lines().any(|l| l.starts_with(&format!("{VM} "))
            && l.contains("data")
            && l.trim_end().ends_with('-')),
        "kept without a VM: {list}"
    );
    let r = vmctl(&["volume", "rm", "nosuchvolume"]);
    assert_ne!(r.code, Some(0));
    vmctl(&["create", VM2, "--data-volume", VM]).ok();
    let r = vmctl(&["volume", "rm", VM]);
    assert!(r.stderr.contains(VM2), "in use by {VM2}: {}", r.stderr);
    vmctl(&["start", VM2]).ok();
    assert_eq!(
        vm_exec(VM2, &["cat", "/var/lib/vmctl-data/note"])
            .ok()
            .stdout,
        "kept\n"
    );
    vmctl(&["rm", VM2]).ok();
    vmctl(&["volume", "rm", VM]).ok();
    assert!(!host_path_exists(&format!(
        "/var/lib/vmctl/volumes/{VM}.raw"
    )));
    assert!(!volume_list().contains(VM));
}
