//! Guest access for owners, end to end in the dev host (real polkitd,
//! real users, a real guest under QEMU): `vmctl exec`, `shell`, `cp` and
//! `console` work for the VM's owner through descriptors vmctld hands over
//! (`OpenGuest`), while the VM's own sockets stay root-only.
//!
//! One VM (alice's) is booted once and every claim is checked on it:
//!
//! - stopped, exec and console fail with an error naming `vmctl start`;
//! - alice: exec passes stdin, stdout, stderr and the exit code; a shell
//!   on a pseudo-terminal gets the terminal's size, later size changes and
//!   Ctrl-C (as a signal in the guest); cp both ways; the console; the
//!   D-Bus twin `OpenGuest` returns a descriptor (`h`);
//! - bob (group vmctl, not the owner) gets `NoSuchVM`, word for word as
//!   for a VM that does not exist, on varlink and D-Bus; mallory (not in
//!   group vmctl) gets nothing either;
//! - bob cannot connect to the VM's vsock or console socket himself: the
//!   kernel says permission denied (root's connect, the control, works).

use std::time::Instant;

use vmctl_e2e::{ensure_test_users, host, host_as, Run};

const VM: &str = "owned";
const MISSING: &str = "nosuchvm";

/// Runs the shell `script` as `user` in the dev host.
fn as_user(user: &str, script: &str) -> Run {
    host_as(Some(user), &["sh", "-c", script])
}

/// `vmctl` as `user` with `args`.
fn vmctl_as(user: &str, args: &[&str]) -> Run {
    let mut argv = vec!["vmctl"];
    argv.extend_from_slice(args);
    host_as(Some(user), &argv)
}

/// The error text of a failed run with the VM's name replaced, so that the
/// answers for two names can be compared word for word.
fn failure(run: &Run, name: &str) -> (Option<i32>, String) {
    assert_ne!(run.code, Some(0), "expected a failure: {run:#?}");
    (run.code, run.stderr.replace(name, "NAME"))
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn owner_reaches_her_guest_and_nobody_else_does() {
    ensure_test_users();
    host(&["sh", "-c", &format!("vmctl rm {VM} >/dev/null 2>&1; true")]);
    vmctl_as(
        "alice",
        &[
            "create", VM, "--cpus", "1", "--memory", "1G", "--disk", "4G",
        ],
    )
    .ok();

    stopped_vm_says_how_to_start_it();
    vmctl_as("alice", &["start", VM]).ok();

    owner_execs();
    owner_shell_keeps_size_changes_and_signals();
    owner_copies_both_ways();
    owner_console();
    owner_over_dbus();
    root_keeps_working();
    others_see_nothing();
    sockets_stay_root_only();

    vmctl_as("alice", &["rm", VM]).ok();
}

fn stopped_vm_says_how_to_start_it() {
    for args in [vec!["exec", VM, "--", "true"], vec!["console", VM]] {
        let run = vmctl_as("alice", &args);
        println!("alice: vmctl {}: {}", args.join(" "), run.stderr.trim());
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(
            run.stderr.contains(&format!("VM {VM} is not running"))
                && run.stderr.contains(&format!("vmctl start {VM}")),
            "{run:#?}"
        );
    }
}

fn owner_execs() {
    let run = as_user(
        "alice",
        &format!(
            "printf 'from-stdin' | vmctl exec {VM} -- sh -c 'cat; echo; echo to-stderr >&2; id -u; exit 3'"
        ),
    );
    println!("alice: exec: {run:?}");
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert_eq!(run.stdout, "from-stdin\n0\n", "{run:#?}");
    assert_eq!(run.stderr, "to-stderr\n", "{run:#?}");
}

/// `vmctl shell` in a pseudo-terminal made by `script`: the shell in the
/// guest starts with the local size (20x70), sees a later resize of the
/// local terminal (33x101, which makes the kernel send vmctl SIGWINCH), and
/// Ctrl-C interrupts a command in the guest instead of ending vmctl.
fn owner_shell_keeps_size_changes_and_signals() {
    let inner =
        format!("stty rows 20 cols 70; (sleep 14; stty -F /dev/tty rows 33 cols 101) & exec vmctl shell {VM}");
    let feed = "sleep 3; printf 'stty size\\n'; printf 'sleep 100\\n'; sleep 6; printf '\\003'; \
                sleep 2; printf 'echo status-$?\\n'; sleep 6; printf 'stty size; exit 7\\n'; sleep 8";
    let script = format!("({feed}) | script -qefc \"sh -c '{inner}'\" /dev/null");
    let started = Instant::now();
    let run = as_user("alice", &script);
    println!(
        "alice: shell through script ({:?}): code {:?}\n{}",
        started.elapsed(),
        run.code,
        run.stdout
    );
    assert_eq!(run.code, Some(7), "{run:#?}");
    let first = run.stdout.find("20 70").expect("the initial size 20 70");
    let interrupted = run
        .stdout
        .find("status-130")
        .expect("sleep ended by SIGINT");
    let resized = run.stdout.find("33 101").expect("the new size 33 101");
    assert!(first < interrupted && interrupted < resized, "{run:#?}");
}

fn owner_copies_both_ways() {
    let run = as_user(
        "alice",
        &format!(
            "cd /home/alice && printf 'owner-data\\n' > in.txt && chmod 640 in.txt && \
             vmctl cp in.txt {VM}:/root/in.txt && \
             vmctl exec {VM} -- stat -c %a /root/in.txt && \
             vmctl cp {VM}:/root/in.txt out.txt && cat out.txt && stat -c %U out.txt"
        ),
    );
    println!("alice: cp in and out: {run:?}");
    assert_eq!(run.stdout, "640\nowner-data\nalice\n", "{run:#?}");
}

fn owner_console() {
    let run = as_user(
        "alice",
        &format!("printf '\\n' | timeout 8 vmctl console {VM}; true"),
    );
    println!("alice: console: {:?}", run.stdout.trim());
    assert!(run.stdout.contains("login:"), "{run:#?}");
}

fn busctl_open_guest(user: &str, name: &str) -> Run {
    host_as(
        Some(user),
        &[
            "busctl",
            "call",
            "org.vmctl.Manager1",
            "/org/vmctl/Manager1",
            "org.vmctl.Manager1",
            "OpenGuest",
            "ss",
            name,
            "agent",
        ],
    )
}

fn owner_over_dbus() {
    let run = busctl_open_guest("alice", VM);
    println!("alice: busctl OpenGuest: {run:?}");
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.starts_with("h "), "{run:#?}");
}

