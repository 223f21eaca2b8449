//! The real agent binary on a Unix socket, driven by the real client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmctl_guest::client::{connect_hybrid_vsock, AgentClient, ClientError, ExitStatus};
use vmctl_guest::protocol::{Control, ExecRequest, PtySize};

struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vmctl-guest-agent"))
        .arg("--listen-unix")
        .arg(&socket)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Agent {
        child,
        socket,
        _dir: dir,
    }
}

fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn run(socket: &Path, req: ExecRequest, stdin: &[u8]) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let client = AgentClient::over_unix(socket).await.unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = client
        .exec(req, stdin, &mut out, &mut err, None)
        .await
        .unwrap();
    (status, out, err)
}

#[tokio::test]
async fn exec_reports_output_exit_codes_and_signals() {
    let agent = start_agent();
    let local = Command::new("uname").arg("-r").output().unwrap().stdout;
    let (status, out, _) = run(&agent.socket, argv(&["uname", "-r"]), b"").await;
    assert_eq!((status, out), (ExitStatus::Code(0), local));

    let (status, _, _) = run(&agent.socket, argv(&["sh", "-c", "exit 7"]), b"").await;
    assert_eq!(status, ExitStatus::Code(7));

    let (status, out, _) = run(&agent.socket, argv(&["cat"]), b"hi\n").await;
    assert_eq!(
        (status, out.as_slice()),
        (ExitStatus::Code(0), &b"hi\n"[..])
    );

    let (_, out, err) = run(
        &agent.socket,
        argv(&["sh", "-c", "echo out; echo err >&2"]),
        b"",
    )
    .await;
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );

    let (status, _, _) = run(&agent.socket, argv(&["sh", "-c", "kill -TERM $$"]), b"").await;
    assert_eq!(status, ExitStatus::Signal(15));
    assert_eq!(status.as_shell_code(), 143);

    let mut env = argv(&["sh", "-c", "echo $GREETING; pwd"]);
    env.env = vec![("GREETING".into(), "hello".into())];
    env.cwd = Some("/tmp".into());
    let (_, out, _) = run(&agent.socket, env, b"").await;
    assert_eq!(out, b"hello\n/tmp\n");
}

