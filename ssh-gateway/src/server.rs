//! The SSH server: accepts connections from the systemd socket, applies
//! the limits, authenticates public keys against vmctld's store, and
//! serves each channel in command mode or proxy mode.
//!
//! Every channel gets a task of its own that reads the channel's messages
//! (russh delivers data and requests both to the handler and to the
//! channel; the handler only answers requests, the task acts on them).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use russh::{
    keys::PrivateKey,
    server::{self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey},
    Channel, ChannelId, ChannelMsg, ChannelOpenFailure, Disconnect, MethodKind, MethodSet,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    commands,
    idle::{Activity, Tracked},
    keys::key_line,
    limits::{Limit, LimitState, Slot},
    proxy::{self, Guest},
    registration,
    routing::{self, Route},
    vmctld::{Identity, Vmctld},
};

/// What the gateway needs at run time.
#[derive(Debug)]
pub struct Shared {
    /// vmctld.
    pub vmctld: Vmctld,
    /// Limits and their state.
    pub limits: LimitState,
    /// The key the gateway logs into guests with.
    pub client_key: Arc<PrivateKey>,
    /// vmctld's published guest host keys.
    pub known_hosts: PathBuf,
    /// Whether clients may forward their SSH agent into their VMs.
    pub agent_forwarding: bool,
}

/// What an unregistered key is told.
pub const UNKNOWN_KEY_MESSAGE: &str = "vmctl-ssh: this key is not registered; add it with \
`vmctl ssh-key add` on the host (or `ssh -p 2222 HOST ssh-key add KEY` with a key that is)";

/// Serves `listener` until the process is stopped.
pub async fn serve(
    listener: std::net::TcpListener,
    host_key: PrivateKey,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let config = Arc::new(server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        // The idle timeout is ours (crate::idle): russh's closes silently.
        inactivity_timeout: None,
        max_auth_attempts: 8,
        nodelay: true,
        ..server::Config::default()
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let config = config.clone();
        tokio::spawn(async move { connection(stream, peer, shared, config).await });
    }
}

/// SSH's reason code "too many connections" (RFC 4250 4.2.2).
const TOO_MANY_CONNECTIONS: u32 = 12;

