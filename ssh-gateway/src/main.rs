//! `vmctl-ssh`: the SSH gateway daemon (see the library for how it works).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use vmctl_api::names::VARLINK_SOCKET_PATH;
use vmctl_ssh::{
    activation, keys,
    limits::{LimitState, Limits},
    server::{self, Shared},
    vmctld::Vmctld,
};

/// vmctl's SSH gateway: started by vmctl-ssh.socket.
#[derive(Debug, Parser)]
#[command(name = "vmctl-ssh", version)]
struct Args {
    /// Listen here when not started by systemd (development).
    #[arg(long, value_name = "ADDRESS")]
    listen: Option<String>,
    /// The state directory with the keys [default: $STATE_DIRECTORY].
    #[arg(long, value_name = "DIR", env = "STATE_DIRECTORY")]
    state_directory: PathBuf,
    /// vmctld's varlink socket.
    #[arg(long, value_name = "PATH", default_value = VARLINK_SOCKET_PATH)]
    address: PathBuf,
    /// vmctld's published guest host keys.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/vmctl/ssh_known_hosts"
    )]
    known_hosts: PathBuf,
    /// Seconds from connect to successful authentication.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    auth_timeout: u64,
    /// Seconds without traffic before a connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    idle_timeout: u64,
    /// Connections one user may hold at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_sessions_per_user: usize,
    /// Channels one connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_channels_per_connection: usize,
    /// New connections per source address per minute.
    #[arg(long, value_name = "N", default_value_t = 60)]
    rate_per_source: u32,
    /// Authentications per key per minute.
    #[arg(long, value_name = "N", default_value_t = 60)]
    rate_per_key: u32,
    /// Let clients forward their SSH agent into their VMs (`ssh -A`).
    /// Off by default: a VM's root could then use the agent's keys while
    /// the session lasts.
    #[arg(long)]
    agent_forwarding: bool,
    /// Make the keys if they are missing, hand vmctld the public key
    /// guests are to trust, and exit (vmctl-ssh-key.service, pulled in by
    /// the socket, so VMs started before the first connection trust it).
    #[arg(long)]
    hand_over_key: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hand_over_key {
        init_logging();
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(hand_over_key(&args));
    }
    // Before any thread exists: LISTEN_FDS is read and unset here.
    let listener = activation::listener(args.listen.as_deref())?;
    init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args, listener))
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMCTL_SSH_LOG")
        .unwrap_or_else(|_| "info,russh=warn".into());
    let registry = tracing_subscriber::registry().with(filter);
    match tracing_journald::layer() {
        Ok(journald) if std::env::var_os("JOURNAL_STREAM").is_some() => {
            registry.with(journald).init()
        }
        _ => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

/// `--hand-over-key`: both keys made if missing, the client key given to
/// vmctld; any failure is the unit's failure.
async fn hand_over_key(args: &Args) -> anyhow::Result<()> {
    keys::load_or_generate(&args.state_directory.join(keys::HOST_KEY_FILE))?;
    let client_key = keys::load_or_generate(&args.state_directory.join(keys::CLIENT_KEY_FILE))?;
    let vmctld = Vmctld::new(&args.address);
    vmctld
        .set_guest_client_key(&keys::key_line(client_key.public_key()))
        .await
        .context("cannot hand vmctld the gateway's key for guests")?;
    tracing::info!("vmctld has the gateway's key for guests");
    Ok(())
}

async fn run(args: Args, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let host_key = keys::load_or_generate(&args.state_directory.join(keys::HOST_KEY_FILE))?;
    let client_key = keys::load_or_generate(&args.state_directory.join(keys::CLIENT_KEY_FILE))?;
    let vmctld = Vmctld::new(&args.address);
    match vmctld.hello().await {
        Ok(name) => tracing::info!("vmctld takes this process for gateway {name}"),
        // Not fatal: vmctld may come later; each call reports its error.
        Err(e) => tracing::warn!("vmctld does not accept this gateway (yet): {e}"),
    }
    let client_public = keys::key_line(client_key.public_key());
    if let Err(e) = vmctld.set_guest_client_key(&client_public).await {
        tracing::warn!("cannot hand vmctld the key for guests (proxy mode will fail): {e}");
    }
    let limits = Limits {
        auth_timeout: Duration::from_secs(args.auth_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_sessions_per_user: args.max_sessions_per_user,
        max_channels_per_connection: args.max_channels_per_connection,
        connections_per_source_per_minute: args.rate_per_source,
        connections_per_key_per_minute: args.rate_per_key,
        ..Limits::default()
    };
    let shared = Arc::new(Shared {
        vmctld,
        limits: LimitState::new(limits),
        client_key: Arc::new(client_key),
        known_hosts: args.known_hosts,
        agent_forwarding: args.agent_forwarding,
    });
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::select! {
        result = server::serve(listener, host_key, shared) => result.context("serving SSH"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