#[tokio::test]
async fn missing_programs_are_reported_and_the_agent_goes_on() {
    let agent = start_agent();
    let client = AgentClient::over_unix(&agent.socket).await.unwrap();
    let err = client
        .exec(
            argv(&["/no/such/program"]),
            &b""[..],
            Vec::new(),
            Vec::new(),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    let (status, _, _) = run(&agent.socket, argv(&["true"]), b"").await;
    assert_eq!(status, ExitStatus::Code(0));
}

#[tokio::test]
async fn pty_sessions_get_a_terminal() {
    let agent = start_agent();
    let mut req = argv(&["sh", "-c", "tty; stty size"]);
    req.pty = Some(PtySize {
        rows: 33,
        cols: 101,
    });
    let (status, out, _) = run(&agent.socket, req, b"").await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 101"), "{out}");
}

#[tokio::test]
async fn health_answers_hello() {
    let agent = start_agent();
    let hello = AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .hello()
        .await
        .unwrap();
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
    assert!(!hello.kernel_release.is_empty());
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_agent_keeps_serving() {
    let agent = start_agent();
    for garbage in [
        &b"\xff\xff\xff\xff\x01"[..],
        &b"\x00\x00\x00\x00"[..],
        &b"\x00\x00\x00\x05\x01{not"[..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut s = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        s.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
            .await
            .expect("the agent must close a broken connection");
        // Either an error message then close, or (when garbage is still
        // unread as it closes) a reset: both end the broken session.
        match read {
            Ok(_) => {
                let text = String::from_utf8_lossy(&reply);
                assert!(
                    text.contains("\"type\":\"error\""),
                    "{garbage:?} -> {text:?}"
                );
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let (status, _, _) = run(&agent.socket, argv(&["true"]), b"").await;
    assert_eq!(status, ExitStatus::Code(0));
}

/// A stand-in for the VMM side of hybrid vsock (cloud-hypervisor and
/// vhost-device-vsock are exercised for real in the dev host): it answers
/// `CONNECT <port>` with `answer`.
async fn fake_vmm(answer: &'static str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut line = [0u8; 13];
        s.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"CONNECT 1024\n");
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(b"payload").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    (dir, path)
}

#[tokio::test]
async fn hybrid_vsock_handshake() {
    let (_dir, path) = fake_vmm("OK 1073741824\n").await;
    let mut s = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5))
        .await
        .unwrap();
    let mut rest = [0u8; 7];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(
        &rest, b"payload",
        "bytes after OK belong to the guest stream"
    );

    let (_dir, path) = fake_vmm("").await;
    let err = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err}");

    let (_dir, path) = fake_vmm("HTTP/1.1 400 Bad\n").await;
    let err = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP/1.1 400"), "{err}");

    let err = connect_hybrid_vsock(
        Path::new("/nonexistent/vsock"),
        1024,
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/vsock"), "{err}");
}

#[tokio::test]
async fn files_push_and_pull_round_trip_with_mode() {
    let agent = start_agent();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.sh");
    let path = path.to_str().unwrap();
    // Bigger than one chunk, with every byte value.
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .push(path, 0o750, content.as_slice())
        .await
        .unwrap();
    let mut back = Vec::new();
    let mode = AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .pull(path, &mut back, u64::MAX)
        .await
        .unwrap();
    assert_eq!(mode, 0o750);
    assert!(back == content, "pulled content differs");
    use std::os::unix::fs::PermissionsExt;
    let local = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(local, 0o750);

    let err = AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .pull("/nonexistent/file", Vec::new(), u64::MAX)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/file"), "{err}");

    let err = AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .push("/nonexistent/dir/file", 0o644, &b"x"[..])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir/file"), "{err}");
}

#[tokio::test]
async fn stats_come_from_proc() {
    let agent = start_agent();
    let stats = AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert!(stats.mem_total_bytes > 0);
    assert!(stats.mem_available_bytes <= stats.mem_total_bytes);
    assert!(stats.uptime_secs > 0);
}

#[tokio::test]
async fn kill_requests_reach_the_command_and_its_signal_is_reported() {
    let agent = start_agent();
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(4);
    // Keep stdin open so only the kill can end the session.
    let (_stdin_keep, stdin) = tokio::io::duplex(64);
    let client = AgentClient::over_unix(&agent.socket).await.unwrap();
    let exec = tokio::spawn(client.exec(
        argv(&["sleep", "30"]),
        stdin,
        Vec::new(),
        Vec::new(),
        Some(control_rx),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    control_tx.send(Control::Kill { signal: 9 }).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), exec)
        .await
        .expect("the kill must end the command")
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Signal(9));
}

#[tokio::test]
async fn pty_resize_reaches_the_terminal() {
    let agent = start_agent();
    let mut req = argv(&["sh", "-c", "read x; stty size"]);
    req.pty = Some(PtySize { rows: 24, cols: 80 });
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(4);
    let (mut stdin_tx, stdin) = tokio::io::duplex(64);
    let client = AgentClient::over_unix(&agent.socket).await.unwrap();
    let mut out = Vec::new();
    let exec = client.exec(req, stdin, &mut out, Vec::new(), Some(control_rx));
    let driver = async {
        control_tx
            .send(Control::Resize(PtySize {
                rows: 40,
                cols: 120,
            }))
            .await
            .unwrap();
        // The resize goes out before the line that lets `stty` run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stdin_tx.write_all(b"go\n").await.unwrap();
        drop(stdin_tx);
    };
    let (status, ()) = tokio::join!(exec, driver);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status.unwrap(), ExitStatus::Code(0), "{out}");
    assert!(out.contains("40 120"), "{out}");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn the_agent_socket_is_private_to_its_user() {
    let agent = start_agent();
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode_of(&agent.socket), 0o600);
}

/// Pulls the guest file `from` with the host-side writer of `vmctl cp`.
async fn pull_to(agent: &Agent, from: &Path, to: &Path, max: u64) -> Result<u32, ClientError> {
    AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .pull_to_file(from.to_str().unwrap(), to, max)
        .await
}

#[tokio::test]
async fn pulled_files_lose_setuid_setgid_and_sticky_bits() {
    use std::os::unix::fs::PermissionsExt;
    let agent = start_agent();
    let guest = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let source = guest.path().join("suid");
    std::fs::write(&source, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o7755)).unwrap();
    assert_eq!(mode_of(&source), 0o7755);
    let target = host.path().join("copy");
    let mode = pull_to(&agent, &source, &target, u64::MAX).await.unwrap();
    assert_eq!(mode, 0o755);
    assert_eq!(mode_of(&target), 0o755);
    assert_eq!(names(host.path()), ["copy"]);
}

