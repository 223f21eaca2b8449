//! The gateway on loopback with real parts, no dev host: the real vmctld
//! (`--no-dbus`, its own state directory, `[Gateways] Users=nobody`), the
//! real `vmctl-ssh` binary running as `nobody`, and the real OpenSSH
//! client. Keys are put in vmctld's store directly (as `vmctl ssh-key add`
//! would for a user; that path is the e2e test's), then:
//! command mode for the key's owner, an unknown key refused with the
//! reason, unknown commands, another user's calls, and a flood of garbage
//! and truncated handshakes after which a client from another source
//! address still gets in and the gateway process is the same.
//!
//! Needs root (to run the gateway as another user), `vmctld` built in the
//! same target directory (`cargo test --workspace` builds it) and
//! `ssh`/`ssh-keygen` on PATH.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_vmctl-ssh");

/// `vmctld` next to this test's binaries (target/<profile>/).
fn vmctld() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("vmctld");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p vmctld, or cargo test --workspace)",
        path.display()
    );
    path
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (user.uid.as_raw(), user.gid.as_raw())
}

fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ssh -p PORT USER@127.0.0.1 CMD` with `key`, from `source`.
fn ssh(port: u16, key: &Path, source: &str, user: &str, cmd: &str, batch: bool) -> Output {
    ssh_command(port, key, source, user, &[cmd], batch)
        .output()
        .unwrap()
}

/// `ssh -p PORT ... USER@127.0.0.1 ARGS...` (in `timeout 60`), from `source`.
fn ssh_command(
    port: u16,
    key: &Path,
    source: &str,
    user: &str,
    args: &[&str],
    batch: bool,
) -> Command {
    let mut command = Command::new("timeout");
    command
        .args(["60", "ssh", "-p", &port.to_string(), "-b", source])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        // OpenSSH prints keyboard-interactive instructions and a server's
        // disconnect message at level INFO.
        .args([
            "-o",
            if batch {
                "LogLevel=ERROR"
            } else {
                "LogLevel=INFO"
            },
        ])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args([
            "-o",
            &format!("BatchMode={}", if batch { "yes" } else { "no" }),
        ])
        .arg("-i")
        .arg(key)
        .arg(format!("{user}@127.0.0.1"))
        .args(args)
        .stdin(Stdio::null());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real vmctld and the real gateway (as nobody), with two users' keys
/// in the store and one unknown key.
struct Stack {
    /// Kept for the tests' temporary files and its deletion at the end.
    dir: tempfile::TempDir,
    port: u16,
    alice_key: PathBuf,
    bob_key: PathBuf,
    stranger_key: PathBuf,
    gateway: Kill,
    _vmctld: Kill,
}

/// Starts vmctld and the gateway, the gateway with `gateway_args` added.
fn stack(gateway_args: &[&str]) -> Stack {
    stack_with("", gateway_args)
}

/// [`stack`] with `config` added to vmctld's configuration file.
fn stack_with(config_text: &str, gateway_args: &[&str]) -> Stack {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test runs the gateway as nobody: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("io.vmctl.Manager");
    let config = dir.path().join("vmctl.conf");
    std::fs::write(&config, format!("[Gateways]\nUsers=nobody\n{config_text}")).unwrap();
    let state = dir.path().join("state");
    let vmctld = Kill(
        Command::new(vmctld())
            .arg("--varlink-address")
            .arg(&socket)
            .arg("--state-directory")
            .arg(&state)
            .arg("--runtime-directory")
            .arg(dir.path().join("run"))
            .arg("--config")
            .arg(&config)
            .arg("--no-dbus")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("vmctld", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok() && state.join("vmctl.db").exists()
    });

    // Two users' keys in the store, as `vmctl ssh-key add` puts them.
    let alice_key = dir.path().join("alice");
    let bob_key = dir.path().join("bob");
    let stranger_key = dir.path().join("stranger");
    let db = rusqlite::Connection::open(state.join("vmctl.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    for (path, uid) in [(&alice_key, 4242), (&bob_key, 4343)] {
        let key = keygen(path);
        db.execute(
            "INSERT INTO ssh_keys (key, uid, comment, added) VALUES (?1, ?2, '', 0)",
            rusqlite::params![key, uid],
        )
        .unwrap();
    }
    keygen(&stranger_key);
    drop(db);

    let (uid, gid) = nobody();
    let gw_state = dir.path().join("gw");
    std::fs::create_dir(&gw_state).unwrap();
    nix::unistd::chown(&gw_state, Some(uid.into()), Some(gid.into())).unwrap();
    let port = free_port();
    let gateway = Kill(
        Command::new(GATEWAY)
            .arg("--listen")
            .arg(format!("0.0.0.0:{port}"))
            .arg("--state-directory")
            .arg(&gw_state)
            .arg("--address")
            .arg(&socket)
            .arg("--known-hosts")
            .arg(dir.path().join("run/ssh_known_hosts"))
            .args(gateway_args)
            .env_remove("LISTEN_FDS")
            .env("VMCTL_SSH_LOG", "warn")
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("vmctl-ssh", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // That first probe counted against 127.0.0.1's rate.
    Stack {
        dir,
        port,
        alice_key,
        bob_key,
        stranger_key,
        gateway,
        _vmctld: vmctld,
    }
}

#[test]
fn command_mode_unknown_keys_and_a_flood_with_the_real_parts() {
    let Stack {
        port,
        alice_key,
        bob_key,
        stranger_key,
        gateway,
        dir: _dir,
        _vmctld,
    } = stack(&[]);
    let gateway_pid = gateway.0.id();

    // Command mode acts for the key's owner.
    let who = ssh(port, &alice_key, "127.0.0.1", "vmctl", "whoami", true);
    assert_eq!(who.status.code(), Some(0), "{who:?}");
    assert!(
        text(&who.stdout).starts_with("4242 (uid 4242)\n"),
        "{who:?}"
    );
    let listed = ssh(port, &alice_key, "127.0.0.1", "vmctl", "ls --json", true);
    assert_eq!(text(&listed.stdout).trim(), "[]", "{listed:?}");
    let theirs = ssh(port, &bob_key, "127.0.0.1", "bob", "whoami", true);
    assert!(text(&theirs.stdout).starts_with("4343 (uid 4343)\n"));

    // The CLI's errors, for the user the gateway acts for.
    let missing = ssh(port, &bob_key, "127.0.0.1", "vmctl", "rm nosuchvm", true);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        text(&missing.stderr).contains("no VM named \"nosuchvm\""),
        "{missing:?}"
    );
    let explicit = ssh(port, &bob_key, "127.0.0.1", "nosuchvm.vm", "hostname", true);
    assert_eq!(explicit.status.code(), Some(255), "{explicit:?}");
    assert!(
        text(&explicit.stderr).contains("no VM named"),
        "{explicit:?}"
    );

    // Unknown commands: the help, exit status 2.
    let unknown = ssh(port, &alice_key, "127.0.0.1", "vmctl", "frobnicate", true);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(text(&unknown.stderr).contains("whoami"), "{unknown:?}");

    // An unknown key: refused, with the reason (keyboard-interactive, so
    // not in batch mode), said once.
    let refused = ssh(port, &stranger_key, "127.0.0.1", "vmctl", "whoami", false);
    assert_eq!(refused.status.code(), Some(255), "{refused:?}");
    let stderr = text(&refused.stderr);
    assert_eq!(
        stderr.matches("this key is not registered").count(),
        1,
        "{stderr}"
    );

    // 300 connections from 127.0.0.1: garbage, truncated handshakes,
    // nothing at all. Over the rate, the gateway answers with an SSH
    // disconnect naming the limit.
    let mut limited = 0;
    for i in 0..300 {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = match i % 3 {
            0 => stream.write_all(b"garbage\r\n\0\0\0"),
            1 => stream.write_all(b"SSH-2.0-test\r\n\0\0\0\x20\x14trunc"),
            _ => Ok(()),
        };
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.take(4096).read_to_end(&mut answer);
        if text(&answer).contains("connection rate limit per source address") {
            limited += 1;
        }
    }
    assert!(limited >= 200, "only {limited} of 300 were rate-limited");
    let blocked = ssh(port, &alice_key, "127.0.0.1", "vmctl", "whoami", true);
    assert_eq!(blocked.status.code(), Some(255));
    assert!(
        text(&blocked.stderr).contains("connection rate limit per source address"),
        "{blocked:?}"
    );
    // Another source still gets in, served by the same process.
    let other = ssh(port, &alice_key, "127.0.0.2", "vmctl", "whoami", true);
    assert_eq!(other.status.code(), Some(0), "{other:?}");
    let mut gateway = gateway;
    assert!(gateway.0.try_wait().unwrap().is_none(), "the gateway died");
    assert_eq!(gateway.0.id(), gateway_pid);
}

/// The timeouts, with small values: a connection that authenticates but
/// moves nothing is closed with an SSH disconnect naming the idle timeout
/// (OpenSSH prints it), one that never authenticates with one naming the
/// authentication timeout.
#[test]
fn timeouts_are_named_in_the_disconnect() {
    let stack = stack(&["--idle-timeout", "2", "--auth-timeout", "2"]);
    let started = Instant::now();
    let idle = ssh_command(
        stack.port,
        &stack.alice_key,
        "127.0.0.1",
        "vmctl",
        &["-N"],
        false,
    )
    .output()
    .unwrap();
    assert_eq!(idle.status.code(), Some(255), "{idle:?}");
    assert!(
        text(&idle.stderr).contains("vmctl-ssh: idle timeout: no traffic for 2 s"),
        "{idle:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A client that finishes the key exchange and then does nothing: the
    // disconnect names the authentication timeout. (One that stops in the
    // middle of the key exchange is only closed: russh sends nothing then.)
    let told = Told::default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let _client = russh::client::connect(
            std::sync::Arc::new(russh::client::Config::default()),
            ("127.0.0.1", stack.port),
            told.clone(),
        )
        .await
        .unwrap();
        told.wait_for_one().await;
    });
    assert_eq!(
        told.0.lock().unwrap().as_slice(),
        ["vmctl-ssh: authentication timeout: not authenticated within 2 s"]
    );
}

/// A russh client's handler that keeps what the gateway says when it
/// refuses a channel or disconnects.
#[derive(Clone, Default)]
struct Told(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Told {
    /// Waits (at most 20 s) until something was said.
    async fn wait_for_one(&self) {
        for _ in 0..400 {
            if !self.0.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl russh::client::Handler for Told {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn channel_open_failure(
        &mut self,
        _channel: russh::ChannelId,
        _reason: russh::ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(description.to_string());
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: russh::client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => {
                self.0.lock().unwrap().push(info.message);
                Ok(())
            }
            russh::client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Sessions per user, channels per connection and logins per key, with
/// small values: each refusal names its limit and value.
#[test]
fn session_channel_and_key_limits_are_named() {
    let stack = stack(&[
        "--max-sessions-per-user",
        "1",
        "--max-channels-per-connection",
        "1",
        "--rate-per-key",
        "3",
    ]);
    // alice's first login (1 of 3 per minute) holds her one session;
    // OpenSSH runs the LocalCommand once it is in.
    let logged_in = stack.dir.path().join("held");
    let mut held = ssh_command(
        stack.port,
        &stack.alice_key,
        "127.0.0.1",
        "vmctl",
        &[
            "-N",
            "-o",
            "PermitLocalCommand=yes",
            "-o",
            &format!("LocalCommand=touch {}", logged_in.display()),
        ],
        true,
    )
    .spawn()
    .unwrap();
    wait_for("the first login", || logged_in.exists());
    // The second (2 of 3) is told why its commands cannot run.
    let second = ssh(
        stack.port,
        &stack.alice_key,
        "127.0.0.1",
        "vmctl",
        "whoami",
        true,
    );
    assert_eq!(second.status.code(), Some(255), "{second:?}");
    assert!(
        text(&second.stderr)
            .contains("vmctl-ssh: session limit: at most 1 connections per user at once"),
        "{second:?}"
    );
    // bob is another user.
    let bob = ssh(
        stack.port,
        &stack.bob_key,
        "127.0.0.1",
        "vmctl",
        "whoami",
        true,
    );
    assert_eq!(bob.status.code(), Some(0), "{bob:?}");
    let _ = held.kill();
    let _ = held.wait();

    // The third login (3 of 3), by a client that opens channels without
    // using them: the second channel is refused, naming the limit.
    let told = Told::default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key =
        russh::keys::PrivateKey::from_openssh(std::fs::read_to_string(&stack.alice_key).unwrap())
            .unwrap();
    runtime.block_on(async {
        let mut client = russh::client::connect(
            std::sync::Arc::new(russh::client::Config::default()),
            ("127.0.0.1", stack.port),
            told.clone(),
        )
        .await
        .unwrap();
        let auth = client
            .authenticate_publickey(
                "vmctl",
                russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None),
            )
            .await
            .unwrap();
        assert!(auth.success());
        let _first = client.channel_open_session().await.unwrap();
        let second = client.channel_open_session().await;
        assert!(second.is_err(), "a second channel was opened");
        told.wait_for_one().await;
    });
    assert_eq!(
        told.0.lock().unwrap().as_slice(),
        ["vmctl-ssh: channel limit: at most 1 channels per connection"]
    );

    // The fourth login within the minute: over the rate per key.
    let fourth = ssh(
        stack.port,
        &stack.alice_key,
        "127.0.0.1",
        "vmctl",
        "whoami",
        true,
    );
    assert_eq!(fourth.status.code(), Some(255), "{fourth:?}");
    assert!(
        text(&fourth.stderr)
            .contains("vmctl-ssh: connection rate limit per key: at most 3 per minute"),
        "{fourth:?}"
    );
}

/// Where an administrator opened registration, a key nobody registered
/// logs in only to `register NAME`, which makes a store-only account
/// (uid from vmctld's registration range) that the key then opens; a taken
/// name is refused with the reason.
#[test]
fn an_unknown_key_registers_where_it_is_open() {
    let stack = stack_with("[SSHGateway]\nRegister=yes\nRegisterMax=1\n", &[]);
    let port = stack.port;
    let stranger = &stack.stranger_key;

    let before = ssh(port, stranger, "127.0.0.1", "vmctl", "ls", true);
    assert_eq!(before.status.code(), Some(1), "{before:?}");
    assert!(
        text(&before.stderr).contains("ssh -p 2222 HOST register NAME"),
        "{before:?}"
    );
    let bad = ssh(port, stranger, "127.0.0.1", "vmctl", "register Carol", true);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(text(&bad.stderr).contains("is not a user name"), "{bad:?}");
    let taken = ssh(
        port,
        stranger,
        "127.0.0.1",
        "vmctl",
        "register nobody",
        true,
    );
    assert_eq!(taken.status.code(), Some(1), "{taken:?}");
    assert!(text(&taken.stderr).contains("reserved"), "{taken:?}");

    let made = ssh(port, stranger, "127.0.0.1", "vmctl", "register carol", true);
    assert_eq!(made.status.code(), Some(0), "{made:?}");
    assert!(
        text(&made.stdout).starts_with("registered carol (uid 2147000000)"),
        "{made:?}"
    );
    let who = ssh(port, stranger, "127.0.0.1", "vmctl", "whoami", true);
    assert_eq!(who.status.code(), Some(0), "{who:?}");
    assert!(
        text(&who.stdout).starts_with("carol (uid 2147000000)"),
        "{who:?}"
    );
    let listed = ssh(port, stranger, "127.0.0.1", "carol", "ls --json", true);
    assert_eq!(text(&listed.stdout).trim(), "[]", "{listed:?}");

    // RegisterMax=1: the next unknown key is told the host is full.
    let another = stack.dir.path().join("another");
    keygen(&another);
    let full = ssh(port, &another, "127.0.0.1", "vmctl", "register dave", true);
    assert_eq!(full.status.code(), Some(1), "{full:?}");
    assert!(
        text(&full.stderr).contains("registration is full on this host"),
        "{full:?}"
    );
}
