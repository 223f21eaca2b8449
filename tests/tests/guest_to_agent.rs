//! The guest → agent and guest → `vmctl cp` boundaries, end to end in the
//! dev host, attacked from the untrusted side (issue 7, items 2 and 4):
//!
//! - an unprivileged process in a guest, with `vsock_loopback` loaded,
//!   connects to the agent's port through CID 1 and through the guest's own
//!   CID and asks it to run a command: refused, nothing runs, the host's
//!   `vmctl exec` still works;
//! - `vmctl cp` out of a guest: a setuid/setgid/sticky file arrives without
//!   those bits; symlinks an unprivileged host user planted at the target
//!   and at the old temporary name are replaced, never written through; a
//!   file over `--max-size` is refused and leaves nothing behind;
//! - `vmctl cp` into a guest: symlinks a guest user planted are not
//!   followed either.
//!
//! One VM serves every step, because a TCG boot costs tens of seconds.

use std::path::Path;
use vmctl_e2e::{copy_into_vm, host, vm_exec, vm_spec_field, Run};
use vmctl_guest::protocol::{Control, ExecRequest, Frame};
use xtask::host::DevHost;

const VM: &str = "g2a";

/// Runs `argv` in the guest as root, through the host's `vmctl exec`.
fn guest(argv: &[&str]) -> Run {
    vm_exec(VM, argv)
}

/// Runs `argv` in the guest as the unprivileged user `nobody`.
fn guest_as_nobody(argv: &[&str]) -> Run {
    let mut full = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    full.extend_from_slice(argv);
    guest(&full)
}

/// The VM's vsock CID, from its spec.
fn vm_cid(name: &str) -> u32 {
    let cid = vm_spec_field(name, "cid");
    cid.parse()
        .unwrap_or_else(|_| panic!("bad cid in the spec of {name}: {cid}"))
}

/// Copies a file of this machine into the guest, through the dev host.
fn copy_into_guest(source: &Path, guest_path: &str) {
    copy_into_vm(VM, source, guest_path);
}

fn listing(dir: &str) -> String {
    host(&["ls", "-A", dir]).ok().stdout
}

/// The agent's journal in the guest.
fn agent_journal() -> String {
    guest(&[
        "journalctl",
        "-u",
        "vmctl-guest-agent",
        "--no-pager",
        "-o",
        "cat",
    ])
    .ok()
    .stdout
}

const REFUSAL: &str = "refused a connection from vsock CID";

/// How many connections the agent has refused so far (from its journal).
fn refusals() -> usize {
    agent_journal().matches(REFUSAL).count()
}