#[tokio::test]
async fn symlinks_planted_at_the_pull_target_are_replaced_not_followed() {
    use std::os::unix::fs::symlink;
    let agent = start_agent();
    let guest = tempfile::tempdir().unwrap();
    let source = guest.path().join("payload");
    std::fs::write(&source, b"from the guest").unwrap();
    // A writable directory where someone else planted a link to a file we
    // must not touch.
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let target = host.path().join("out");
    symlink(&victim, &target).unwrap();
    // Also at the temporary name vmctl cp used to use.
    symlink(&victim, host.path().join(".out.vmctl-cp")).unwrap();

    pull_to(&agent, &source, &target, u64::MAX).await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    assert_eq!(std::fs::read(&target).unwrap(), b"from the guest");
    assert_eq!(names(host.path()), [".out.vmctl-cp", "out", "victim"]);
}

#[tokio::test]
async fn an_oversized_pull_is_refused_and_leaves_nothing() {
    let agent = start_agent();
    let guest = tempfile::tempdir().unwrap();
    let source = guest.path().join("big");
    std::fs::write(&source, vec![7u8; 300_000]).unwrap();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("existing"), b"x").unwrap();
    let before = names(host.path());
    let err = pull_to(&agent, &source, &host.path().join("big"), 100_000)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("300000 bytes, over the limit of 100000 bytes"),
        "{err}"
    );
    assert_eq!(names(host.path()), before);

    // At the limit exactly is fine.
    pull_to(&agent, &source, &host.path().join("big"), 300_000)
        .await
        .unwrap();
}

/// A guest that announces a small file and then sends more than the limit
/// is cut off as it crosses it, and nothing is left behind.
#[tokio::test]
async fn a_guest_lying_about_the_size_is_cut_off_at_the_limit() {
    use vmctl_guest::protocol::{read_frame, write_frame, Frame};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("liar.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let liar = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _request = read_frame(&mut s).await.unwrap();
        let file = Frame::Control(Control::File {
            mode: 0o644,
            size: 1,
        });
        write_frame(&mut s, &file).await.unwrap();
        // Far more than announced; stops when the host hangs up.
        for _ in 0..1000 {
            if write_frame(&mut s, &Frame::Stdout(vec![0; 64 * 1024]))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let host = tempfile::tempdir().unwrap();
    let err = AgentClient::over_unix(&socket)
        .await
        .unwrap()
        .pull_to_file("/etc/motd", &host.path().join("motd"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::TooLarge { size, max_size: 1048576 } if size <= (1 << 20) + 64 * 1024),
        "{err}"
    );
    assert!(names(host.path()).is_empty(), "{:?}", names(host.path()));
    liar.await.unwrap();
}

/// A guest user who can write where the host pushes to plants symlinks at
/// the target and at the temporary name the agent used to use: neither is
/// followed.
#[tokio::test]
async fn pushes_do_not_follow_symlinks_planted_in_the_guest() {
    use std::os::unix::fs::symlink;
    let agent = start_agent();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let target = dir.path().join("motd");
    symlink(&victim, &target).unwrap();
    symlink(&victim, dir.path().join(".motd.vmctl-push")).unwrap();

    AgentClient::over_unix(&agent.socket)
        .await
        .unwrap()
        .push(target.to_str().unwrap(), 0o4755, &b"pushed"[..])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    assert_eq!(std::fs::read(&target).unwrap(), b"pushed");
    // The host is trusted with every bit.
    assert_eq!(mode_of(&target), 0o4755);
    assert_eq!(names(dir.path()), [".motd.vmctl-push", "motd", "victim"]);
}