/// The version line and a cleartext `SSH_MSG_DISCONNECT` packet (RFC 4253
/// 6 and 11.1): how a connection is refused before any key exchange, so
/// that a refusal costs no cryptography and OpenSSH still prints the
/// message ("Received disconnect from ...: 12: MESSAGE").
pub fn disconnect_bytes(reason: u32, message: &str) -> Vec<u8> {
    let mut payload = vec![1u8]; // SSH_MSG_DISCONNECT
    payload.extend_from_slice(&reason.to_be_bytes());
    payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
    payload.extend_from_slice(message.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag
                                                    // packet_length + padding_length + payload + padding: a multiple of 8,
                                                    // with at least 4 bytes of padding.
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = b"SSH-2.0-vmctl_ssh\r\n".to_vec();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// Refuses a connection before SSH starts, saying why.
async fn refuse(mut stream: tokio::net::TcpStream, message: String) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream
            .write_all(&disconnect_bytes(TOO_MANY_CONNECTIONS, &message))
            .await?;
        stream.shutdown().await?;
        // Read what the client sends until it closes: closing with unread
        // data would reset the connection, and the client might lose the
        // line before reading it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    config: Arc<server::Config>,
) {
    let state = &shared.limits;
    if !state.per_source.allow(&peer.ip()) {
        tracing::info!("{peer}: over the connection rate per source");
        return refuse(stream, state.limits.message(Limit::RatePerSource)).await;
    }
    let Some(unauthenticated) = state
        .unauthenticated
        .acquire((), state.limits.max_unauthenticated)
    else {
        return refuse(stream, state.limits.message(Limit::Unauthenticated)).await;
    };
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = Connection {
        shared: shared.clone(),
        peer,
        authenticated: authenticated.clone(),
        unauthenticated: Some(unauthenticated),
        user: None,
        unknown_key_seen: false,
        reason_shown: false,
        channels: 0,
        registration_open: None,
        registering: None,
        handle: None,
    };
    let auth_timeout = state.limits.auth_timeout;
    let activity = Activity::default();
    let stream = Tracked::new(stream, activity.clone());
    let session =
        match tokio::time::timeout(auth_timeout, server::run_stream(config, stream, handler)).await
        {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!("{peer}: handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!("{peer}: no SSH version line within the authentication timeout");
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => return log_end(peer, result),
        () = tokio::time::sleep(auth_timeout) => {}
    }
    let limit = if !authenticated.load(Ordering::SeqCst) {
        Limit::AuthTimeout
    } else {
        tokio::select! {
            result = &mut session => return log_end(peer, result),
            () = activity.expired(shared.limits.limits.idle_timeout) => Limit::IdleTimeout,
        }
    };
    let message = shared.limits.limits.message(limit);
    tracing::info!("{peer}: {message}");
    let _ = handle
        .disconnect(Disconnect::ByApplication, message, String::new())
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
}

fn log_end(peer: SocketAddr, result: Result<(), russh::Error>) {
    match result {
        Ok(()) => tracing::debug!("{peer}: closed"),
        Err(e) => tracing::debug!("{peer}: ended: {e}"),
    }
}

/// An authenticated user and where their connection goes.
struct User {
    identity: Identity,
    key: String,
    /// Why every channel is refused (a limit), if so.
    refused: Option<String>,
    /// The VM of proxy mode, `None` in command mode.
    vm: Option<VmTarget>,
    /// An SSH user name that was neither a command name nor a VM.
    not_a_vm: Option<String>,
    _slot: Option<Slot<u32>>,
}

/// The VM a connection is proxied to.
struct VmTarget {
    details: vmctl_api::VmDetails,
    /// The guest connection, made at the first channel.
    guest: Option<Result<Arc<Guest>, String>>,
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    authenticated: Arc<AtomicBool>,
    unauthenticated: Option<Slot<()>>,
    user: Option<User>,
    unknown_key_seen: bool,
    /// Whether keyboard-interactive told the client why it was refused.
    reason_shown: bool,
    channels: usize,
    /// Whether vmctld lets unknown keys register (asked once, on the first
    /// unknown key).
    registration_open: Option<bool>,
    /// The proven key of a connection that may only register.
    registering: Option<String>,
    /// This connection's handle (for agent channels towards the client).
    handle: Option<server::Handle>,
}

impl Connection {
    /// Decides where the connection goes once `identity` is known.
    async fn authenticate(&mut self, ssh_user: &str, identity: Identity, key: String) -> Auth {
        let state = &self.shared.limits;
        let mut refused = None;
        if !state.per_key.allow(&key) {
            refused = Some(state.limits.message(Limit::RatePerKey));
        }
        let slot = state
            .sessions
            .acquire(identity.uid, state.limits.max_sessions_per_user);
        if slot.is_none() && refused.is_none() {
            refused = Some(state.limits.message(Limit::SessionsPerUser));
        }
        let mut vm = None;
        let mut not_a_vm = None;
        if refused.is_none() {
            let (name, explicit) = match routing::route(ssh_user, &identity.user) {
                Route::Command => (None, false),
                Route::Vm(name) => (Some(name), true),
                Route::VmOrCommand(name) => (Some(name), false),
            };
            if let Some(name) = name {
                match self.shared.vmctld.describe(identity.uid, &name).await {
                    Ok(details) => {
                        vm = Some(VmTarget {
                            details,
                            guest: None,
                        })
                    }
                    Err(e) if explicit => refused = Some(format!("vmctl-ssh: {e}")),
                    Err(e) if e.error_name() == Some(vmctl_api::errors::NO_SUCH_VM) => {
                        not_a_vm = Some(name)
                    }
                    Err(e) => refused = Some(format!("vmctl-ssh: {e}")),
                }
            }
        }
        tracing::info!(
            "{}: {} (uid {}) as {ssh_user:?}: {}",
            self.peer,
            identity.user,
            identity.uid,
            match (&refused, &vm) {
                (Some(why), _) => why.clone(),
                (None, Some(vm)) => format!("proxy to VM {}", vm.details.name),
                (None, None) => "command mode".to_string(),
            }
        );
        self.user = Some(User {
            identity,
            key,
            refused,
            vm,
            not_a_vm,
            _slot: slot,
        });
        self.authenticated.store(true, Ordering::SeqCst);
        self.unauthenticated = None;
        Auth::Accept
    }

    /// Whether an unknown key may log in to register.
    async fn registration_open(&mut self) -> bool {
        if self.registration_open.is_none() {
            let open = match self.shared.vmctld.registration_open().await {
                Ok(open) => open,
                Err(e) => {
                    tracing::warn!("cannot ask vmctld whether registration is open: {e}");
                    false
                }
            };
            self.registration_open = Some(open);
        }
        self.registration_open == Some(true)
    }

    /// Lets an unknown key in to register, if registration is open.
    async fn unknown_key(&mut self, key: Option<String>) -> Auth {
        self.unknown_key_seen = true;
        if !self.registration_open().await {
            return Auth::reject();
        }
        let Some(key) = key else {
            // Offered, not proven yet: let the client sign.
            return Auth::Accept;
        };
        if !self.shared.limits.per_key.allow(&key) {
            return Auth::reject();
        }
        tracing::info!("{}: an unknown key logs in to register", self.peer);
        self.registering = Some(key);
        self.authenticated.store(true, Ordering::SeqCst);
        self.unauthenticated = None;
        Auth::Accept
    }

    /// The guest connection of proxy mode, made on first use.
    async fn guest(&mut self) -> Option<Result<Arc<Guest>, String>> {
        let shared = self.shared.clone();
        let user = self.user.as_mut()?;
        let uid = user.identity.uid;
        let vm = user.vm.as_mut()?;
        if vm.guest.is_none() {
            let agent = if shared.agent_forwarding {
                self.handle.clone()
            } else {
                None
            };
            let connected = proxy::connect(
                &shared.vmctld,
                uid,
                &vm.details,
                shared.client_key.clone(),
                &shared.known_hosts,
                agent,
            )
            .await
            .map(Arc::new);
            if let Err(e) = &connected {
                tracing::info!("{}: VM {}: {e}", self.peer, vm.details.name);
            }
            vm.guest = Some(connected);
        }
        vm.guest.clone()
    }

    /// Counts a new channel, unless the connection is at its limit.
    fn over_channel_limit(&mut self) -> bool {
        if self.channels >= self.shared.limits.limits.max_channels_per_connection {
            return true;
        }
        self.channels += 1;
        false
    }

    /// Uncounts a channel that was refused after all.
    fn channel_refused(&mut self) {
        self.channels = self.channels.saturating_sub(1);
    }

    fn channel_limit_failure(&self) -> ChannelOpenFailure {
        ChannelOpenFailure::Other {
            code: 4,
            reason: self
                .shared
                .limits
                .limits
                .message(Limit::ChannelsPerConnection),
        }
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Unknown keys are refused here, before the client signs, so that
        // a client with several keys goes on to the next one.
        match self
            .shared
            .vmctld
            .lookup_key(&key_line(offer.public_key))
            .await
        {
            Ok(Some(_)) => Ok(Auth::Accept),
            Ok(None) => Ok(self.unknown_key(None).await),
            Err(e) => {
                tracing::warn!("key lookup failed: {e}");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let line = key_line(key.public_key);
        match self.shared.vmctld.lookup_key(&line).await {
            Ok(Some(identity)) => Ok(self.authenticate(user, identity, line).await),
            Ok(None) => Ok(self.unknown_key(Some(line)).await),
            Err(e) => {
                tracing::warn!("key lookup failed: {e}");
                Ok(Auth::reject())
            }
        }
    }

    /// Offered last: no prompt, only the reason the keys were refused, so
    /// that the client prints it before "Permission denied".
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        // Once: OpenSSH asks again up to NumberOfPasswordPrompts times.
        if response.is_some() || self.reason_shown {
            return Ok(Auth::reject());
        }
        self.reason_shown = true;
        let message = if self.unknown_key_seen {
            UNKNOWN_KEY_MESSAGE.to_string()
        } else {
            "vmctl-ssh: only public keys open this gateway, and no key was offered".to_string()
        };
        Ok(Auth::Partial {
            name: "".into(),
            instructions: message.into(),
            prompts: Vec::new().into(),
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.over_channel_limit() {
            reply.reject(self.channel_limit_failure()).await;
            return Ok(());
        }
        let handle = session.handle();
        if let Some(key) = self.registering.clone() {
            reply.accept().await;
            tokio::spawn(register_channel(channel, key, self.shared.vmctld.clone()));
            return Ok(());
        }
        let Some(user) = self.user.as_ref() else {
            return Ok(());
        };
        if let Some(why) = user.refused.clone() {
            reply.accept().await;
            tokio::spawn(refuse_channel(channel, why));
            return Ok(());
        }
        if user.vm.is_some() {
            self.handle.get_or_insert_with(|| session.handle());
            let guest = self.guest().await;
            let forward_agent = self.shared.agent_forwarding;
            reply.accept().await;
            match guest {
                Some(Ok(guest)) => {
                    tokio::spawn(async move {
                        match guest.channel_open_session().await {
                            Ok(guest_channel) => {
                                proxy::bridge(channel, guest_channel, handle, forward_agent).await
                            }
                            Err(e) => {
                                refuse_channel(channel, format!("vmctl-ssh: guest session: {e}"))
                                    .await
                            }
                        }
                    });
                }
                Some(Err(why)) => {
                    tokio::spawn(refuse_channel(channel, why));
                }
                None => {
                    tokio::spawn(refuse_channel(channel, "vmctl-ssh: no VM".into()));
                }
            }
            return Ok(());
        }
        reply.accept().await;
        let ctx = commands::Context {
            identity: user.identity.clone(),
            key: user.key.clone(),
            vmctld: self.shared.vmctld.clone(),
        };
        let not_a_vm = user.not_a_vm.clone();
        tokio::spawn(command_channel(channel, ctx, not_a_vm));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.over_channel_limit() {
            reply.reject(self.channel_limit_failure()).await;
            return Ok(());
        }
        self.handle.get_or_insert_with(|| session.handle());
        let refuse_with = |reason: String| ChannelOpenFailure::Other { code: 1, reason };
        let guest = match self.user.as_ref() {
            Some(User {
                refused: Some(why), ..
            }) => Err(why.clone()),
            Some(User { vm: Some(_), .. }) => match self.guest().await {
                Some(guest) => guest,
                None => Err("vmctl-ssh: no VM".to_string()),
            },
            _ => Err("vmctl-ssh: port forwarding needs a VM: ssh -p 2222 -L ... NAME@HOST".into()),
        };
        let guest = match guest {
            Ok(guest) => guest,
            Err(why) => {
                self.channel_refused();
                reply.reject(refuse_with(why)).await;
                return Ok(());
            }
        };
        match guest
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(guest_channel) => {
                reply.accept().await;
                let handle = session.handle();
                tokio::spawn(proxy::bridge(_channel, guest_channel, handle, false));
            }
            Err(e) => {
                self.channel_refused();
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!(
                            "vmctl-ssh: the guest refused {host_to_connect}:{port_to_connect}: {e}"
                        ),
                    })
                    .await
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels = self.channels.saturating_sub(1);
        Ok(())
    }

    // Session requests are answered here at once; the channel's task acts
    // on them (and, in proxy mode, a guest that refuses one closes the
    // channel, which the client sees).
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    /// `ssh -A`: granted only where the administrator allowed agent
    /// forwarding and the connection goes to a VM; the request then
    /// reaches the guest through the channel's bridge.
    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.shared.agent_forwarding
            && matches!(
                self.user.as_ref(),
                Some(User {
                    vm: Some(_),
                    refused: None,
                    ..
                })
            ))
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

/// A channel that only says why it cannot be served, on stderr, with exit
/// status 255 (as ssh itself uses for its own errors).
async fn refuse_channel(channel: Channel<Msg>, why: String) {
    let (mut rx, tx) = channel.split();
    // Wait for the request (shell, exec, ...) so the client is listening.
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::RequestShell { .. }
            | ChannelMsg::Exec { .. }
            | ChannelMsg::RequestSubsystem { .. } => break,
            ChannelMsg::Close => return,
            _ => {}
        }
    }
    let mut text = why;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = tx.extended_data_bytes(1, text.into_bytes()).await;
    let _ = tx.exit_status(255).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

/// The channel of a key that may only register: `register NAME`, else
/// how to.
async fn register_channel(channel: Channel<Msg>, key: String, vmctld: crate::vmctld::Vmctld) {
    let (mut rx, tx) = channel.split();
    let mut output = None;
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::Exec { command, .. } => {
                let line = String::from_utf8_lossy(&command).into_owned();
                output = Some(registration::run(&line, &key, &vmctld).await);
                break;
            }
            ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. } => {
                output = Some(commands::Output {
                    stderr: registration::usage().replace('\n', "\r\n"),
                    status: 1,
                    ..Default::default()
                });
                break;
            }
            ChannelMsg::Close => return,
            _ => {}
        }
    }
    let Some(out) = output else { return };
    finish(rx, tx, out).await;
}

