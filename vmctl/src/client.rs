//! vmctl's connection to vmctld: the varlink client shared with the
//! gateways ([`vmctl_api::client`]), letting polkit prompt when the
//! command line asked for it.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

pub use vmctl_api::client::{Client, ClientError};

/// Whether calls let polkit prompt (see
/// [`allow_interactive_authentication`]).
static INTERACTIVE: AtomicBool = AtomicBool::new(false);

/// From now on every connection lets polkit ask this process's
/// authentication agent for a password (`allowInteractiveAuthentication`).
pub fn allow_interactive_authentication() {
    INTERACTIVE.store(true, Ordering::Relaxed);
}

/// Connects to vmctld's varlink socket at `path`.
pub async fn connect(path: &Path) -> Result<Client, ClientError> {
    Ok(Client::connect(path)
        .await?
        .interactive(INTERACTIVE.load(Ordering::Relaxed)))
}
