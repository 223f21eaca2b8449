//! The boundary between local users and vmctld, attacked from the
//! unprivileged side in the dev host (real systemd, real system bus, the
//! installed vmctld.socket/vmctld.service):
//!
//! - a forged `JobRemoved`, emitted by `nobody` while `vmctl rm` waits for
//!   the stop job of a running VM, deletes nothing before the real job ends;
//! - floods of idle connections, half messages and a 200 MB message without
//!   a terminator, by unprivileged users, leave vmctld up (same PID), under
//!   its `MemoryMax=`, and answering root's `vmctl list` throughout.

use std::{
    thread,
    time::{Duration, Instant},
};

use vmctl_e2e::{host, host_as, host_path_exists, unit_property, Run};
use xtask::host::DevHost;

const SOCKET: &str = "/run/vmctl/io.vmctl.Manager";

/// The id of the queued stop job of `unit`, waiting up to `within`.
fn stop_job(unit: &str, within: Duration) -> Option<u32> {
    let deadline = Instant::now() + within;
    loop {
        let jobs = host(&["systemctl", "list-jobs", "--no-legend", "--no-pager"]).stdout;
        let found = jobs.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [id, u, "stop", ..] if u == unit => id.parse().ok(),
                _ => None,
            }
        });
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `busctl monitor` blocks (one per message, each starting with
/// `Type=`) in `text` that contain
/// every one of `needles`.
fn monitored<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.split("Type=")
        .filter(|block| needles.iter().all(|n| block.contains(n)))
        .collect()
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn forged_job_removed_does_not_end_rm() {
    const VM: &str = "forged";
    let unit = format!("vm@{VM}.service");
    let spec = format!("/var/lib/vmctl/vms/{VM}.json");
    let disk = format!("/var/lib/vmctl/disks/{VM}");
    host(&["vmctl", "rm", VM]);
    host(&["vmctl", "create", VM, "--cpus", "1", "--memory", "1G"]).ok();
    host(&["systemctl", "start", &unit]).ok();
    // Make the guest take a while to power off, so that the stop job is
    // still running when the forged signal comes and when we look.
    host(&[
        "vmctl",
        "exec",
        VM,
        "--",
        "systemd-run",
        "--unit=slow-stop",
        "--remain-after-exit",
        "-p",
        "ExecStop=/bin/sleep 25",
        "/bin/true",
    ])
    .ok();

    // Watch every JobRemoved on the bus, to see that the forged one was
    // really delivered.
    host(&["rm", "-f", "/tmp/jobremoved.mon", "/tmp/jobremoved.pid"]);
    let monitor = thread::spawn(|| {
        host(&[
            "sh",
            "-c",
            "echo $$ > /tmp/jobremoved.pid; exec timeout 120 stdbuf -oL busctl monitor --system \
             --match \"type='signal',interface='org.freedesktop.systemd1.Manager',member='JobRemoved'\" \
             > /tmp/jobremoved.mon 2>&1",
        ])
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !host(&["cat", "/tmp/jobremoved.mon"])
        .stdout
        .contains("Monitoring")
    {
        assert!(Instant::now() < deadline, "busctl monitor did not start");
        thread::sleep(Duration::from_millis(100));
    }

    let rm = thread::spawn(|| host(&["vmctl", "rm", VM]));
    let job = stop_job(&unit, Duration::from_secs(30)).expect("no stop job for the VM");
    let job_path = format!("/org/freedesktop/systemd1/job/{job}");
    let job_id = job.to_string();
    let forged = |destination: Option<&str>| -> Run {
        let mut argv = vec!["busctl", "--system"];
        let dest;
        if let Some(d) = destination {
            dest = format!("--destination={d}");
            argv.push(&dest);
        }
        argv.extend([
            "emit",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "JobRemoved",
            "uoss",
            &job_id,
            &job_path,
            &unit,
            "done",
        ]);
        host_as(Some("nobody"), &argv)
    };
    // To every listener, as systemd sends it; and straight to vmctld.
    let broadcast = forged(None);
    let unicast = forged(Some("org.vmctl.Manager1"));
    eprintln!("forged broadcast: {broadcast:?}\nforged unicast: {unicast:?}");
    assert_eq!(broadcast.code, Some(0), "busctl emit as nobody failed");

    thread::sleep(Duration::from_secs(2));
    let rm_finished_early = rm.is_finished();
    let files_there = host_path_exists(&spec) && host_path_exists(&disk);
    // Read last: the real job was still running when the files were seen.
    let state = unit_property(&unit, "ActiveState");
    assert!(!rm_finished_early, "vmctl rm returned on a forged signal");
    assert!(files_there, "the VM's files went on a forged signal");
    assert_eq!(
        state, "deactivating",
        "the stop finished before the check: the test proves nothing"
    );

    let rm = rm.join().unwrap();
    assert_eq!(rm.code, Some(0), "{rm:#?}");
    assert!(
        !host_path_exists(&spec) && !host_path_exists(&disk),
        "rm left the files"
    );
    assert_eq!(unit_property(&unit, "ActiveState"), "inactive");

    // Stop the monitor (timeout passes the signal on to busctl).
    host(&["sh", "-c", "kill $(cat /tmp/jobremoved.pid)"]).ok();
    monitor.join().unwrap();
    let mon = host(&["cat", "/tmp/jobremoved.mon"]).ok().stdout;
    let owner = host(&[
        "busctl",
        "--system",
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "GetNameOwner",
        "s",
        "org.freedesktop.systemd1",
    ])
    .ok()
    .stdout;
    let owner = owner.trim().trim_start_matches("s ").trim_matches('"');
    let about_job = monitored(&mon, &[&job_path, &unit]);
    let real: Vec<_> = about_job
        .iter()
        .filter(|b| b.contains(&format!("Sender={owner} ")))
        .collect();
    let fake: Vec<_> = about_job
        .iter()
        .filter(|b| !b.contains(&format!("Sender={owner} ")))
        .collect();
    eprintln!(
        "systemd is {owner}; JobRemoved for job {job}: {} real, {} forged",
        real.len(),
        fake.len()
    );
    assert_eq!(real.len(), 1, "systemd's own JobRemoved not seen:\n{mon}");
    assert!(
        !fake.is_empty(),
        "the system bus did not carry the forged JobRemoved (refused by policy?):\n{mon}"
    );
    // The unicast copy, when the bus policy let it through, reached
    // vmctld's connection but no stream of its (the match rule names
    // systemd's unique name); either way it ended nothing early (above).
    eprintln!(
        "unicast forged signal delivered: {}",
        unicast.code == Some(0)
    );
}

/// vmctld's main PID.
fn vmctld_pid() -> String {
    unit_property("vmctld.service", "MainPID")
}

/// vmctld's resident memory in bytes, from /proc.
fn vmctld_rss(pid: &str) -> u64 {
    let status = host(&["cat", &format!("/proc/{pid}/status")]).ok().stdout;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in\n{status}"));
    kib * 1024
}

/// `sent B ended E` from `varlink-flood endless`.
fn endless_result(run: &Run) -> (u64, String) {
    let out = run.stdout.trim();
    let rest = out
        .strip_prefix("sent ")
        .unwrap_or_else(|| panic!("odd output: {run:#?}"));
    let (sent, ended) = rest.split_once(" ended ").unwrap();
    (sent.parse().unwrap(), ended.to_string())
}

/// `connected C open O` from `varlink-flood idle|half`.
fn flood_result(run: &Run) -> (usize, usize) {
    let fields: Vec<&str> = run.stdout.split_whitespace().collect();
    match fields[..] {
        ["connected", c, "open", o] => (c.parse().unwrap(), o.parse().unwrap()),
        _ => panic!("odd output: {run:#?}"),
    }
}

/// Puts the attacker's tool (this crate's `varlink-flood`) into the dev
/// host and makes sure vmctld is up before it is used.
fn install_varlink_flood() {
    DevHost::current()
        .unwrap()
        .copy_in(
            std::path::Path::new(env!("CARGO_BIN_EXE_varlink-flood")),
            "/usr/local/bin/varlink-flood",
        )
        .unwrap();
    host(&["vmctl", "list"]).ok();
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn unprivileged_floods_leave_vmctld_serving_root() {
    install_varlink_flood();
    let pid = vmctld_pid();
    assert_ne!(pid, "0", "vmctld is not running");
    let memory_max: u64 = unit_property("vmctld.service", "MemoryMax")
        .parse()
        .expect("vmctld.service has a MemoryMax=");
    assert_eq!(memory_max, 256 << 20);
    assert_eq!(unit_property("vmctld.service", "LimitNOFILE"), "4096");
    let restarts = unit_property("vmctld.service", "NRestarts");

    // One 200 MB message without a terminator: cut off early.
    let endless = host_as(
        Some("nobody"),
        &["varlink-flood", "endless", SOCKET, "209715200"],
    )
    .ok();
    let (sent, ended) = endless_result(&endless);
    eprintln!("200 MB message: {sent} bytes taken, then {ended}");
    assert!(
        sent < 8 << 20,
        "vmctld took {sent} bytes of an endless message"
    );
    assert!(
        ended.contains("pipe") || ended.contains("reset"),
        "the endless message ended with {ended:?}, not a close"
    );

    // At once: 1,000 idle connections (nobody), a burst of 500 half
    // messages (daemon) and another endless message (www-data).
    let idle = thread::spawn(|| {
        host_as(
            Some("nobody"),
            &["varlink-flood", "idle", SOCKET, "1000", "20"],
        )
    });
    let half = thread::spawn(|| {
        host_as(
            Some("daemon"),
            &["varlink-flood", "half", SOCKET, "500", "40"],
        )
    });
    let endless = thread::spawn(|| {
        host_as(
            Some("www-data"),
            &["varlink-flood", "endless", SOCKET, "209715200"],
        )
    });
    let mut max_rss = 0;
    for round in 0..6 {
        thread::sleep(Duration::from_secs(3));
        let list = host(&["timeout", "10", "vmctl", "list"]);
        assert_eq!(
            list.code,
            Some(0),
            "root's vmctl list in round {round}: {list:#?}"
        );
        max_rss = max_rss.max(vmctld_rss(&pid));
    }
    let idle = flood_result(&idle.join().unwrap().ok());
    let half = flood_result(&half.join().unwrap().ok());
    let (sent, ended) = endless_result(&endless.join().unwrap().ok());
    eprintln!(
        "idle: {idle:?} (connected, still open after 20 s); half: {half:?} (after 40 s); \
         endless: {sent} bytes then {ended}; vmctld RSS at most {max_rss} bytes"
    );
    // The cap held: at most 64 of nobody's 1,000 were kept, and some were.
    assert_eq!(idle.0, 1000);
    assert!((1..=64).contains(&idle.1), "{idle:?}");
    // The idle timeout (30 s) closed every half message.
    assert_eq!(half.1, 0, "half messages kept past the idle timeout");
    assert!(
        sent < 8 << 20,
        "vmctld took {sent} bytes of an endless message"
    );

    // Still the same process, never restarted, within its memory limit.
    assert_eq!(vmctld_pid(), pid, "vmctld was restarted");
    assert_eq!(unit_property("vmctld.service", "NRestarts"), restarts);
    assert!(
        max_rss < memory_max,
        "RSS {max_rss} over MemoryMax {memory_max}"
    );
    host(&["timeout", "10", "vmctl", "list"]).ok();
    let journal = host(&[
        "journalctl",
        "-u",
        "vmctld.service",
        "--no-pager",
        "-o",
        "cat",
    ])
    .stdout;
    // Refusals are logged at most every 10 s, whoever's they are.
    assert!(
        journal.contains("varlink: refused a connection from uid "),
        "no refusal logged:\n{journal}"
    );
}

/// `(N, rest)` from `varlink-flood message`'s `replied N ended REST`
/// (how it ended, which may be several words, then the first reply).
fn message_result(run: &Run) -> (usize, String) {
    let out = run.stdout.trim();
    let rest = out
        .strip_prefix("replied ")
        .unwrap_or_else(|| panic!("odd output: {run:#?}"));
    let (n, rest) = rest.split_once(" ended ").unwrap();
    (n.parse().unwrap(), rest.to_string())
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn malformed_messages_get_an_error_or_a_close() {
    install_varlink_flood();
    let pid = vmctld_pid();
    let send = |kind: &str| {
        let run = host_as(Some("nobody"), &["varlink-flood", "message", SOCKET, kind]).ok();
        let result = message_result(&run);
        eprintln!("{kind}: {result:?}");
        // Root is served after every one of them.
        host(&["timeout", "10", "vmctl", "list"]).ok();
        result
    };
    // Not JSON, or JSON that is not a call: closed without a reply.
    for kind in ["garbage", "notcall"] {
        let (n, rest) = send(kind);
        assert_eq!(n, 0, "{kind} got a reply");
        assert!(rest.starts_with("closed"), "{kind}: {rest}");
    }
    // A well-formed call of an unknown method: the varlink error.
    let (_, rest) = send("badmethod");
    assert!(rest.starts_with("closed"), "{rest}");
    assert!(
        rest.contains("org.varlink.service.MethodNotFound"),
        "{rest}"
    );
    // Exactly 64 KiB is answered; one byte more is closed (or reset, as
    // bytes were left unread) without a reply.
    let (_, rest) = send("atlimit");
    assert!(rest.contains("\"version\""), "{rest}");
    let (n, rest) = send("overlimit");
    assert_eq!(n, 0, "a message over the limit was answered");
    assert!(
        rest.starts_with("closed") || rest.contains("reset"),
        "{rest}"
    );

    // 1,000 idle connections from eight users at once (125 each): the
    // per-user cap (64) and the total cap (512, with a share only root may
    // use) both hold, and root is answered throughout.
    let users = [
        "nobody", "daemon", "bin", "sys", "www-data", "backup", "list", "irc",
    ];
    let floods: Vec<_> = users
        .iter()
        .map(|user| {
            let user = *user;
            thread::spawn(move || {
                host_as(Some(user), &["varlink-flood", "idle", SOCKET, "125", "15"])
            })
        })
        .collect();
    for round in 0..3 {
        thread::sleep(Duration::from_secs(4));
        let list = host(&["timeout", "10", "vmctl", "list"]);
        assert_eq!(
            list.code,
            Some(0),
            "root's vmctl list in round {round}: {list:#?}"
        );
    }
    let mut kept = 0;
    for (user, flood) in users.iter().zip(floods) {
        let (connected, open) = flood_result(&flood.join().unwrap().ok());
        eprintln!("{user}: {connected} connected, {open} kept");
        assert_eq!(connected, 125);
        assert!(open <= 64, "{user} kept {open}");
        kept += open;
    }
    eprintln!("kept in all: {kept}");
    assert!(kept <= 512, "{kept} idle connections kept");
    assert_eq!(vmctld_pid(), pid, "vmctld was restarted");
}
