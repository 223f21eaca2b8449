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
        .pull(path, &mut back)
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
        .pull("/nonexistent/file", Vec::new())
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
