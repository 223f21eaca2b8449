//! Proxy mode: the gateway's own SSH connection to a guest's sshd, and the
//! bridge between a client's channel and a guest's.
//!
//! The transport is the VM's address on the bridge, port 22; for a VM
//! without one, a socket vmctld hands over (`OpenGuest` channel `ssh`: the
//! guest's vsock port 22, where systemd's ssh generator makes sshd
//! listen). It logs in
//! as the VM's SSH user with the gateway's client key (which vmctld adds to
//! every VM's authorized keys) and accepts only the host key vmctld
//! published for that VM in `/run/vmctl/ssh_known_hosts`.

use std::{path::Path, sync::Arc};

use russh::{
    client,
    keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate},
    server, Channel, ChannelMsg,
};
use vmctl_api::VmDetails;

use crate::vmctld::Vmctld;

/// A connection to a guest's sshd.
pub type Guest = client::Handle<GuestHandler>;

/// The client side of a guest connection: accepts only the published key,
/// and takes agent channels the guest opens to the user's connection
/// `agent` (only where agent forwarding is allowed and was asked for).
pub struct GuestHandler {
    expected: PublicKey,
    agent: Option<server::Handle>,
}

impl client::Handler for GuestHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.expected.key_data()
            }
            _ => false,
        })
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // Without a user connection to forward to, the reply is dropped:
        // the open is refused.
        let Some(user) = self.agent.clone() else {
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            match user.channel_open_agent().await {
                Ok(user_channel) => bridge(user_channel, channel, user, false).await,
                Err(e) => {
                    tracing::info!("the client refused an agent channel: {e}");
                    let _ = channel.close().await;
                }
            }
        });
        Ok(())
    }
}

/// The host key vmctld published for VM `name` in `known_hosts` (lines
/// `NAME.vm,IPV4,IPV6 TYPE BASE64`).
pub fn published_host_key(known_hosts: &Path, name: &str) -> Result<PublicKey, String> {
    let text = std::fs::read_to_string(known_hosts)
        .map_err(|e| format!("cannot read {}: {e}", known_hosts.display()))?;
    let host = format!("{name}.vm");
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let hosts = fields.next().unwrap_or_default();
        if !hosts.split(',').any(|h| h == host) {
            continue;
        }
        let key = fields.collect::<Vec<_>>().join(" ");
        return PublicKey::from_openssh(&key)
            .map_err(|e| format!("bad host key of {host} in {}: {e}", known_hosts.display()));
    }
    Err(format!(
        "no host key of VM {name} in {}",
        known_hosts.display()
    ))
}

/// Why a guest could not be reached, as the client is told.
pub fn not_running_message(vm: &VmDetails) -> String {
    format!(
        "vmctl-ssh: VM {} is {}; start it with: ssh -p 2222 HOST start {} (then connect again)\n",
        vm.name, vm.state, vm.name
    )
}

/// Connects to the sshd of `vm` (for user `uid`) and logs in.
pub async fn connect(
    vmctld: &Vmctld,
    uid: u32,
    vm: &VmDetails,
    client_key: Arc<PrivateKey>,
    known_hosts: &Path,
    agent: Option<server::Handle>,
) -> Result<Guest, String> {
    // "unknown" (vmctld cannot ask systemd) is tried: vmctld refuses a
    // VM that is not running anyway.
    if matches!(
        vm.state.as_str(),
        "stopped" | "failed" | "stopping" | "starting"
    ) {
        return Err(not_running_message(vm));
    }
    let expected = published_host_key(known_hosts, &vm.name)?;
    let user = vm.ssh_user.clone().unwrap_or_else(|| "root".to_string());
    // The bridge first: over vsock (vmctld's `OpenGuest` channel `ssh`;
    // QEMU with vhost-device-vsock in the dev host) every 50 MB download
    // broke, for this client (a garbage packet length) and for OpenSSH's
    // alike, while the same file came intact over the bridge. The cause:
    // vhost-device-vsock dropped guest packets spread over several
    // descriptors; since the QEMU driver caps them (`VSOCK_TX_BUFFER_SIZE`
    // in vmctl-vmm), 50 MB come out intact over vsock, through this
    // gateway too (a VM without an address, dev host, 2026-11-24; see
    // docs/architecture.md, "Bulk data over vsock under QEMU"). The bridge
    // stays first; vsock is for a VM without an address.
    if let Some(ipv4) = &vm.ipv4 {
        match tokio::net::TcpStream::connect((ipv4.as_str(), 22)).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return login(stream, expected, &user, client_key, &vm.name, agent).await;
            }
            Err(e) => tracing::info!(
                "VM {}: cannot reach {ipv4}:22 ({e}); trying its sshd over vsock",
                vm.name
            ),
        }
    }
    let mut client = vmctld.connect().await.map_err(|e| e.to_string())?;
    match client.open_guest_for(uid, &vm.name, "ssh").await {
        Ok(stream) => login(stream, expected, &user, client_key, &vm.name, agent).await,
        Err(e) => Err(format!("cannot reach the sshd of VM {}: {e}", vm.name)),
    }
}

