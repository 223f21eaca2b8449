//! vmctl-https: every VM at `https://NAME.<domain>/`.
//!
//! A socket-activated, unprivileged proxy (`vmctl-https.socket` on ports
//! 443 and 80, `vmctl-https.service` as user `vmctl-https`). It routes by
//! SNI and Host to the VM's address on the bridge and its published port,
//! asking vmctld (`io.vmctl.Gateway.ResolveRoute`), terminates TLS with a
//! given certificate or ones it orders from an ACME server, and lets only
//! the owner into a private VM after a one-time login link
//! (`vmctl login NAME`) has been exchanged for a signed session cookie.
//!
//! Modules: [`config`] (the file), [`route`] (name → VM), [`gateway`]
//! (vmctld client), [`proxy`] (one request), [`session`] (cookies),
//! [`tls`] and [`acme`] (certificates), [`limits`] (connection caps),
//! [`server`] (sockets and connections), [`pages`] (error pages).

pub mod acme;
pub mod config;
pub mod gateway;
pub mod limits;
pub mod pages;
pub mod proxy;
pub mod route;
pub mod server;
pub mod session;
pub mod tls;

/// The body of every response the proxy sends.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;

/// How often stored ACME certificates are checked for renewal.
pub const DEFAULT_RENEW_CHECK: Duration = Duration::from_secs(3600);

/// Builds the server from `config` with its state under `state_dir`,
/// asking vmctld at the configured socket.
pub fn build(config: config::Config, state_dir: &Path) -> anyhow::Result<Arc<server::Server>> {
    let vmctld = Arc::new(gateway::GatewayClient::new(config.varlink_socket.clone()));
    build_with(config, state_dir, vmctld)
}

/// Builds the server asking `vmctld` (tests give a table).
pub fn build_with(
    config: config::Config,
    state_dir: &Path,
    vmctld: Arc<dyn proxy::Vmctld>,
) -> anyhow::Result<Arc<server::Server>> {
    let challenges = Arc::new(acme::Challenges::default());
    let (store, issuer) = match &config.tls {
        config::TlsSource::Files { certificate, key } => {
            let cert = tls::Cert::from_files(certificate, key)?;
            (Arc::new(tls::CertStore::fixed(cert)), None)
        }
        config::TlsSource::Acme {
            directory,
            contact,
            root_ca,
        } => {
            let store = Arc::new(tls::CertStore::per_name());
            let issuer = acme::Issuer::new(
                acme::AcmeSettings {
                    directory: directory.clone(),
                    contact: contact.clone(),
                    root_ca: root_ca.clone(),
                    renew_before: config.acme_renew_before,
                },
                state_dir,
                store.clone(),
                challenges.clone(),
            )?;
            (store, Some(Arc::new(issuer)))
        }
    };
    let sessions = session::Sessions::open(state_dir, &config.domain, config.session_lifetime)
        .context("session key")?;
    let proxy = proxy::Proxy::new(&config.domain, vmctld, sessions, challenges);
    Ok(Arc::new(server::Server {
        proxy: Arc::new(proxy),
        tls: tls::server_config(store.clone()),
        certs: store,
        issuer,
        limiter: limits::ConnLimiter::new(config.max_connections_per_ip, config.max_connections),
        config,
    }))
}

/// Runs the proxy on `listeners` (renewing certificates in the
/// background, reloading a user-provided certificate on SIGHUP) until the
/// process ends.
pub async fn run(server: Arc<server::Server>, listeners: server::Listeners) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Before anything is served, so that a SIGHUP never finds the default
    // action (termination) in place.
    let mut hangups = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let reloading = server.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reloading.reload_certificate() {
                Ok(true) => tracing::info!("certificate reloaded"),
                Ok(false) => {
                    tracing::info!("SIGHUP: ACME certificates renew themselves; nothing to reload")
                }
                Err(e) => tracing::error!("certificate not reloaded, the old one stays: {e:#}"),
            }
        }
    });
    if let Some(issuer) = &server.issuer {
        tokio::spawn(issuer.clone().renew_loop(server.config.acme_renew_check));
    }
    server.run(listeners).await
}
