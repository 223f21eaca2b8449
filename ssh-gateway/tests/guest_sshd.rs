//! The gateway's SSH client (proxy mode's side towards a guest) against a
//! real OpenSSH `sshd` on loopback, started by the test with its own
//! configuration and host key, as the user running the test (an
//! unprivileged sshd can log in only that user, which is all this needs).
//!
//! Large downloads are what broke in the dev host (the guest's sshd sending
//! to the gateway, over vsock); uploads are checked too. The sshd's bytes
//! reach the client in small uneven pieces with pauses (a slow guest's
//! network), and a second test puts OpenSSH's client in front of the
//! gateway's channel bridge. Both also passed against the guest image's
//! OpenSSH 10.0 sshd and client (run by hand from the image tree in a
//! mount namespace; see docs/architecture.md, "SSH gateway").
//!
//! Needs `/usr/sbin/sshd` (Debian `openssh-server`) and `ssh-keygen`.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use russh::{
    keys::{PrivateKey, PublicKey},
    server::{self, Auth, ChannelOpenHandle, VerifiedPublicKey},
    Channel, ChannelId, ChannelMsg, MethodKind, MethodSet,
};
use vmctl_ssh::proxy::{self, Guest};

const SSHD: &str = "/usr/sbin/sshd";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running sshd and what a client needs to log in.
struct Sshd {
    _process: Kill,
    _dir: tempfile::TempDir,
    port: u16,
    host_key: PublicKey,
    client_key: Arc<PrivateKey>,
    user: String,
    /// A directory the test may write into and the sshd's user can read.
    files: PathBuf,
}

fn start_sshd() -> Sshd {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: install openssh-server (cargo xtask deps)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    keygen(&path.join("host"));
    keygen(&path.join("client"));
    std::fs::copy(path.join("client.pub"), path.join("authorized_keys")).unwrap();
    // sshd as root wants its privilege separation directory.
    if nix::unistd::Uid::effective().is_root() {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let port = free_port();
    let config = path.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {dir}/host\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile none\n\
             UsePAM no\n\
             StrictModes no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\n\
             Subsystem sftp internal-sftp\n",
            dir = path.display()
        ),
    )
    .unwrap();
    let process = Kill(
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let host_key =
        PublicKey::from_openssh(&std::fs::read_to_string(path.join("host.pub")).unwrap()).unwrap();
    let client_key =
        PrivateKey::from_openssh(std::fs::read_to_string(path.join("client")).unwrap()).unwrap();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name;
    let files = path.join("files");
    std::fs::create_dir(&files).unwrap();
    Sshd {
        _process: process,
        port,
        host_key,
        client_key: Arc::new(client_key),
        user,
        files,
        _dir: dir,
    }
}

/// Logs in to `sshd`; with `chopped`, through [`chop`].
async fn login(sshd: &Sshd, chopped: bool) -> Guest {
    login_with_agent(sshd, chopped, None).await
}

/// [`login`], agent channels the guest opens going to `agent`.
async fn login_with_agent(sshd: &Sshd, chopped: bool, agent: Option<server::Handle>) -> Guest {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", sshd.port))
        .await
        .unwrap();
    let stream = if chopped { chop(stream).await } else { stream };
    proxy::login(
        stream,
        sshd.host_key.clone(),
        &sshd.user,
        sshd.client_key.clone(),
        "loopback",
        agent,
    )
    .await
    .unwrap()
}

/// A loopback relay that delivers the sshd's bytes in small uneven pieces
/// with pauses, like a slow guest's network.
async fn chop(upstream: tokio::net::TcpStream) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (down, _) = listener.accept().await.unwrap();
        let (mut down_rx, mut down_tx) = down.into_split();
        let (mut up_rx, mut up_tx) = upstream.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut down_rx, &mut up_tx).await });
        let mut buf = vec![0u8; 65536];
        let mut x: u64 = 12345;
        loop {
            let n = match up_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut at = 0;
            while at < n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let piece = ((x % 1500) as usize + 1).min(n - at);
                if down_tx.write_all(&buf[at..at + piece]).await.is_err() {
                    return;
                }
                at += piece;
                if x.is_multiple_of(7) {
                    tokio::time::sleep(Duration::from_micros(x % 500)).await;
                }
            }
        }
    });
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Runs `command`, feeding it `input`; returns its stdout and exit status.
async fn exec(guest: &Guest, command: &str, input: &[u8]) -> (Vec<u8>, Option<u32>) {
    let mut channel = guest.channel_open_session().await.unwrap();
    channel.exec(true, command).await.unwrap();
    if !input.is_empty() {
        channel.data(input).await.unwrap();
    }
    channel.eof().await.unwrap();
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    (stdout, status)
}