/// Waits (at most 10 s, journald may lag) until the agent has refused more
/// than `before` connections; returns its journal.
fn wait_for_refusal(before: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let journal = agent_journal();
        if journal.matches(REFUSAL).count() > before || std::time::Instant::now() > deadline {
            return journal;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn guest_users_cannot_use_the_agent_and_cp_cannot_be_steered() {
    host(&["vmctl", "create", VM, "--memory", "1G", "--disk", "4G"]).ok();
    host(&["systemctl", "start", &format!("vm@{VM}")]).ok();
    let result = std::panic::catch_unwind(|| {
        agent_refuses_guest_processes();
        cp_out_of_the_guest_is_safe();
        cp_into_the_guest_does_not_follow_guest_symlinks();
    });
    let _ = host(&["vmctl", "rm", VM]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn agent_refuses_guest_processes() {
    // The attacker's tools: vsock-probe and an exec request frame.
    copy_into_guest(
        Path::new(env!("CARGO_BIN_EXE_vsock-probe")),
        "/usr/local/bin/vsock-probe",
    );
    let request = Frame::Control(Control::Exec(ExecRequest {
        argv: vec!["touch".into(), "/tmp/pwned".into()],
        ..Default::default()
    }));
    let dir = std::env::temp_dir().join(format!("vmctl-e2e-g2a-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let frame_file = dir.join("exec.frame");
    std::fs::write(&frame_file, request.encode()).unwrap();
    copy_into_guest(&frame_file, "/tmp/exec.frame");
    guest(&["chmod", "0644", "/tmp/exec.frame"]).ok();
    // Root (or any software) loads it; built into a vmctl kernel, modprobe
    // may fail harmlessly.
    let _ = guest(&["modprobe", "vsock_loopback"]);

    let own_cid = vm_cid(VM);
    for cid in [1, own_cid] {
        let before = refusals();
        let probe = guest_as_nobody(&[
            "vsock-probe",
            "--cid",
            &cid.to_string(),
            "--port",
            "1024",
            "--send",
            "/tmp/exec.frame",
            "--read",
        ]);
        eprintln!("probe through CID {cid}: {probe:?}");
        // The connection itself is made (so the attack reached the agent),
        // then closed at once: no `started`, no output.
        assert!(
            probe.stderr.contains("vsock-probe: connected to"),
            "the probe did not reach the agent through CID {cid} (is vsock_loopback there?): {probe:#?}"
        );
        assert!(
            !probe.stdout.contains("started") && !probe.stdout.contains("exit"),
            "the agent answered a guest process through CID {cid}: {probe:#?}"
        );
        assert_ne!(
            guest(&["test", "-e", "/tmp/pwned"]).code,
            Some(0),
            "a guest process ran a command through the agent via CID {cid}"
        );
        // Loopback connections come from CID 1 whichever CID they were
        // made to; the point is that this one was refused, by the agent.
        let journal = wait_for_refusal(before);
        assert_eq!(
            journal.matches(REFUSAL).count(),
            before + 1,
            "the agent did not log refusing the connection made to CID {cid}:\n{journal}"
        );
        for line in journal.lines().filter(|l| l.contains(REFUSAL)) {
            eprintln!("agent: {line}");
        }
        assert!(
            !journal.contains(&format!("{REFUSAL} 2 ")),
            "the host's CID in a refusal:\n{journal}"
        );
    }

    // The host is still served.
    let who = guest(&["id", "-u"]).ok();
    assert_eq!(who.stdout.trim(), "0");
    let _ = std::fs::remove_dir_all(&dir);
}

fn cp_out_of_the_guest_is_safe() {
    // A setuid, setgid and sticky root file in the guest.
    guest(&[
        "sh",
        "-c",
        "printf 'suid\\n' > /root/suid && chmod 7755 /root/suid && stat -c %a /root/suid",
    ])
    .ok();
    // A directory an unprivileged host user owns (not sticky, so the
    // kernel's protected_symlinks does not save a careless writer), with
    // links planted at the target and at the temporary name cp used to use.
    host(&[
        "sh",
        "-c",
        "rm -rf /tmp/cpdir /root/victim && printf 'precious\\n' > /root/victim \
         && install -d -o nobody -m 0755 /tmp/cpdir",
    ])
    .ok();
    vmctl_e2e::host_as(
        Some("nobody"),
        &[
            "sh",
            "-c",
            "ln -s /root/victim /tmp/cpdir/out && ln -s /root/victim /tmp/cpdir/.out.vmctl-cp",
        ],
    )
    .ok();

    host(&["vmctl", "cp", &format!("{VM}:/root/suid"), "/tmp/cpdir/out"]).ok();
    assert_eq!(host(&["cat", "/root/victim"]).ok().stdout, "precious\n");
    let out = host(&["stat", "-c", "%F %a %U", "/tmp/cpdir/out"]).ok();
    assert_eq!(out.stdout.trim(), "regular file 755 root");
    assert_eq!(host(&["cat", "/tmp/cpdir/out"]).ok().stdout, "suid\n");
    assert_eq!(listing("/tmp/cpdir"), ".out.vmctl-cp\nout\n");

    // Over the cap: a clear error and nothing left behind.
    guest(&["sh", "-c", "head -c 2097152 /dev/zero > /root/big"]).ok();
    let before = listing("/tmp/cpdir");
    let big = host(&[
        "vmctl",
        "cp",
        "--max-size",
        "1M",
        &format!("{VM}:/root/big"),
        "/tmp/cpdir/big",
    ]);
    assert_ne!(big.code, Some(0), "{big:#?}");
    assert!(
        big.stderr
            .contains("2097152 bytes, over the limit of 1048576 bytes; --max-size raises"),
        "{big:#?}"
    );
    assert_eq!(listing("/tmp/cpdir"), before);
    host(&["rm", "-rf", "/tmp/cpdir", "/root/victim"]).ok();
}

fn cp_into_the_guest_does_not_follow_guest_symlinks() {
    guest(&[
        "sh",
        "-c",
        "rm -rf /tmp/pushdir && printf 'precious\\n' > /root/victim \
         && install -d -o nobody -m 0755 /tmp/pushdir",
    ])
    .ok();
    guest_as_nobody(&[
        "sh",
        "-c",
        "ln -s /root/victim /tmp/pushdir/motd && ln -s /root/victim /tmp/pushdir/.motd.vmctl-push",
    ])
    .ok();
    host(&["sh", "-c", "printf 'pushed\\n' > /tmp/g2a-motd"]).ok();
    host(&[
        "vmctl",
        "cp",
        "/tmp/g2a-motd",
        &format!("{VM}:/tmp/pushdir/motd"),
    ])
    .ok();
    assert_eq!(guest(&["cat", "/root/victim"]).ok().stdout, "precious\n");
    let motd = guest(&["stat", "-c", "%F", "/tmp/pushdir/motd"]).ok();
    assert_eq!(motd.stdout.trim(), "regular file");
    assert_eq!(guest(&["cat", "/tmp/pushdir/motd"]).ok().stdout, "pushed\n");
}

/// From VM A, another VM's agent (VM B's CID, port 1024) cannot be reached:
/// vhost-device-vsock gives each VM its own process with no route to a
/// sibling, and B's agent would refuse a peer that is not CID 2 anyway.
#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn another_vms_agent_is_unreachable() {
    let (a, b) = ("g2a-a", "g2a-b");
    for vm in [a, b] {
        host(&["vmctl", "create", vm, "--memory", "1G", "--disk", "4G"]).ok();
    }
    let result = std::panic::catch_unwind(|| {
        for vm in [a, b] {
            host(&["systemctl", "start", &format!("vm@{vm}")]).ok();
        }
        let (cid_a, cid_b) = (vm_cid(a), vm_cid(b));
        assert_ne!(cid_a, cid_b);
        let probe = Path::new(env!("CARGO_BIN_EXE_vsock-probe"));
        DevHost::current()
            .unwrap()
            .copy_in(probe, "/var/tmp/g2a-vsock-probe")
            .unwrap();
        host(&[
            "vmctl",
            "cp",
            "/var/tmp/g2a-vsock-probe",
            &format!("{a}:/usr/local/bin/vsock-probe"),
        ])
        .ok();
        let request = Frame::Control(Control::Exec(ExecRequest {
            argv: vec!["touch".into(), "/tmp/pwned".into()],
            ..Default::default()
        }));
        let frame_file = std::env::temp_dir().join(format!("g2a-exec-{}", std::process::id()));
        std::fs::write(&frame_file, request.encode()).unwrap();
        DevHost::current()
            .unwrap()
            .copy_in(&frame_file, "/var/tmp/g2a-exec.frame")
            .unwrap();
        let _ = std::fs::remove_file(&frame_file);
        host(&[
            "vmctl",
            "cp",
            "/var/tmp/g2a-exec.frame",
            &format!("{a}:/tmp/exec.frame"),
        ])
        .ok();

        let attempt = host(&[
            "vmctl",
            "exec",
            a,
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "vsock-probe",
            "--cid",
            &cid_b.to_string(),
            "--port",
            "1024",
            "--send",
            "/tmp/exec.frame",
            "--read",
        ]);
        eprintln!("probe from {a} to {b} (CID {cid_b}): {attempt:?}");
        assert!(
            !attempt.stdout.contains("started"),
            "VM {a} ran a command in VM {b}: {attempt:#?}"
        );
        assert_ne!(attempt.code, Some(0), "{attempt:#?}");
        let pwned = host(&["vmctl", "exec", b, "--", "test", "-e", "/tmp/pwned"]);
        assert_eq!(pwned.code, Some(1), "{pwned:#?}");
    });
    for vm in [a, b] {
        let _ = host(&["vmctl", "rm", vm]);
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