/// Sends a command's output and exit status, closes the channel and
/// drains what the client still sends until it closes too.
async fn finish(
    mut rx: russh::ChannelReadHalf,
    tx: russh::ChannelWriteHalf<Msg>,
    out: commands::Output,
) {
    if !out.stdout.is_empty() {
        let _ = tx.data_bytes(out.stdout.into_bytes()).await;
    }
    if !out.stderr.is_empty() {
        let _ = tx.extended_data_bytes(1, out.stderr.into_bytes()).await;
    }
    let _ = tx.exit_status(out.status).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
    while let Some(msg) = rx.wait().await {
        if matches!(msg, ChannelMsg::Close) {
            break;
        }
    }
}

/// A command-mode channel: runs the `exec` command, or for a shell prints
/// the help.
async fn command_channel(channel: Channel<Msg>, ctx: commands::Context, not_a_vm: Option<String>) {
    let (mut rx, tx) = channel.split();
    let mut output = None;
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::Exec { command, .. } => {
                let line = String::from_utf8_lossy(&command).into_owned();
                output = Some(match commands::parse(&line) {
                    Ok(cli) => commands::run(cli, &ctx).await,
                    Err(mut out) => {
                        // `ssh typo@HOST cmd`: say why this is command mode.
                        if let Some(name) = &not_a_vm {
                            out.stderr = format!(
                                "vmctl-ssh: no VM of yours is named {name:?}, so this is \
                                 command mode\n{}",
                                out.stderr
                            );
                        }
                        out
                    }
                });
                break;
            }
            ChannelMsg::RequestShell { .. } => {
                let mut text = String::new();
                if let Some(name) = &not_a_vm {
                    text.push_str(&format!(
                        "vmctl-ssh: no VM of yours is named {name:?}, so this is command mode \
                         (your VMs: ssh -p 2222 HOST ls)\n\n"
                    ));
                }
                text.push_str(&commands::help());
                output = Some(commands::Output {
                    stderr: text.replace('\n', "\r\n"),
                    status: 2,
                    ..Default::default()
                });
                break;
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                output = Some(commands::Output {
                    stderr: format!(
                        "vmctl-ssh: subsystem {name} needs a VM: sftp -P 2222 NAME@HOST\n"
                    ),
                    status: 1,
                    ..Default::default()
                });
                break;
            }
            ChannelMsg::Close => return,
            _ => {}
        }
    }
    let Some(out) = output else { return };
    finish(rx, tx, out).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnect_packet_is_well_formed() {
        for message in [
            "",
            "x",
            "vmctl-ssh: connection rate limit per source address",
        ] {
            let bytes = disconnect_bytes(TOO_MANY_CONNECTIONS, message);
            let packet = bytes
                .strip_prefix(b"SSH-2.0-vmctl_ssh\r\n".as_slice())
                .unwrap();
            let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
            assert_eq!(packet.len(), 4 + length);
            assert_eq!(packet.len() % 8, 0);
            let padding = packet[4] as usize;
            assert!(padding >= 4);
            assert_eq!(packet[5], 1, "SSH_MSG_DISCONNECT");
            assert_eq!(packet[6..10], 12u32.to_be_bytes());
            let text_len = u32::from_be_bytes(packet[10..14].try_into().unwrap()) as usize;
            assert_eq!(&packet[14..14 + text_len], message.as_bytes());
        }
    }
}
