//! The real vmctld binary serving varlink: calls, malformed input, socket
//! activation.

mod common;

use std::{
    io::{Read, Write},
    os::{
        fd::AsRawFd,
        unix::net::{UnixListener, UnixStream},
        unix::process::CommandExt,
    },
    process::{Command, Stdio},
    time::Duration,
};

use common::{call, wait_until_connectable, Daemon, VMCTLD};
use serde_json::{json, Value};

#[tokio::test]
async fn list_is_empty_and_version_matches() {
    let daemon = Daemon::start();
    let reply = call(&daemon.socket, "io.vmctl.Manager.List", None)
        .await
        .unwrap();
    assert_eq!(reply, json!({ "vms": [] }));

    let reply = call(
        &daemon.socket,
        "io.vmctl.Manager.GetVersion",
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(reply["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(reply["interface_version"], 1);
}

#[tokio::test]
async fn lists_registered_vms() {
    let daemon = Daemon::start();
    let vms = daemon.dir.path().join("state/vms");
    std::fs::create_dir_all(&vms).unwrap();
    let vm = json!({"name":"blog","id":"0123456789abcdef0123456789abcdef","owner_uid":0,"vcpus":2,
               "memory_bytes":1073741824u64,"disk_bytes":10737418240u64,"image":"default",
               "vmm":"qemu","cid":3});
    std::fs::write(vms.join("blog.json"), vm.to_string()).unwrap();
    // The test runs as root (uid 0 owns the VM) or as a user (sees none).
    let reply = call(&daemon.socket, "io.vmctl.Manager.List", None)
        .await
        .unwrap();
    let shown = json!({"name":"blog","state":"unknown","owner_uid":0,"owner":"root","vcpus":2,
                       "memory_bytes":1073741824u64,"ipv4":null,"ipv6":null,"mac":null});
    let expected = if current_uid() == 0 {
        json!([shown])
    } else {
        json!([])
    };
    assert_eq!(reply["vms"], expected);
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file we just created is our effective uid.
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}

#[tokio::test]
async fn introspection_serves_the_idl_file() {
    let daemon = Daemon::start();
    let info = call(&daemon.socket, "org.varlink.service.GetInfo", None)
        .await
        .unwrap();
    assert_eq!(info["product"], "vmctld");
    assert_eq!(
        info["interfaces"],
        json!([
            "org.varlink.service",
            "io.vmctl.Manager",
            "io.vmctl.Gateway"
        ])
    );

    let desc = call(
        &daemon.socket,
        "org.varlink.service.GetInterfaceDescription",
        Some(json!({ "interface": "io.vmctl.Manager" })),
    )
    .await
    .unwrap();
    let idl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/io.vmctl.Manager.varlink"
    ))
    .unwrap();
    assert_eq!(desc["description"].as_str().unwrap(), idl);

    let desc = call(
        &daemon.socket,
        "org.varlink.service.GetInterfaceDescription",
        Some(json!({ "interface": "io.vmctl.Gateway" })),
    )
    .await
    .unwrap();
    let idl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/io.vmctl.Gateway.varlink"
    ))
    .unwrap();
    assert_eq!(desc["description"].as_str().unwrap(), idl);
}

/// Sends raw bytes and returns whatever comes back until EOF or timeout.
fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\0") {
                    break;
                }
            }
            Err(e) => panic!("no reply and no close within 5 s: {e}"),
        }
    }
    out
}

#[tokio::test]
async fn malformed_input_gets_an_error_or_close_and_daemon_survives() {
    let mut daemon = Daemon::start();

    // Unknown method: a proper varlink error.
    let out = raw_exchange(
        &daemon.socket,
        b"{\"method\":\"io.vmctl.Manager.Explode\"}\0",
    );
    let reply: Value = serde_json::from_slice(out.strip_suffix(b"\0").unwrap()).unwrap();
    assert_eq!(reply["error"], "org.varlink.service.MethodNotFound");
    assert_eq!(reply["parameters"]["method"], "io.vmctl.Manager.Explode");

    // Unknown interface.
    let out = raw_exchange(&daemon.socket, b"{\"method\":\"com.example.X.Y\"}\0");
    let reply: Value = serde_json::from_slice(out.strip_suffix(b"\0").unwrap()).unwrap();
    assert_eq!(reply["error"], "org.varlink.service.InterfaceNotFound");

    // Undeclared parameters.
    let out = raw_exchange(
        &daemon.socket,
        b"{\"method\":\"io.vmctl.Manager.List\",\"parameters\":{\"bogus\":[1,2,3]}}\0",
    );
    let reply: Value = serde_json::from_slice(out.strip_suffix(b"\0").unwrap()).unwrap();
    assert_eq!(reply["error"], "org.varlink.service.InvalidParameter");
    assert_eq!(reply["parameters"]["parameter"], "bogus");

    // Invalid JSON, garbage bytes, an object without a method, wrong
    // parameter types: each connection is answered or closed.
    for bad in [
        &b"{\"method\": \0"[..],
        &b"\xff\xfe\x00garbage\x01\x02\0"[..],
        &b"{\"foo\":1}\0"[..],
        &b"[1,2,3]\0"[..],
        &b"{\"method\":\"org.varlink.service.GetInterfaceDescription\",\"parameters\":{\"interface\":7}}\0"[..],
    ] {
        let out = raw_exchange(&daemon.socket, bad);
        if !out.is_empty() {
            let reply: Value = serde_json::from_slice(out.strip_suffix(b"\0").unwrap()).unwrap();
            assert!(reply["error"].is_string(), "unexpected reply {reply}");
        }
        assert!(daemon.is_running(), "vmctld died on {bad:?}");
    }

    // The daemon still answers the next client.
    let reply = call(&daemon.socket, "io.vmctl.Manager.List", None)
        .await
        .unwrap();
    assert_eq!(reply, json!({ "vms": [] }));
}

