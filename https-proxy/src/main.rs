//! `vmctl-https`: the HTTPS proxy service (see the library's docs).

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};
use vmctl_https::{config::Config, server::Listeners};

/// Serves every VM at https://NAME.<domain>/.
#[derive(Debug, Parser)]
#[command(name = "vmctl-https", version)]
struct Args {
    /// The configuration file.
    #[arg(long, default_value = vmctl_https::config::DEFAULT_PATH)]
    config: PathBuf,
    /// The state directory (certificates, ACME account, session key);
    /// systemd sets $STATE_DIRECTORY.
    #[arg(long, env = "STATE_DIRECTORY", default_value = "/var/lib/vmctl-https")]
    state_dir: PathBuf,
    /// Without socket activation: the HTTPS address to listen on.
    #[arg(long, default_value = "[::]:443")]
    listen_https: SocketAddr,
    /// Without socket activation: the plain HTTP address to listen on.
    #[arg(long)]
    listen_http: Option<SocketAddr>,
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("vmctl-https".into()))
                .init();
            return;
        }
    }
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
}

// This thread accepts, renews certificates and waits for signals; the
// connections are served by one worker thread per core (see `server`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    let listeners = match Listeners::from_systemd()? {
        Some(l) => l,
        None => Listeners::bind(args.listen_https, args.listen_http)?,
    };
    let server = vmctl_https::build(config, &args.state_dir)
        .with_context(|| format!("state directory {}", args.state_dir.display()))?;
    let _ = sd_notify::notify(true, &[sd_notify::NotifyState::Ready]);
    tokio::select! {
        r = vmctl_https::run(server, listeners) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate() => Ok(()),
    }
}

async fn terminate() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
    }
}
