//! The varlink client of vmctld, shared by `vmctl` and the gateways
//! (`vmctl-ssh`, `vmctl-https`): connect to the socket, call a method,
//! optionally letting polkit prompt (`allowInteractiveAuthentication`) or
//! acting for a user (`onBehalfOf`, gateways only), and turn every failure
//! into an error a person can act on. Built with the `client` feature (it
//! pulls in tokio and zlink, which the NSS module must not).

use std::{
    fmt,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use zlink::{tokio::unix, Call, Connection};

use crate::{names::SOCKET_UNIT, ErrorReply};

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

impl ClientError {
    /// The varlink error name, when the daemon answered with one.
    pub fn error_name(&self) -> Option<&str> {
        match self {
            Self::Daemon(reply) => Some(&reply.error),
            _ => None,
        }
    }
}

/// A method call on the wire: `{"method": ..., "parameters": ...}`.
#[derive(Debug, Serialize)]
struct Method<'a> {
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

/// `parameters` with `onBehalfOf: uid` added (the gateway contract).
pub fn on_behalf_of(parameters: Option<Value>, uid: u32) -> Value {
    with_parameter(parameters, "onBehalfOf", Value::from(uid))
}

/// `parameters` (an object, or none) with `key: value` added.
fn with_parameter(parameters: Option<Value>, key: &str, value: Value) -> Value {
    let mut map = match parameters {
        Some(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    map.insert(key.into(), value);
    Value::Object(map)
}

/// A connection to vmctld.
pub struct Client {
    path: PathBuf,
    conn: Connection<unix::Stream>,
    /// Whether calls let polkit ask the caller's agent for a password.
    interactive: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("path", &self.path).finish()
    }
}

impl Client {
    /// Connects to the varlink socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let stream = unix::Stream::try_from(stream).map_err(|e| ClientError::Protocol {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Connection::new(stream),
            interactive: false,
        })
    }

    /// Lets every call of this connection, when `interactive`, have polkit
    /// ask the caller's authentication agent for a password
    /// (`allowInteractiveAuthentication: true`).
    pub fn interactive(mut self, interactive: bool) -> Self {
        self.interactive = interactive;
        self
    }

    /// Calls `method` (fully qualified) and decodes the reply parameters.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: Option<Value>,
    ) -> Result<T, ClientError> {
        Ok(self.call_with_fds(method, parameters).await?.0)
    }

    /// Calls `method` for the user `uid` (adds `onBehalfOf`).
    pub async fn call_for<T: DeserializeOwned>(
        &mut self,
        uid: u32,
        method: &str,
        parameters: Option<Value>,
    ) -> Result<T, ClientError> {
        self.call(method, Some(on_behalf_of(parameters, uid))).await
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
        let parameters = match self.interactive {
            true => Some(with_parameter(
                parameters,
                "allowInteractiveAuthentication",
                Value::Bool(true),
            )),
            false => parameters,
        };
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

    /// Asks vmctld for `channel` (`agent`, `console`, `ssh`) of VM `name`:
    /// the reply to `OpenGuest` carries a socket already connected to it.
    pub async fn open_guest(
        &mut self,
        name: &str,
        channel: &str,
    ) -> Result<tokio::net::UnixStream, ClientError> {
        let parameters = serde_json::json!({ "name": name, "channel": channel });
        self.open_guest_with(parameters).await
    }

    /// Asks vmctld, for user `uid`, for `channel` of VM `name` (`OpenGuest`):
    /// the reply carries a socket already connected to it.
    pub async fn open_guest_for(
        &mut self,
        uid: u32,
        name: &str,
        channel: &str,
    ) -> Result<tokio::net::UnixStream, ClientError> {
        let parameters = on_behalf_of(
            Some(serde_json::json!({ "name": name, "channel": channel })),
            uid,
        );
        self.open_guest_with(parameters).await
    }

    async fn open_guest_with(
        &mut self,
        parameters: Value,
    ) -> Result<tokio::net::UnixStream, ClientError> {
        let method = format!("{}.OpenGuest", crate::names::VARLINK_INTERFACE);
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
        assert_eq!(with_parameter(None, key, json!(true)), json!({ key: true }));
        assert_eq!(
            with_parameter(Some(json!({ "name": "a" })), key, json!(true)),
            json!({ "name": "a", key: true })
        );
    }

    #[test]
    fn on_behalf_of_is_one_more_parameter() {
        assert_eq!(on_behalf_of(None, 1000), json!({ "onBehalfOf": 1000 }));
        assert_eq!(
            on_behalf_of(Some(json!({ "name": "a" })), 1001),
            json!({ "name": "a", "onBehalfOf": 1001 })
        );
    }
}