#[tokio::test]
async fn serves_clients_concurrently() {
    let daemon = Daemon::start();
    // A client that connects and sends half a message, then stalls.
    let mut stalled = UnixStream::connect(&daemon.socket).unwrap();
    stalled.write_all(b"{\"method\":\"io.vmctl.Ma").unwrap();
    // Others are still served.
    let calls = (0..8).map(|_| call(&daemon.socket, "io.vmctl.Manager.GetVersion", None));
    for reply in futures_join_all(calls).await {
        assert_eq!(reply.unwrap()["version"], env!("CARGO_PKG_VERSION"));
    }
    drop(stalled);
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    zlink::futures_util::future::join_all(futures).await
}

#[tokio::test]
async fn socket_activation() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let listen_fd = listener.as_raw_fd();
    let mut cmd = Command::new(VMCTLD);
    cmd.arg("--no-dbus")
        // Must not be used when a socket is passed.
        .arg("--varlink-address")
        .arg(dir.path().join("unused.sock"))
        .arg("--state-directory")
        .arg(dir.path().join("state"))
        .arg("--runtime-directory")
        .arg(dir.path().join("run"))
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec. It only
    // calls dup2/fcntl/getpid (async-signal-safe) and setenv; setenv may
    // allocate, which glibc supports in the child of fork() (it resets its
    // malloc locks), and Command is given no environment changes so that
    // exec uses `environ` as modified here.
    unsafe {
        cmd.pre_exec(move || {
            if listen_fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listen_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut pid_buf = [0u8; 24];
            let pid = format_u32(libc::getpid() as u32, &mut pid_buf);
            if libc::setenv(c"LISTEN_PID".as_ptr(), pid.as_ptr(), 1) < 0
                || libc::setenv(c"LISTEN_FDS".as_ptr(), c"1".as_ptr(), 1) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut daemon = KillOnDrop(child);
    drop(listener);
    wait_until_connectable(&socket, &mut daemon.0);
    let reply = call(&socket, "io.vmctl.Manager.List", None).await.unwrap();
    assert_eq!(reply, json!({ "vms": [] }));
    assert!(
        !dir.path().join("unused.sock").exists(),
        "vmctld bound its own socket despite socket activation"
    );
}

/// Writes `n` as a NUL-terminated decimal string into `buf` without
/// allocating; returns it as a C string.
fn format_u32(mut n: u32, buf: &mut [u8; 24]) -> &std::ffi::CStr {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
    std::ffi::CStr::from_bytes_until_nul(&buf[..]).unwrap()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_exits_cleanly_and_removes_socket() {
    let mut daemon = Daemon::start();
    // SAFETY: plain FFI call with a pid we own.
    let rc = unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!daemon.socket.exists());
}

#[test]
fn help_and_version() {
    let out = Command::new(VMCTLD).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("vmctld {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(VMCTLD).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--varlink-address"));
    assert!(help.contains("--no-dbus"));
    assert!(
        !help.contains("generate-docs"),
        "generate-docs must be hidden"
    );
}

#[test]
fn generate_docs_writes_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VMCTLD)
        .args(["generate-docs", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(dir.path().join("man/vmctld.8")).unwrap();
    assert!(page.contains(".TH vmctld 8"));
}

#[test]
fn notifies_ready_only_when_listening() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket = dir.path().join("io.vmctl.Manager");
    let child = Command::new(VMCTLD)
        .arg("--no-dbus")
        .arg("--varlink-address")
        .arg(&socket)
        .arg("--state-directory")
        .arg(dir.path().join("state"))
        .arg("--runtime-directory")
        .arg(dir.path().join("run"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "warn")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let mut buf = [0u8; 1024];
    // Status messages may come first (the store's reconciliation at start).
    let message = loop {
        let n = notify.recv(&mut buf).expect("no READY=1 within 20 s");
        let message = String::from_utf8_lossy(&buf[..n]).to_string();
        if message.lines().any(|l| l == "READY=1") {
            break message;
        }
    };
    assert!(
        message.lines().any(|l| l == "STATUS=Serving varlink"),
        "{message}"
    );
    // READY=1 came after the socket was bound.
    UnixStream::connect(&socket).expect("READY=1 sent before listening");
}
