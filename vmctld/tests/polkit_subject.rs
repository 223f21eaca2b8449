//! What vmctld asks polkit, seen by a stand-in for polkitd on a private
//! dbus-daemon: the subject of a varlink peer is a `unix-process` with a
//! pidfd that names the peer process (and its uid), never a bare pid; a
//! D-Bus caller is its `system-bus-name`; `AllowUserInteraction` only when
//! the caller allowed it and never for the visibility check; "no" is
//! `PermissionDenied` naming the action; polkit unreachable is an internal
//! error, never a permission.
//!
//! Skipped (loudly) when dbus-daemon is not installed.

mod common;

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    os::unix::net::UnixStream,
    sync::{Arc, Mutex},
};

use vmctld::{
    authz::{Action, Authority},
    caller::Subject,
    Caller, Manager, ManagerError, Registry,
};
use zbus::zvariant::{OwnedValue, Value};

/// What the stand-in saw of one `CheckAuthorization`.
#[derive(Debug, Clone)]
struct Seen {
    kind: String,
    /// The subject's details, with a pidfd shown as `pidfd:PID` (the pid
    /// the descriptor names, from `/proc/self/fdinfo`).
    details: HashMap<String, String>,
    action: String,
    flags: u32,
}

struct FakePolkit {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: bool,
}

/// The pid a pidfd names.
fn pid_of(fd: &OwnedFd) -> String {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .unwrap()
        .trim()
        .to_string()
}

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakePolkit {
    async fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedValue>),
        action_id: String,
        _details: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        let (kind, raw) = subject;
        let details = raw
            .into_iter()
            .map(|(key, value)| {
                let shown = match &*value {
                    Value::Fd(fd) => {
                        let fd = fd.as_fd().try_clone_to_owned().unwrap();
                        format!("pidfd:{}", pid_of(&fd))
                    }
                    Value::Str(s) => s.to_string(),
                    Value::I32(n) => n.to_string(),
                    Value::U32(n) => n.to_string(),
                    Value::U64(n) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (key, shown)
            })
            .collect();
        self.seen.lock().unwrap().push(Seen {
            kind,
            details,
            action: action_id,
            flags,
        });
        (self.answer, false, HashMap::new())
    }
}

async fn polkit_on(address: &str, answer: bool) -> (zbus::Connection, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conn = zbus::connection::Builder::address(address)
        .unwrap()
        .serve_at(
            "/org/freedesktop/PolicyKit1/Authority",
            FakePolkit {
                seen: seen.clone(),
                answer,
            },
        )
        .unwrap()
        .name("org.freedesktop.PolicyKit1")
        .unwrap()
        .build()
        .await
        .unwrap();
    (conn, seen)
}

async fn manager_on(address: &str) -> (tempfile::TempDir, Manager) {
    let conn = zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::new(Registry::new(dir.path())).with_authority(Authority::on_connection(conn));
    (dir, m)
}

#[tokio::test]
async fn subjects_flags_and_answers() {
    let Some(bus) = common::start_bus() else {
        return;
    };
    let (_polkit, seen) = polkit_on(&bus.address, true).await;
    let (_dir, m) = manager_on(&bus.address).await;

    // A varlink peer: the caller made from a connected socket. The peer of
    // a socket pair is this very process.
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let uid = 4242;
    let mut peer = Caller::unix_peer(ours.as_fd(), uid, std::process::id());
    m.authorize(&peer, Action::Create).await.unwrap();
    peer.allow_interaction = true;
    m.authorize(&peer, Action::ManageOwn).await.unwrap();
    assert!(m.may_manage_any(&peer).await.unwrap());

    // A D-Bus caller.
    let bus_caller = Caller {
        uid,
        pid: 1,
        subject: Subject::BusName(":1.42".into()),
        allow_interaction: false,
    };
    m.authorize(&bus_caller, Action::Admin).await.unwrap();

    // Root never reaches polkit.
    m.authorize(&Caller::ROOT, Action::Admin).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    eprintln!("{seen:#?}");
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let pidfd = HashMap::from([
        ("pidfd".to_string(), format!("pidfd:{}", std::process::id())),
        ("uid".to_string(), uid.to_string()),
    ]);
    for (s, action, flags) in [
        (&seen[0], "org.vmctl.vm.create", 0),
        (&seen[1], "org.vmctl.vm.manage-own", 1),
        // The visibility check never prompts.
        (&seen[2], "org.vmctl.vm.manage-any", 0),
    ] {
        assert_eq!(s.kind, "unix-process");
        assert_eq!(s.details, pidfd, "no bare pid, only the pidfd and uid");
        assert_eq!((s.action.as_str(), s.flags), (action, flags));
    }
    assert_eq!(seen[3].kind, "system-bus-name");
    assert_eq!(
        seen[3].details,
        HashMap::from([("name".to_string(), ":1.42".to_string())])
    );
    assert_eq!(seen[3].action, "org.vmctl.admin");
}