fn root_keeps_working() {
    let run = host(&["vmctl", "exec", VM, "--", "echo", "root-too"]).ok();
    assert_eq!(run.stdout, "root-too\n");
}

fn others_see_nothing() {
    for args in [
        vec!["exec", "NAME", "--", "true"],
        vec!["console", "NAME"],
        vec!["cp", "NAME:/etc/hostname", "/tmp/stolen"],
        vec!["cp", "/etc/hostname", "NAME:/root/planted"],
    ] {
        let with = |name: &str| -> Vec<String> {
            args.iter()
                .map(|a| a.replace("NAME", name))
                .collect::<Vec<_>>()
        };
        let theirs = with(VM);
        let missing = with(MISSING);
        let theirs: Vec<&str> = theirs.iter().map(String::as_str).collect();
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        let bob = vmctl_as("bob", &theirs);
        let bob_missing = vmctl_as("bob", &missing);
        println!("bob: vmctl {}: {}", theirs.join(" "), bob.stderr.trim());
        assert!(bob.stderr.contains("NoSuchVM"), "{bob:#?}");
        assert_eq!(failure(&bob, VM), failure(&bob_missing, MISSING));
        let mallory = vmctl_as("mallory", &theirs);
        println!(
            "mallory: vmctl {}: {}",
            theirs.join(" "),
            mallory.stderr.trim()
        );
        assert_eq!(mallory.code, Some(1), "{mallory:#?}");
        assert!(
            mallory.stderr.contains("NoSuchVM") || mallory.stderr.contains("PermissionDenied"),
            "{mallory:#?}"
        );
    }
    let bob = busctl_open_guest("bob", VM);
    let bob_missing = busctl_open_guest("bob", MISSING);
    println!("bob: busctl OpenGuest: {}", bob.stderr.trim());
    assert!(bob.stderr.contains("no VM named"), "{bob:#?}");
    assert_eq!(failure(&bob, VM), failure(&bob_missing, MISSING));
}

/// A Unix-socket connect to each of `paths` as `user` (perl, which the dev
/// host has); prints `PATH: connected` or `PATH: <OS error>`.
fn connect_as(user: Option<&str>, paths: &[String]) -> Run {
    let mut argv = vec![
        "perl",
        "-MIO::Socket::UNIX",
        "-e",
        "for (@ARGV) { print IO::Socket::UNIX->new(Peer => $_) ? \"$_: connected\\n\" : \"$_: $!\\n\" }",
    ];
    argv.extend(paths.iter().map(String::as_str));
    host_as(user, &argv)
}

fn sockets_stay_root_only() {
    let paths = [
        format!("/run/vmctl/vm/{VM}/vsock"),
        format!("/run/vmctl/vm/{VM}/console"),
    ];
    let root = connect_as(None, &paths).ok();
    println!("root: {}", root.stdout.trim());
    assert_eq!(root.stdout.matches(": connected").count(), 2, "{root:#?}");
    for user in ["bob", "alice"] {
        let run = connect_as(Some(user), &paths).ok();
        println!("{user}: {}", run.stdout.trim());
        assert_eq!(
            run.stdout.matches(": Permission denied").count(),
            2,
            "{run:#?}"
        );
    }
}
