//! The varlink client of vmctld: connect to the socket, call a method,
//! turn every failure into an error a person can act on.

use std::{
    fmt,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use vmctl_api::{names::SOCKET_UNIT, ErrorReply};
use zlink::{tokio::unix, Call, Connection};

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be connected to.
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke or the reply could not be understood.
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The daemon answered with a varlink error.
    Daemon(ErrorReply),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { path, source } => write!(
                f,
                "cannot connect to vmctld at {}: {source}\n\
                 hint: is vmctld running? Check with: systemctl status {SOCKET_UNIT}",
                path.display()
            ),
            Self::Protocol { path, message } => write!(
                f,
                "communication with vmctld at {} failed: {message}",
                path.display()
            ),
            Self::Daemon(reply) => write!(f, "{reply}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Whether calls let polkit prompt (`--ask-password`; see
/// [`allow_interactive_authentication`]).
static INTERACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on every call lets polkit ask this process's authentication
/// agent for a password (`allowInteractiveAuthentication`).
pub fn allow_interactive_authentication() {
    INTERACTIVE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `parameters` with `allowInteractiveAuthentication: true` when
/// `interactive`.
fn with_interaction(parameters: Option<Value>, interactive: bool) -> Option<Value> {
    if !interactive {
        return parameters;
    }
    let mut map = match parameters {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => serde_json::Map::new(),
        other => return other,
    };
    map.insert("allowInteractiveAuthentication".into(), Value::Bool(true));
    Some(Value::Object(map))
}

/// A connection to vmctld.
pub struct Client {
    path: PathBuf,
    conn: Connection<unix::Stream>,
}

/// A method call on the wire: `{"method": ..., "parameters": ...}`.
#[derive(Debug, Serialize)]
struct Method<'a> {
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

impl Client {
    /// Connects to the varlink socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(connect_error)?;
        let stream = unix::Stream::try_from(stream).map_err(|e| ClientError::Protocol {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Connection::new(stream),
        })
    }

    /// Calls `method` (fully qualified) and decodes the reply parameters.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: Option<Value>,
    ) -> Result<T, ClientError> {
        Ok(self.call_with_fds(method, parameters).await?.0)
    }

    /// Calls `method` and returns the decoded reply parameters with the
    /// descriptors that came with the reply (`SCM_RIGHTS`).
    pub async fn call_with_fds<T: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: Option<Value>,
    ) -> Result<(T, Vec<OwnedFd>), ClientError> {
        self.call_sending_fds(method, parameters, Vec::new()).await
    }

    /// Calls `method` sending `fds` with the call (`SCM_RIGHTS`: files this
    /// process opened, e.g. for `ImportImage`), like [`Client::call_with_fds`].
    pub async fn call_sending_fds<T: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: Option<Value>,
        fds: Vec<OwnedFd>,
    ) -> Result<(T, Vec<OwnedFd>), ClientError> {
        let protocol = |message: String| ClientError::Protocol {
            path: self.path.clone(),
            message,
        };
        let interactive = INTERACTIVE.load(std::sync::atomic::Ordering::Relaxed);
        let parameters = with_interaction(parameters, interactive);
        let call = Call::new(Method { method, parameters });
        let (reply, fds) = self
            .conn
            .call_method::<_, Value, ErrorReply>(&call, fds)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let params = reply
            .map_err(ClientError::Daemon)?
            .into_parameters()
            .unwrap_or(Value::Null);
        let params = serde_json::from_value(params)
            .map_err(|e| protocol(format!("unexpected reply to {method}: {e}")))?;
        Ok((params, fds))
    }

    /// Asks vmctld for `channel` (`agent` or `console`) of VM `name`: the
    /// reply to `OpenGuest` carries a socket already connected to it.
    pub async fn open_guest(
        &mut self,
        name: &str,
        channel: &str,
    ) -> Result<tokio::net::UnixStream, ClientError> {
        let method = format!("{}.OpenGuest", vmctl_api::names::VARLINK_INTERFACE);
        let parameters = serde_json::json!({ "name": name, "channel": channel });
        let (_, fds): (Value, _) = self.call_with_fds(&method, Some(parameters)).await?;
        let protocol = |message: String| ClientError::Protocol {
            path: self.path.clone(),
            message,
        };
        // Exactly one is expected; any others are closed here.
        let fd = fds
            .into_iter()
            .next()
            .ok_or_else(|| protocol("OpenGuest replied without a descriptor".into()))?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(stream))
            .map_err(|e| protocol(format!("unusable descriptor from OpenGuest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn interaction_is_one_more_parameter() {
        let key = "allowInteractiveAuthentication";
        assert_eq!(with_interaction(None, false), None);
        assert_eq!(with_interaction(None, true), Some(json!({ key: true })));
        assert_eq!(
            with_interaction(Some(json!({ "name": "a" })), true),
            Some(json!({ "name": "a", key: true }))
        );
    }
}