/// Field 22 of `/proc/self/stat`: this process's start time in ticks.
fn own_start_time() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from 3 (state) on; the start time is field 22.
    after_comm.split(' ').nth(22 - 3).unwrap().to_string()
}

/// On kernels without `SO_PEERPIDFD` (< 6.5) the subject is pid plus
/// start time, never a bare pid: this kernel has pidfds, so the subject is
/// made here the way `Caller::unix_peer` makes it there, and what polkit
/// receives is checked.
#[tokio::test]
async fn pid_and_start_time_subject() {
    let Some(bus) = common::start_bus() else {
        return;
    };
    let (_polkit, seen) = polkit_on(&bus.address, true).await;
    let (_dir, m) = manager_on(&bus.address).await;
    let start_time: u64 = own_start_time().parse().unwrap();
    let peer = Caller {
        uid: 4242,
        pid: std::process::id(),
        subject: Subject::Process(Arc::new(vmctld::caller::ProcessSubject::PidStartTime {
            pid: std::process::id(),
            start_time,
            uid: 4242,
        })),
        allow_interaction: false,
    };
    m.authorize(&peer, Action::Create).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].kind, "unix-process");
    assert_eq!(
        seen[0].details,
        HashMap::from([
            ("pid".to_string(), std::process::id().to_string()),
            ("start-time".to_string(), own_start_time()),
            ("uid".to_string(), "4242".to_string()),
        ])
    );
}

#[tokio::test]
async fn no_is_permission_denied_and_no_polkit_is_an_error() {
    let Some(bus) = common::start_bus() else {
        return;
    };
    let (_dir, m) = manager_on(&bus.address).await;
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = Caller::unix_peer(ours.as_fd(), 4242, std::process::id());

    // Nobody owns org.freedesktop.PolicyKit1 yet.
    let e = m.authorize(&peer, Action::Create).await.unwrap_err();
    assert_eq!(e.short_name(), "InternalError", "{e}");
    assert!(e.to_string().contains("polkit"), "{e}");

    let (_polkit, _seen) = polkit_on(&bus.address, false).await;
    let e = m.authorize(&peer, Action::Create).await.unwrap_err();
    assert_eq!(
        e,
        ManagerError::PermissionDenied {
            action: "org.vmctl.vm.create".into()
        }
    );
}

/// A dbus-daemon listening at `path`.
fn bus_at(path: &std::path::Path) -> Option<common::Bus> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let _ = std::fs::remove_file(path);
    let mut child = match Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address"])
        .arg(format!("--address=unix:path={}", path.display()))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("SKIPPED: cannot run dbus-daemon: {e}");
            return None;
        }
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Some(common::Bus {
        child,
        address: line.trim().to_string(),
    })
}

#[tokio::test]
async fn a_restarted_bus_is_connected_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus");
    let Some(bus) = bus_at(&path) else {
        return;
    };
    let address = format!("unix:path={}", path.display());
    let regdir = tempfile::tempdir().unwrap();
    let m =
        Manager::new(Registry::new(regdir.path())).with_authority(Authority::at_address(&address));
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = Caller::unix_peer(ours.as_fd(), 4242, std::process::id());

    let (polkit, _) = polkit_on(&bus.address, true).await;
    m.authorize(&peer, Action::Create).await.unwrap();
    drop(polkit);
    drop(bus);

    let bus = bus_at(&path).unwrap();
    let (_polkit, seen) = polkit_on(&bus.address, true).await;
    // The old connection fails at most once, then vmctld connects anew.
    let first = m.authorize(&peer, Action::Create).await;
    if let Err(e) = &first {
        assert_eq!(e.short_name(), "InternalError", "{e}");
        m.authorize(&peer, Action::Create).await.unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}
