//! The real vmctld binary against hostile local clients on its varlink
//! socket: oversized and endless messages, idle and half-sent connections,
//! connection floods by one user and by many, and running out of file
//! descriptors. After each, vmctld still answers.
//!
//! The cap tests connect as other users; they need root and say SKIPPED
//! otherwise.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{call, wait_until_connectable, Daemon, VMCTLD};
use serde_json::Value;

const GET_VERSION: &[u8] = b"{\"method\":\"io.vmctl.Manager.GetVersion\"}\0";

/// vmctld's message size limit (`varlink_server::MAX_MESSAGE_BYTES`).
const MAX_MESSAGE: usize = 64 * 1024;

/// Asserts that vmctld answers a fresh client.
async fn assert_answers(socket: &Path) {
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        call(socket, "io.vmctl.Manager.GetVersion", None),
    )
    .await
    .expect("vmctld did not answer within 20 s")
    .unwrap();
    assert_eq!(reply["version"], env!("CARGO_PKG_VERSION"));
}

/// Reads until EOF or one NUL-terminated reply; `None` on EOF without
/// data. Panics if neither comes within 20 s.
fn read_reply(s: &mut UnixStream) -> Option<Value> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                assert!(out.is_empty(), "closed in the middle of a reply");
                return None;
            }
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\0") {
                    out.pop();
                    return Some(serde_json::from_slice(&out).unwrap());
                }
            }
            // A reset also means closed.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("neither a reply nor a close within 20 s: {e}"),
        }
    }
}

/// Whether the server closed `s` (within 20 s) rather than answer.
fn is_closed(s: &mut UnixStream) -> bool {
    read_reply(s).is_none()
}

/// A call padded with an undeclared parameter to `size` bytes in all.
fn padded_call(size: usize) -> Vec<u8> {
    let head = b"{\"method\":\"io.vmctl.Manager.GetVersion\",\"parameters\":{\"pad\":\"";
    let tail = b"\"}}\0";
    let mut msg = head.to_vec();
    msg.resize(size - tail.len(), b'x');
    msg.extend_from_slice(tail);
    msg
}

#[tokio::test]
async fn message_over_the_limit_closes_only_that_connection() {
    let mut daemon = Daemon::start();
    // Just under the limit: read whole and answered (the pad is refused).
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.write_all(&padded_call(MAX_MESSAGE)).unwrap();
    let reply = read_reply(&mut s).expect("a message at the limit was not answered");
    assert_eq!(reply["error"], "org.varlink.service.InvalidParameter");
    assert_eq!(reply["parameters"]["parameter"], "pad");

    // One byte over: no reply, the connection is closed.
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    // The server may close before it all went out.
    let _ = s.write_all(&padded_call(MAX_MESSAGE + 2));
    assert!(is_closed(&mut s), "an oversized message was answered");

    assert!(daemon.is_running());
    assert_answers(&daemon.socket).await;
}

