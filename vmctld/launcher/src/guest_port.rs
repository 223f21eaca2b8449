//! The accept loop shared by the host vsock ports any guest process can
//! reach (1025, the agent's hello; 1026, guest systemd's notify messages).
//!
//! Each connection is handled by its own task, so one that stays open
//! without sending delays no other; at most `max_connections` are handled
//! at once and a connection beyond that is closed at once. Accept errors
//! and refusals are logged through the caller's rate-limited warnings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ratelimit::GuestWarnings;

/// Accepts connections on `listener` for as long as the launcher runs and
/// runs `handle` for each in its own task. `handle` gets the connection's
/// slot: the slot is free again when `handle` drops it. `port` names the
/// port in log lines.
pub fn serve<F, Fut>(
    listener: UnixListener,
    port: &'static str,
    max_connections: usize,
    warnings: GuestWarnings,
    handle: F,
) where
    F: Fn(UnixStream, OwnedSemaphorePermit) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warnings.warn(|| format!("{port}: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                warnings.warn(|| {
                    format!("{port}: {max_connections} connections already open; closed a new one")
                });
                continue;
            };
            tokio::spawn(handle(stream, slot));
        }
    });
}
