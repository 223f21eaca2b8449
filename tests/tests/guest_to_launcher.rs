//! The guest → launcher boundary, end to end in the dev host, attacked from
//! the untrusted side (issue 7, items 1 and 3): host vsock ports 1025 (the
//! agent's hello) and 1026 (guest systemd's notifications) are open to any
//! process in the guest, here an unprivileged one.
//!
//! - A forged hello whose kernel release carries
//!   `\nMAINPID=<host pid>\nSTATUS=x`: rejected and logged as such; the
//!   unit's `MainPID` and `StatusText` do not change, and the host process
//!   named survives `systemctl stop vm@NAME`.
//! - A guest process holding port 1025 open without sending, from early in
//!   the boot, while the guest reboots: the rebooted agent's hello still
//!   arrives and `vmctl exec` works again.
//!
//! One VM serves both, because a TCG boot costs tens of seconds.

use std::path::Path;
use std::time::{Duration, Instant};

use vmctl_e2e::{copy_into_vm, host, unit_property, vm_exec, Run};
use vmctl_guest::protocol::{Control, Frame, Hello};

const VM: &str = "g2l";
const UNIT: &str = "vm@g2l.service";
/// The sacrificial host process the forged hello names.
const VICTIM: &str = "g2l-victim.service";

/// Runs `argv` in the guest as root, through the host's `vmctl exec`.
fn guest(argv: &[&str]) -> Run {
    vm_exec(VM, argv)
}

/// The dev host's clock, for `journalctl --since`.
fn host_now() -> String {
    format!("@{}", host(&["date", "+%s"]).ok().stdout.trim())
}

/// The launcher's journal since `since`.
fn launcher_journal(since: &str) -> String {
    host(&[
        "journalctl",
        "-u",
        UNIT,
        "--since",
        since,
        "--no-pager",
        "-o",
        "cat",
    ])
    .ok()
    .stdout
}

