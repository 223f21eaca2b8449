//! Running the daemon: listen on both front ends, tell systemd we're
//! ready, serve until SIGTERM/SIGINT.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use zlink::tokio::unix;

use crate::{
    activation::{self, Origin},
    dbus::{self, BusChoice},
    Manager, Registry,
};

/// What the daemon should do, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Socket path to bind when not socket-activated.
    pub varlink_address: PathBuf,
    /// Which bus to serve on, or `None` for no D-Bus.
    pub bus: Option<BusChoice>,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// Runs the daemon until a termination signal.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let manager = Arc::new(Manager::new(Registry::new(&options.state_dir)));
    tracing::info!(
        "vmctld {} starting, state in {}",
        crate::VERSION,
        options.state_dir.display()
    );

    let (std_listener, origin) = activation::varlink_listener(&options.varlink_address)?;
    let listener = unix::Listener::from(tokio::net::UnixListener::from_std(std_listener)?);
    match &origin {
        Origin::Activated => tracing::info!("varlink: using the socket passed by systemd"),
        Origin::Bound(path) => tracing::info!("varlink: listening on {}", path.display()),
    }

    let _bus = match &options.bus {
        None => {
            tracing::info!("D-Bus disabled (--no-dbus)");
            None
        }
        Some(BusChoice::System) => {
            match dbus::serve(&BusChoice::System, manager.clone()).await {
                Ok(conn) => {
                    tracing::info!(
                        "D-Bus: serving {} on the system bus",
                        vmctl_api::names::DBUS_NAME
                    );
                    Some(conn)
                }
                Err(e) => {
                    tracing::warn!("D-Bus: not available, serving varlink only: cannot use the system bus: {e:#}");
                    None
                }
            }
        }
        Some(bus @ BusChoice::Address(address)) => {
            let conn = dbus::serve(bus, manager.clone())
                .await
                .with_context(|| format!("cannot serve on the D-Bus bus at {address}"))?;
            tracing::info!(
                "D-Bus: serving {} on {address}",
                vmctl_api::names::DBUS_NAME
            );
            Some(conn)
        }
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let status = format!(
        "Serving varlink{}",
        if _bus.is_some() { " and D-Bus" } else { "" }
    );
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let result = tokio::select! {
        r = crate::varlink::serve(listener, manager) => r.context("varlink server failed"),
        _ = sigterm.recv() => { tracing::info!("SIGTERM received, exiting"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT received, exiting"); Ok(()) }
    };
    notify(&[NotifyState::Stopping, NotifyState::Status("Shutting down")]);
    if let Origin::Bound(path) = origin {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Sends a notification to systemd; a no-op when not run by systemd.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
