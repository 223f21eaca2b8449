//! Running the daemon: listen on both front ends, tell systemd we're
//! ready, serve until SIGTERM/SIGINT.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use vmctl_api::names::DBUS_NAME;

use crate::{
    activation::{self, Origin},
    dbus::{self, BusChoice},
    units::Systemd,
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
    /// The runtime directory (`/run/vmctl`).
    pub runtime_dir: PathBuf,
    /// The configuration file (`/etc/vmctl/vmctl.conf`).
    pub config_path: PathBuf,
    /// Where the bridge's subnet drop-in for systemd-networkd goes
    /// (`None`: leave networkd alone, as test daemons do).
    pub networkd_dropin_dir: Option<PathBuf>,
    /// Caps, timeouts and the size limit of the varlink server.
    pub varlink_limits: crate::varlink_server::Limits,
}

/// Runs the daemon until a termination signal.
pub async fn run(options: Options) -> anyhow::Result<()> {
    tracing::info!(
        "vmctld {} starting, state in {}",
        crate::VERSION,
        options.state_dir.display()
    );

    // Before the socket exists: a client may send SIGTERM as soon as it
    // can connect, and the start-up work below takes a moment.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let (std_listener, origin) = activation::varlink_listener(&options.varlink_address)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    match &origin {
        Origin::Activated => tracing::info!("varlink: using the socket passed by systemd"),
        Origin::Bound(path) => tracing::info!("varlink: listening on {}", path.display()),
    }

    // The bus connection serves org.vmctl.Manager1 and is also how the
    // manager asks systemd about the VM units.
    let bus = match &options.bus {
        None => {
            tracing::info!("D-Bus disabled (--no-dbus)");
            None
        }
        Some(bus) => match dbus::connect(bus).await {
            Ok(conn) => Some((bus, conn)),
            Err(e) if *bus == BusChoice::System => {
                tracing::warn!(
                    "D-Bus: the system bus is not available, serving varlink only: {e:#}"
                );
                None
            }
            Err(e) => return Err(e).context(format!("cannot connect to {bus}")),
        },
    };

    // The store is opened (migrated, older spec files imported) before
    // anything is served; without it vmctld cannot work.
    let registry = Registry::open(&options.state_dir).context("cannot open the store")?;
    let mut manager = Manager::new(registry)
        .with_runtime_dir(&options.runtime_dir)
        .with_config(&options.config_path);
    // A bad configuration is reported now, not only at the first create.
    match crate::addresses::NetworkConfig::load(&options.config_path) {
        Ok(config) => {
            if let Some(dir) = &options.networkd_dropin_dir {
                crate::bridge::apply(dir, &config, bus.as_ref().map(|(_, conn)| conn)).await;
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
    if let Some(systemd) = systemd_client(bus.as_ref()).await {
        manager = manager.with_systemd(systemd);
    }
    // Finish or undo what a killed vmctld left half done, before any new
    // call; running VMs are left alone. Repairs after an import of many
    // old specs (host keys, unit limits) may outlast the start timeout.
    notify(&[
        NotifyState::Status("Reconciling the store with reality"),
        NotifyState::ExtendTimeoutUsec(300_000_000),
    ]);
    match manager.reconcile(true).await {
        Ok(findings) if findings.is_empty() => tracing::info!("reconcile: store and reality agree"),
        Ok(findings) => tracing::info!("reconcile: {} finding(s), see above", findings.len()),
        Err(e) => tracing::error!("reconcile: {e}"),
    }
    if let Err(e) = manager.publish_all() {
        tracing::warn!("cannot publish VM names and host keys: {e}");
    }
    let manager = Arc::new(manager);
    // VM states and events follow systemd's signals from here on.
    if let Some((_, conn)) = &bus {
        tokio::spawn(crate::events::watch(conn.clone(), manager.events().clone()));
    }

    let mut serving_dbus = false;
    if let Some((choice, conn)) = &bus {
        match dbus::serve(conn, manager.clone()).await {
            Ok(()) => {
                tracing::info!("D-Bus: serving {DBUS_NAME} on {choice}");
                serving_dbus = true;
            }
            Err(e) if **choice == BusChoice::System => tracing::warn!(
                "D-Bus: cannot serve {DBUS_NAME} on the system bus, serving varlink only: {e:#}"
            ),
            Err(e) => return Err(e).context(format!("cannot serve {DBUS_NAME}")),
        }
    }

    let status = if serving_dbus {
        "Serving varlink and D-Bus"
    } else {
        "Serving varlink"
    };
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);

    let result = tokio::select! {
        r = crate::varlink::serve(listener, manager, options.varlink_limits) => r.context("varlink server failed"),
        _ = sigterm.recv() => { tracing::info!("SIGTERM received, exiting"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT received, exiting"); Ok(()) }
    };
    notify(&[NotifyState::Stopping, NotifyState::Status("Shutting down")]);
    if let Origin::Bound(path) = origin {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// How vmctld talks to systemd: over the bus it serves on (see
/// [`crate::units`] for why not systemd's private socket), subscribed to
/// job signals; with `--no-dbus` not at all.
async fn systemd_client(bus: Option<&(&BusChoice, zbus::Connection)>) -> Option<Systemd> {
    let (_, conn) = bus?;
    let systemd = Systemd::new(conn.clone());
    if let Err(e) = systemd.subscribe().await {
        tracing::warn!("systemd: cannot subscribe to job signals: {e}");
    }
    Some(systemd)
}

/// Sends a notification to systemd; a no-op when not run by systemd.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
