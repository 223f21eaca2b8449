//! VMs as systemd units, end to end in the dev host: a real guest boots
//! under QEMU (TCG here), `systemctl start vm@NAME` returns when it is up,
//! `vmctl exec` runs commands in it over vsock, stop powers it off, and
//! `vmctl rm` leaves nothing behind.
//!
//! One VM is booted and taken through its whole life in one test, because a
//! TCG boot costs tens of seconds; each step says what it checks.

use std::time::{Duration, Instant};
use vmctl_e2e::{host, unit_property, Run};

fn active_state(unit: &str) -> String {
    unit_property(unit, "ActiveState")
}

fn wait_for_state(unit: &str, wanted: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let state = active_state(unit);
        if state == wanted || Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// PIDs of processes in the unit's cgroup whose command line contains `needle`.
fn pids_in_unit(unit: &str, needle: &str) -> Vec<String> {
    let cgroup = unit_property(unit, "ControlGroup");
    if cgroup.is_empty() {
        return Vec::new();
    }
    // The host may mount cgroup v2 at /sys/fs/cgroup or, in hybrid mode, at
    // /sys/fs/cgroup/unified.
    let script = format!(
        "for p in $(cat /sys/fs/cgroup{cgroup}/cgroup.procs /sys/fs/cgroup/unified{cgroup}/cgroup.procs 2>/dev/null); do \
         tr '\\0' ' ' < /proc/$p/cmdline | grep -q -- '{needle}' && echo $p; done; true"
    );
    host(&["sh", "-c", &script])
        .ok()
        .stdout
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for path in [
        format!("/var/lib/vmctl/vms/{name}.json"),
        format!("/var/lib/vmctl/disks/{name}"),
        format!("/run/vmctl/vm/{name}"),
        format!("/etc/systemd/system/vm@{name}.service.d"),
        format!("/etc/systemd/system.control/vm@{name}.service.d"),
        format!("/run/systemd/system.control/vm@{name}.service.d"),
    ] {
        if host(&["test", "-e", &path]).code == Some(0) {
            found.push(path);
        }
    }
    let procs = host(&[
        "sh",
        "-c",
        &format!("pgrep -af '[v]m/{name}/|[v]mctl-launch {name}$' || true"),
    ]);
    if !procs.stdout.trim().is_empty() {
        found.push(format!("processes: {}", procs.stdout.trim()));
    }
    found
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn a_vm_lives_and_dies_as_a_unit() {
    let unit = "vm@blog.service";
    host(&[
        "vmctl", "create", "blog", "--cpus", "2", "--memory", "1G", "--disk", "4G",
    ])
    .ok();

    // The unit's limits are derived from the VM's size and visible to systemd.
    let memory_max: u64 = unit_property(unit, "MemoryMax")
        .parse()
        .expect("MemoryMax is a number");
    assert!(
        (1 << 30..=(1 << 30) + (512 << 20)).contains(&memory_max),
        "MemoryMax {memory_max} does not match a 1 GiB VM"
    );
    assert_eq!(unit_property(unit, "CPUQuotaPerSecUSec"), "2s");

    // Start returns only once the guest is up.
    host(&["systemctl", "start", unit]).ok();
    assert_eq!(active_state(unit), "active");
    let host_kernel = host(&["uname", "-r"]).ok().stdout;
    let guest_kernel = host(&["vmctl", "exec", "blog", "--", "uname", "-r"])
        .ok()
        .stdout;
    assert!(!guest_kernel.trim().is_empty());
    assert_ne!(
        guest_kernel, host_kernel,
        "exec ran on the host, not in the guest"
    );

    // Exit codes, stdin and stderr cross the vsock intact.
    let seven = host(&["vmctl", "exec", "blog", "--", "sh", "-c", "exit 7"]);
    assert_eq!(seven.code, Some(7), "{seven:#?}");
    let cat = host(&["sh", "-c", "echo hi | vmctl exec blog -- cat"]).ok();
    assert_eq!(cat.stdout, "hi\n");
    let split = host(&[
        "vmctl",
        "exec",
        "blog",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ])
    .ok();
    assert_eq!(
        (split.stdout.as_str(), split.stderr.as_str()),
        ("out\n", "err\n")
    );

    // Files go in and out with their mode.
    host(&[
        "sh",
        "-c",
        "printf 'payload\\n' > /tmp/cp-in && chmod 750 /tmp/cp-in",
    ])
    .ok();
    host(&["vmctl", "cp", "/tmp/cp-in", "blog:/root/cp-in"]).ok();
    let inside = host(&[
        "vmctl",
        "exec",
        "blog",
        "--",
        "stat",
        "-c",
        "%a %s",
        "/root/cp-in",
    ])
    .ok();
    assert_eq!(inside.stdout.trim(), "750 8");
    host(&[
        "vmctl",
        "exec",
        "blog",
        "--",
        "sh",
        "-c",
        "echo back >> /root/cp-in",
    ])
    .ok();
    host(&["vmctl", "cp", "blog:/root/cp-in", "/tmp/cp-out"]).ok();
    let out = host(&["stat", "-c", "%a", "/tmp/cp-out"]).ok();
    assert_eq!(out.stdout.trim(), "750");
    assert_eq!(host(&["cat", "/tmp/cp-out"]).ok().stdout, "payload\nback\n");
    let missing = host(&["vmctl", "cp", "blog:/no/such/file", "/tmp/cp-missing"]);
    assert_ne!(missing.code, Some(0));
    assert!(missing.stderr.contains("/no/such/file"), "{missing:#?}");
    assert_ne!(host(&["test", "-e", "/tmp/cp-missing"]).code, Some(0));

    // The guest is named after the VM.
    let hostname = host(&["vmctl", "exec", "blog", "--", "hostname"]).ok();
    assert_eq!(hostname.stdout.trim(), "blog");

    // The serial console is reachable: Enter brings the guest's login prompt.
    let console = host(&[
        "sh",
        "-c",
        "printf '\\n' | timeout 8 vmctl console blog; true",
    ]);
    assert!(console.stdout.contains("login:"), "{console:#?}");

    // machined knows it.
    let machines = host(&["machinectl", "list", "--no-legend"]).ok();
    assert!(
        machines.stdout.contains("blog") && machines.stdout.contains("vm"),
        "{machines:#?}"
    );

    // Stop is a clean ACPI power-off, not a kill. READY comes before
    // logind watches the power button: let the guest finish booting first
    // (boot.rs checks that the button itself, not the fallback, stops it).
    host(&[
        "vmctl",
        "exec",
        "blog",
        "--",
        "systemctl",
        "is-system-running",
        "--wait",
    ]);
    host(&["systemctl", "stop", unit]).ok();
    assert_eq!(active_state(unit), "inactive");
    assert_eq!(unit_property(unit, "Result"), "success");
    let journal = host(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]).ok();
    assert!(
        journal.stdout.contains("reboot: Power down"),
        "no guest power-off in the journal:\n{}",
        journal.stdout
    );

    // A VMM that dies fails the unit; with Restart=on-failure it comes back.
    host(&["mkdir", "-p", "/run/systemd/system/vm@blog.service.d"]).ok();
    host(&[
        "sh",
        "-c",
        "printf '[Service]\\nRestart=on-failure\\nRestartSec=1\\n' > /run/systemd/system/vm@blog.service.d/restart.conf",
    ])
    .ok();
    host(&["systemctl", "daemon-reload"]).ok();
    host(&["systemctl", "start", unit]).ok();
    let qemu = pids_in_unit(unit, "qemu-system");
    assert_eq!(qemu.len(), 1, "expected one QEMU in {unit}: {qemu:?}");
    host(&["kill", "-KILL", &qemu[0]]).ok();
    let restarts = || unit_property(unit, "NRestarts").parse::<u32>().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while restarts() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        restarts(),
        1,
        "the unit was not restarted after the VMM died"
    );
    assert_eq!(
        wait_for_state(unit, "active", Duration::from_secs(300)),
        "active"
    );
    host(&["vmctl", "exec", "blog", "--", "true"]).ok();
    host(&["rm", "-r", "/run/systemd/system/vm@blog.service.d"]).ok();
    host(&["systemctl", "daemon-reload"]).ok();

    // Without Restart=, a dead VMM leaves the unit failed.
    let qemu = pids_in_unit(unit, "qemu-system");
    host(&["kill", "-KILL", &qemu[0]]).ok();
    assert_eq!(
        wait_for_state(unit, "failed", Duration::from_secs(30)),
        "failed"
    );

    // rm removes everything it created.
    host(&["vmctl", "rm", "blog"]).ok();
    assert_eq!(leftovers("blog"), Vec::<String>::new());
    assert_eq!(host(&["vmctl", "list", "--json"]).ok().stdout.trim(), "[]");
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn bad_input_is_refused_and_creates_nothing() {
    let long = "a".repeat(300);
    for name in ["../x", "a b", long.as_str(), "blög", "-rf", "vm@x", ""] {
        let run: Run = host(&["vmctl", "create", "--", name]);
        assert_ne!(run.code, Some(0), "{name:?} was accepted: {run:#?}");
        assert!(!run.stderr.contains("panicked"), "{run:#?}");
        assert!(
            run.stderr.contains("name"),
            "the error for {name:?} does not say what is wrong: {}",
            run.stderr
        );
    }
    let no_image = host(&["vmctl", "create", "img", "--image", "nosuchimage"]);
    assert_ne!(no_image.code, Some(0));
    assert!(no_image.stderr.contains("nosuchimage"), "{no_image:#?}");
    let huge = host(&["vmctl", "create", "huge", "--memory", "100T"]);
    assert_ne!(huge.code, Some(0));
    assert!(huge.stderr.contains("memory"), "{huge:#?}");
    let nonsense = host(&["vmctl", "create", "size", "--memory", "lots"]);
    assert_ne!(nonsense.code, Some(0));
    assert!(nonsense.stderr.contains("lots"), "{nonsense:#?}");
    assert_eq!(host(&["vmctl", "list", "--json"]).ok().stdout.trim(), "[]");
    for name in ["img", "huge", "size"] {
        assert_eq!(leftovers(name), Vec::<String>::new());
    }

    // A unit for a VM that does not exist fails with a clear message.
    let start = host(&["systemctl", "start", "vm@ghost.service"]);
    assert_ne!(start.code, Some(0));
    let journal = host(&[
        "journalctl",
        "-u",
        "vm@ghost.service",
        "--no-pager",
        "-o",
        "cat",
    ])
    .ok();
    assert!(journal.stdout.contains("ghost"), "{journal:#?}");
    host(&["systemctl", "reset-failed", "vm@ghost.service"]);
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn a_kernel_that_does_not_boot_fails_the_unit() {
    // An image whose kernel is garbage: the VMM refuses it and the unit
    // fails promptly instead of hanging until TimeoutStartSec=.
    host(&[
        "sh",
        "-c",
        "mkdir -p /var/lib/vmctl/images/broken && \
         cp --sparse=always /var/lib/vmctl/images/default/root.raw /var/lib/vmctl/images/broken/ && \
         head -c 4096 /dev/urandom > /var/lib/vmctl/images/broken/vmlinuz",
    ])
    .ok();
    host(&["vmctl", "create", "broken", "--image", "broken"]).ok();
    let started = Instant::now();
    let start = host(&["systemctl", "start", "vm@broken.service"]);
    assert_ne!(start.code, Some(0), "{start:#?}");
    assert_eq!(active_state("vm@broken.service"), "failed");
    eprintln!(
        "broken kernel failed the unit after {:?}",
        started.elapsed()
    );
    host(&["vmctl", "rm", "broken"]).ok();
    host(&["rm", "-r", "/var/lib/vmctl/images/broken"]).ok();
    assert_eq!(leftovers("broken"), Vec::<String>::new());
}
