//! Logging setup: journald-native when started by systemd, plain text
//! otherwise.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber. `RUST_LOG` overrides the default level
/// (`info`). Under systemd (`JOURNAL_STREAM` set) records go to journald
/// with proper priorities; otherwise to stderr, without timestamps and
/// colours when stderr is not a terminal.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_journal {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("vmctld".into()))
                .init();
            return;
        }
    }
    let tty = std::io::stderr().is_terminal() && !under_journal;
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .with_target(false);
    if tty {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer.without_time())
            .init();
    }
}