/// Speaks SSH over `stream` to the sshd of VM `name`, accepting only the
/// host key `expected`, and logs in as `user` with `client_key`; agent
/// channels the guest opens go to `agent`, if any.
pub async fn login<S>(
    stream: S,
    expected: PublicKey,
    user: &str,
    client_key: Arc<PrivateKey>,
    name: &str,
    agent: Option<server::Handle>,
) -> Result<Guest, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // russh's default ciphers (chacha20-poly1305 first), as OpenSSH's
    // client offers them on the direct path, so the guest's sshd does the
    // same work on both paths. AES-GCM first was cheaper for the gateway
    // on loopback, but in the dev host (guests under TCG, no AES-NI)
    // scp through the gateway fell to 0.28-0.36x direct with it.
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..client::Config::default()
    });
    let handler = GuestHandler { expected, agent };
    let mut guest = client::connect_stream(config, stream, handler)
        .await
        .map_err(|e| format!("SSH to VM {name} failed: {e}"))?;
    let auth = guest
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(client_key, None))
        .await
        .map_err(|e| format!("SSH login to VM {name} failed: {e}"))?;
    if !auth.success() {
        return Err(format!(
            "VM {name} does not trust the gateway's key for {user} (a VM gets it when it \
             starts: one running since before vmctl-ssh.socket was enabled or the key \
             changed needs a restart: vmctl restart {name})"
        ));
    }
    Ok(guest)
}

/// Copies everything between a client's channel and a guest's channel
/// until both are closed: data, stderr, EOF and the session requests one
/// way; output, exit status and exit signal the other. Requests were
/// already answered to the client by the server handler (see
/// [`crate::server`]), so they go to the guest without asking for a reply;
/// an agent forwarding request only with `forward_agent`.
pub async fn bridge(
    user: Channel<server::Msg>,
    guest: Channel<client::Msg>,
    handle: server::Handle,
    forward_agent: bool,
) {
    let id = user.id();
    let (mut user_rx, user_tx) = user.split();
    let (mut guest_rx, guest_tx) = guest.split();
    let upstream = async {
        while let Some(msg) = user_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => guest_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => {
                    guest_tx.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => guest_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    guest_tx
                        .request_pty(
                            false,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::RequestShell { .. } => guest_tx.request_shell(false).await,
                ChannelMsg::Exec { command, .. } => guest_tx.exec(false, command).await,
                ChannelMsg::RequestSubsystem { name, .. } => {
                    guest_tx.request_subsystem(false, name).await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => guest_tx.set_env(false, variable_name, variable_value).await,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    guest_tx
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => guest_tx.signal(signal).await,
                ChannelMsg::AgentForward { .. } if forward_agent => {
                    guest_tx.agent_forward(false).await
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = guest_tx.close().await;
    };
    let downstream = async {
        while let Some(msg) = guest_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => user_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => {
                    user_tx.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => user_tx.eof().await,
                ChannelMsg::ExitStatus { exit_status } => user_tx.exit_status(exit_status).await,
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|()| russh::Error::SendError),
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = user_tx.close().await;
    };
    tokio::join!(upstream, downstream);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e";

    #[test]
    fn finds_the_published_key_of_one_vm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh_known_hosts");
        std::fs::write(
            &path,
            format!("t10.vm,10.0.0.3 ssh-rsa AAAAB3NzaC1yc2E\nt1.vm,10.0.0.2,fd00::2 {KEY}\n"),
        )
        .unwrap();
        let key = published_host_key(&path, "t1").unwrap();
        assert_eq!(key.to_openssh().unwrap(), KEY);
        let e = published_host_key(&path, "t2").unwrap_err();
        assert!(e.contains("no host key of VM t2"), "{e}");
        let e = published_host_key(&dir.path().join("none"), "t1").unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