#[tokio::test]
async fn endless_message_is_cut_off_early() {
    let mut daemon = Daemon::start();
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0usize;
    let error = loop {
        if sent >= 200 * 1024 * 1024 {
            panic!("vmctld took 200 MB without a NUL terminator");
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
    };
    // Closed by the server, not stalled (a stall is a write timeout).
    assert!(
        matches!(
            error.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "write ended with {error} after {sent} bytes"
    );
    // What the server read (64 KiB) plus what the kernel buffers for the
    // socket (a few hundred KiB): far below 200 MB.
    eprintln!("the endless message was cut off after {sent} bytes");
    assert!(sent < 4 * 1024 * 1024, "{sent} bytes accepted");
    assert!(daemon.is_running());
    assert_answers(&daemon.socket).await;
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed() {
    let mut daemon = Daemon::start_with(&["--no-dbus", "--varlink-idle-timeout", "2"]);
    let mut silent = UnixStream::connect(&daemon.socket).unwrap();
    let mut half = UnixStream::connect(&daemon.socket).unwrap();
    half.write_all(b"{\"method\":\"io.vmctl.Manager.Ge")
        .unwrap();
    // A client that keeps completing messages is not idle, however long
    // it stays: 5 s of calls, 100 ms apart, against a 2 s timeout.
    let mut busy = UnixStream::connect(&daemon.socket).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        busy.write_all(GET_VERSION).unwrap();
        let reply = read_reply(&mut busy).expect("an active connection was closed");
        assert_eq!(reply["parameters"]["version"], env!("CARGO_PKG_VERSION"));
        thread::sleep(Duration::from_millis(100));
    }
    // By now (5 s) both idle ones must be gone.
    assert!(is_closed(&mut silent), "a silent connection was kept");
    assert!(is_closed(&mut half), "a half-sent message was kept");
    assert!(daemon.is_running());
    assert_answers(&daemon.socket).await;
}

/// Connects `n` times to `socket` as `uid` (and gid `uid`), from a thread
/// that drops to that user alone. `None` when not run as root.
fn connect_as(uid: u32, socket: &Path, n: usize) -> Option<Vec<UnixStream>> {
    let socket = socket.to_path_buf();
    thread::spawn(move || {
        // SAFETY: the raw syscalls change the credentials of this thread
        // only (glibc's wrappers would change every thread's); the thread
        // does nothing but connect and then ends.
        let dropped = unsafe {
            libc::syscall(libc::SYS_setresgid, uid, uid, uid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0
        };
        if !dropped {
            return None;
        }
        Some(
            (0..n)
                .map(|_| UnixStream::connect(&socket).unwrap())
                .collect(),
        )
    })
    .join()
    .unwrap()
}

/// Makes the daemon's socket reachable by other users (the temp dir is
/// 0700).
fn open_up(daemon: &Daemon) {
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Sends GetVersion on `s` and checks the answer.
fn assert_served(s: &mut UnixStream) {
    s.write_all(GET_VERSION).unwrap();
    let reply = read_reply(s).expect("an admitted connection was closed");
    assert_eq!(reply["parameters"]["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn per_uid_cap_refuses_the_65th_connection_and_root_is_answered() {
    let daemon = Daemon::start();
    open_up(&daemon);
    let Some(mut held) = connect_as(65534, &daemon.socket, 65) else {
        eprintln!("SKIPPED: not root, cannot connect as another user");
        return;
    };
    let mut refused = held.pop().unwrap();
    for s in &mut held {
        assert_served(s);
    }
    assert!(is_closed(&mut refused), "the 65th connection was served");
    // Root is not held up by the user's 64.
    assert_answers(&daemon.socket).await;
    // Another user is not either.
    let mut other = connect_as(65533, &daemon.socket, 1).unwrap();
    assert_served(&mut other[0]);

    // Closing one frees its place (once the server has seen the close).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut again = connect_as(65534, &daemon.socket, 1).unwrap().remove(0);
        // Refused while the server has not seen the close yet.
        if again.write_all(GET_VERSION).is_ok() && read_reply(&mut again).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "a freed place was not reused");
        thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn global_cap_keeps_roots_share() {
    let daemon = Daemon::start();
    open_up(&daemon);
    // 512 in all, 32 of them root's: users together get 480.
    let mut held = Vec::new();
    for uid in 20000..20008 {
        let Some(conns) = connect_as(uid, &daemon.socket, 60) else {
            eprintln!("SKIPPED: not root, cannot connect as another user");
            return;
        };
        held.extend(conns);
    }
    let mut refused = connect_as(20008, &daemon.socket, 1).unwrap().remove(0);
    for s in &mut held {
        assert_served(s);
    }
    assert!(
        is_closed(&mut refused),
        "a user got one of root's connections"
    );
    // Root still gets connections, several at once.
    let mut roots: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&daemon.socket).unwrap())
        .collect();
    for s in &mut roots {
        assert_served(s);
    }
    assert_answers(&daemon.socket).await;
}

/// Starts vmctld with RLIMIT_NOFILE `limit`, logging to `log`.
fn start_with_nofile(dir: &Path, limit: u64, log: &Path) -> (common::KillOnDrop, PathBuf) {
    let socket = dir.join("io.vmctl.Manager");
    let mut cmd = Command::new(VMCTLD);
    cmd.arg("--no-dbus")
        .arg("--varlink-address")
        .arg(&socket)
        .arg("--state-directory")
        .arg(dir.join("state"))
        .arg("--runtime-directory")
        .arg(dir.join("run"))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing
    // else of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = common::KillOnDrop(cmd.spawn().unwrap());
    wait_until_connectable(&socket, &mut child.0);
    (child, socket)
}

#[tokio::test]
async fn running_out_of_descriptors_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmctld.log");
    let (mut daemon, socket) = start_with_nofile(dir.path(), 40, &log);
    // Root has no per-uid cap and 60 < 512: only the descriptor limit
    // stops vmctld from accepting them all.
    let mut held: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    // Wait until vmctld has hit the limit and said so.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("accept failed")
    {
        assert!(
            Instant::now() < deadline,
            "vmctld never ran out of descriptors; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.0.try_wait().unwrap().is_none(), "vmctld exited");
    // The accepted ones are served meanwhile.
    assert_served(&mut held[0]);
    drop(held);
    // Once the clients are gone, vmctld recovers and answers.
    assert_answers(&socket).await;
    assert!(daemon.0.try_wait().unwrap().is_none(), "vmctld exited");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Too many open files"),
        "the log does not name EMFILE:\n{text}"
    );
    eprintln!("{text}");
}