/// Bytes no compression shortens and no pattern hides: a simple
/// xorshift stream.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_down_and_up_through_the_guest_client_in_pieces() {
    let sshd = start_sshd();
    let data = noise(50 * 1024 * 1024);
    let file = sshd.files.join("big");
    std::fs::write(&file, &data).unwrap();
    let guest = login(&sshd, true).await;

    let (down, status) = exec(&guest, &format!("cat {}", file.display()), &[]).await;
    assert_eq!(status, Some(0));
    assert_eq!(down.len(), data.len(), "download length");
    assert!(down == data, "download content differs");

    let copy = sshd.files.join("copy");
    let (_, status) = exec(&guest, &format!("cat > {}", copy.display()), &data).await;
    assert_eq!(status, Some(0));
    assert!(
        std::fs::read(&copy).unwrap() == data,
        "upload content differs"
    );

    let (_, status) = exec(&guest, "exit 7", &[]).await;
    assert_eq!(status, Some(7));
}

/// The server half of proxy mode, cut down to what the bridge needs: any
/// key gets in, every session channel is bridged to a new guest channel,
/// requests are answered at once (as [`vmctl_ssh::server`] does).
struct Front {
    sshd: Arc<Sshd>,
    /// The guest connection, made at the first channel with this
    /// connection's handle for agent channels.
    guest: Option<Arc<Guest>>,
}

impl server::Handler for Front {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<server::Msg>,
        reply: ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let handle = session.handle();
        if self.guest.is_none() {
            let guest = login_with_agent(&self.sshd, false, Some(handle.clone())).await;
            self.guest = Some(Arc::new(guest));
        }
        reply.accept().await;
        let guest = self.guest.clone().unwrap();
        tokio::spawn(async move {
            let guest_channel = guest.channel_open_session().await.unwrap();
            proxy::bridge(channel, guest_channel, handle, true).await
        });
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}

/// Serves one front connection on a loopback port; returns the port.
async fn front(sshd: &Arc<Sshd>) -> u16 {
    let sshd = sshd.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(server::Config {
        keys: vec![PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap()],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        ..server::Config::default()
    });
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let session = server::run_stream(config, stream, Front { sshd, guest: None })
            .await
            .unwrap();
        let _ = session.await;
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_downloads_through_the_bridge() {
    let sshd = Arc::new(start_sshd());
    let data = noise(50 * 1024 * 1024);
    let file = sshd.files.join("big");
    std::fs::write(&file, &data).unwrap();
    let key = sshd.files.join("front_key");
    keygen(&key);
    for (what, args) in [("ssh cat", vec!["ssh"]), ("scp (sftp)", vec!["scp"])] {
        let port = front(&sshd).await;
        let copy = sshd.files.join("copy");
        let _ = std::fs::remove_file(&copy);
        let mut command = tokio::process::Command::new("timeout");
        command.arg("120").args(&args);
        command
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg("-i")
            .arg(&key);
        if args[0] == "ssh" {
            command
                .args(["-p", &port.to_string(), "x@127.0.0.1", "cat"])
                .arg(&file);
        } else {
            command
                .args(["-P", &port.to_string()])
                .arg(format!("x@127.0.0.1:{}", file.display()))
                .arg(&copy);
        }
        let out = command.stdin(Stdio::null()).output().await.unwrap();
        assert!(out.status.success(), "{what}: {out:?}");
        let got = if args[0] == "ssh" {
            out.stdout.clone()
        } else {
            std::fs::read(&copy).unwrap()
        };
        let first = got.iter().zip(&data).position(|(a, b)| a != b);
        assert!(
            got == data,
            "{what}: {} bytes of {}, first difference at {first:?}; stdout {} bytes, stderr {:?}",
            got.len(),
            data.len(),
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `ssh -A` through the bridge: the guest's `ssh-add -l` lists the key of
/// the agent on the client's side, over an agent channel the gateway's
/// guest client takes and opens back to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_forwarded_through_the_bridge() {
    let sshd = Arc::new(start_sshd());
    let key = sshd.files.join("front_key");
    keygen(&key);
    let agent_socket = sshd.files.join("agent.sock");
    let agent = Kill(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent_socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent_socket.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &agent_socket)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let fingerprint = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8(fingerprint.stdout).unwrap();
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();

    let port = front(&sshd).await;
    let out = tokio::process::Command::new("timeout")
        .args(["60", "ssh", "-A", "-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg("-i")
        .arg(&key)
        .args(["x@127.0.0.1", "ssh-add -l"])
        .env("SSH_AUTH_SOCK", &agent_socket)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&fingerprint), "{listed}");
    drop(agent);
}
