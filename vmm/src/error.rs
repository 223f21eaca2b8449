//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Anything that can go wrong while driving a VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The [`crate::VmConfig`] is invalid.
    #[error("invalid VM configuration: {0}")]
    Config(#[from] ConfigError),
    /// A child process (the VMM or a helper) could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// Why it failed.
        source: io::Error,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// QEMU answered a QMP command with an error.
    #[error("QMP {socket}: command {command} failed: {class}: {desc}")]
    Qmp {
        /// The QMP socket.
        socket: PathBuf,
        /// The command that failed.
        command: String,
        /// QMP error class (e.g. `GenericError`).
        class: String,
        /// QMP error description.
        desc: String,
    },
    /// The QMP peer broke the protocol or went away.
    #[error("QMP {socket}: {message}")]
    QmpProtocol {
        /// The QMP socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// cloud-hypervisor answered with a non-success HTTP status.
    #[error("cloud-hypervisor API {socket}: {method} {path} returned HTTP {status}: {body}")]
    Http {
        /// The API socket.
        socket: PathBuf,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Response body (usually cloud-hypervisor's error chain).
        body: String,
    },
    /// The HTTP exchange itself failed (bad response, connection closed).
    #[error("cloud-hypervisor API {socket}: {message}")]
    HttpProtocol {
        /// The API socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The VMM is a version the driver refuses to run (the message names
    /// the version found and the minimum).
    #[error("{0}")]
    UnsupportedVersion(String),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The VMM (or a helper) exited while we were waiting for it to come up.
    /// The message ends with the last lines it wrote to stderr, which say why
    /// (e.g. QEMU's `invalid kernel header`).
    #[error("{program} exited early with {status}{}", stderr_suffix(.stderr))]
    ExitedEarly {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its stderr (up to 10; empty if it wrote none).
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