/// The launcher's journal once it contains `needle` (or at `within`).
fn wait_for_journal(since: &str, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let journal = launcher_journal(since);
        if journal.contains(needle) || Instant::now() > deadline {
            return journal;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Shows the journal lines about hellos (the evidence, in the test output).
fn show_hello_lines(journal: &str) {
    for line in journal.lines().filter(|l| l.contains("hello")) {
        eprintln!("launcher journal: {line}");
    }
}

/// Copies a file of this machine into the guest, through the dev host
/// (its `/var/tmp`: the host's `/tmp` is a tmpfs that hides files copied
/// into its root directory).
fn copy_into_guest(source: &Path, guest_path: &str) {
    copy_into_vm(VM, source, guest_path);
}

/// Writes `bytes` to a fresh file of this machine and copies it into the
/// guest, readable by everyone.
fn put_in_guest(name: &str, bytes: &[u8], guest_path: &str) {
    let dir = std::env::temp_dir().join(format!("vmctl-e2e-{VM}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    copy_into_guest(&file, guest_path);
    guest(&["chmod", "0644", guest_path]).ok();
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn guest_processes_cannot_steer_the_launcher() {
    host(&["vmctl", "create", VM, "--memory", "1G", "--disk", "4G"]).ok();
    host(&["systemctl", "start", UNIT]).ok();
    host(&["systemd-run", "--unit", VICTIM, "sleep", "1000"]).ok();
    let result = std::panic::catch_unwind(|| {
        copy_into_guest(
            Path::new(env!("CARGO_BIN_EXE_vsock-probe")),
            "/usr/local/bin/vsock-probe",
        );
        a_forged_hello_is_rejected_and_steers_nothing();
        a_held_hello_port_does_not_delay_the_reboot_hello();
        the_named_host_process_survives_the_stop();
    });
    let _ = host(&["vmctl", "rm", VM]);
    let _ = host(&["systemctl", "stop", VICTIM]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn a_forged_hello_is_rejected_and_steers_nothing() {
    let victim_pid = unit_property(VICTIM, "MainPID");
    assert_ne!(victim_pid, "0", "the sacrificial process is not running");
    let main_pid = unit_property(UNIT, "MainPID");
    assert_eq!(unit_property(UNIT, "StatusText"), "Running");

    let forged = Frame::Control(Control::Hello(Hello {
        version: "0.1.0".into(),
        kernel_release: format!("6.1\nMAINPID={victim_pid}\nSTATUS=x"),
        boot_id: "0123456789abcdef0123456789abcdef".into(),
        uptime_secs: 1,
    }));
    put_in_guest(
        "forged-hello.frame",
        &forged.encode(),
        "/tmp/forged-hello.frame",
    );

    let since = host_now();
    let probe = guest(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "vsock-probe",
        "--cid",
        "2",
        "--port",
        "1025",
        "--send",
        "/tmp/forged-hello.frame",
    ]);
    assert_eq!(
        probe.code,
        Some(0),
        "the unprivileged guest process could not even send: {probe:#?}"
    );
    let journal = wait_for_journal(
        &since,
        "rejected a hello on the hello port: invalid kernel_release",
        Duration::from_secs(30),
    );
    assert!(
        journal.contains("rejected a hello on the hello port: invalid kernel_release"),
        "no rejection in the launcher's journal:\n{journal}"
    );
    // The guest text is in the log only escaped, never as a line of its own.
    for line in journal.lines() {
        assert!(
            !line.starts_with("MAINPID=") && !line.starts_with("STATUS=x"),
            "a guest-made line in the journal: {line:?}\n{journal}"
        );
    }
    show_hello_lines(&journal);
    assert_eq!(unit_property(UNIT, "MainPID"), main_pid, "MainPID moved");
    assert_eq!(unit_property(UNIT, "StatusText"), "Running");
    assert_eq!(unit_property(UNIT, "ActiveState"), "active");
}

/// A unit in the guest that connects to host port 1025 as `nobody` and
/// holds the connection without sending, started before the agent on every
/// boot (`ExecStartPost` gives it time to connect first).
const HOLDER_UNIT: &str = "\
[Unit]
Description=Holds host vsock port 1025 open without sending (vmctl e2e)
Before=vmctl-guest-agent.service

[Service]
User=nobody
ExecStart=/usr/local/bin/vsock-probe --cid 2 --port 1025 --hold 900
ExecStartPost=/bin/sleep 2

[Install]
WantedBy=multi-user.target
";

fn a_held_hello_port_does_not_delay_the_reboot_hello() {
    put_in_guest(
        "hello-holder.service",
        HOLDER_UNIT.as_bytes(),
        "/etc/systemd/system/hello-holder.service",
    );
    guest(&["systemctl", "daemon-reload"]).ok();
    guest(&["systemctl", "enable", "--now", "hello-holder.service"]).ok();
    guest(&["systemctl", "is-active", "hello-holder.service"]).ok();
    // Let this boot's holder be cut off first, so that the rejection
    // looked for below is the new boot's.
    std::thread::sleep(Duration::from_secs(7));

    let since = host_now();
    // The connection ends with the guest; its result does not matter.
    let _ = guest(&["systemctl", "reboot"]);
    // Before the fix the launcher read one hello connection at a time: the
    // holder would delay the agent's hello by its whole 900 s hold. This
    // bound only says "not held up"; a TCG reboot takes well under it.
    let journal = wait_for_journal(&since, "guest rebooted:", Duration::from_secs(240));
    assert!(
        journal.contains("guest rebooted:"),
        "no hello from the rebooted guest within 240 s:\n{journal}"
    );
    assert_eq!(unit_property(UNIT, "ActiveState"), "active");
    assert_eq!(unit_property(UNIT, "StatusText"), "Running");
    // The holder really held the port in the new boot (it would have
    // failed had its connect been refused), and exec works again.
    let holder = guest(&["systemctl", "is-active", "hello-holder.service"]);
    assert_eq!(holder.stdout.trim(), "active", "{holder:#?}");
    let journal = wait_for_journal(
        &since,
        "rejected a hello on the hello port: no complete hello within 5s",
        Duration::from_secs(30),
    );
    assert!(
        journal.contains("rejected a hello on the hello port: no complete hello within 5s"),
        "the holder's connection was never cut off:\n{journal}"
    );
    show_hello_lines(&journal);
    guest(&["true"]).ok();
}

fn the_named_host_process_survives_the_stop() {
    let victim_pid = unit_property(VICTIM, "MainPID");
    host(&["systemctl", "stop", UNIT]).ok();
    assert_eq!(unit_property(UNIT, "ActiveState"), "inactive");
    assert_eq!(
        unit_property(VICTIM, "ActiveState"),
        "active",
        "stopping the VM killed the host process the guest named"
    );
    assert_eq!(unit_property(VICTIM, "MainPID"), victim_pid);
    host(&["kill", "-0", &victim_pid]).ok();
}
