//! The proxy's client of vmctld's gateway-only interface
//! (`io.vmctl.Gateway` on `/run/vmctl/io.vmctl.Manager`). vmctld knows the
//! proxy by its uid (the `vmctl-https` user) and answers only gateways.

use std::{net::Ipv4Addr, path::PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use vmctl_api::{errors::NO_SUCH_VM, names::GATEWAY_INTERFACE, ErrorReply};
use zlink::{tokio::unix, Call, Connection};

use crate::route::Route;

/// A call to vmctld that failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// vmctld could not be reached or spoke nonsense.
    #[error("vmctld at {path}: {message}")]
    Transport {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// vmctld answered with an error.
    #[error("vmctld: {0}")]
    Daemon(ErrorReply),
}

#[derive(Debug, Serialize)]
struct Method<'a> {
    method: &'a str,
    parameters: Value,
}

#[derive(Debug, Deserialize)]
struct RouteReply {
    ipv4: Option<String>,
    port: i64,
    owner_uid: i64,
    // Absent from a vmctld older than sharing.
    #[serde(default)]
    shared_uids: Vec<i64>,
    public: bool,
    state: String,
}

/// Who a redeemed login token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Login {
    /// The user's uid.
    pub uid: u32,
    /// The user's name.
    pub user: String,
}

/// One connection to vmctld, reopened when it breaks (vmctld closes idle
/// connections after 30 s).
pub struct GatewayClient {
    path: PathBuf,
    conn: Mutex<Option<Connection<unix::Stream>>>,
}

impl GatewayClient {
    /// A client of the socket at `path` (connected on first use).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: Mutex::new(None),
        }
    }

    fn transport(&self, message: impl ToString) -> GatewayError {
        GatewayError::Transport {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    async fn connect(&self) -> Result<Connection<unix::Stream>, GatewayError> {
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .map_err(|e| self.transport(e))?;
        let stream = unix::Stream::try_from(stream).map_err(|e| self.transport(e))?;
        Ok(Connection::new(stream))
    }

    /// Calls `io.vmctl.Gateway.METHOD`; a broken cached connection is
    /// replaced once.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        parameters: Value,
    ) -> Result<T, GatewayError> {
        let method = format!("{GATEWAY_INTERFACE}.{method}");
        let call = Call::new(Method {
            method: &method,
            parameters,
        });
        let mut guard = self.conn.lock().await;
        for attempt in 0..2 {
            let conn = match guard.as_mut() {
                Some(conn) => conn,
                None => guard.insert(self.connect().await?),
            };
            match conn
                .call_method::<_, Value, ErrorReply>(&call, Vec::new())
                .await
            {
                Ok((reply, _fds)) => {
                    let params = reply
                        .map_err(GatewayError::Daemon)?
                        .into_parameters()
                        .unwrap_or(Value::Null);
                    return serde_json::from_value(params)
                        .map_err(|e| self.transport(format!("unexpected reply to {method}: {e}")));
                }
                Err(e) => {
                    *guard = None;
                    if attempt == 1 {
                        return Err(self.transport(e));
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Where VM `name` listens and who may see it; `None`: no such VM.
    pub async fn resolve_route(&self, name: &str) -> Result<Option<Route>, GatewayError> {
        let reply: RouteReply = match self.call("ResolveRoute", json!({ "name": name })).await {
            Err(GatewayError::Daemon(e)) if e.error == NO_SUCH_VM => return Ok(None),
            other => other?,
        };
        let ipv4 = match reply.ipv4.as_deref() {
            Some(a) => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|e| self.transport(format!("ResolveRoute: ipv4 {a:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(Route {
            name: name.to_string(),
            ipv4,
            port: u16::try_from(reply.port)
                .map_err(|_| self.transport(format!("ResolveRoute: port {}", reply.port)))?,
            owner_uid: u32::try_from(reply.owner_uid)
                .map_err(|_| self.transport(format!("ResolveRoute: uid {}", reply.owner_uid)))?,
            shared_uids: reply
                .shared_uids
                .iter()
                .map(|&uid| {
                    u32::try_from(uid)
                        .map_err(|_| self.transport(format!("ResolveRoute: shared uid {uid}")))
                })
                .collect::<Result<_, _>>()?,
            public: reply.public,
            state: reply.state,
        }))
    }

    /// Exchanges a one-time login token for the user it was issued to;
    /// `None`: unknown, used or expired.
    pub async fn redeem_login_token(&self, token: &str) -> Result<Option<Login>, GatewayError> {
        match self
            .call("RedeemLoginToken", json!({ "token": token }))
            .await
        {
            Ok(login) => Ok(Some(login)),
            Err(GatewayError::Daemon(e)) if e.error == INVALID_LOGIN_TOKEN => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The error vmctld answers for a token that is unknown, used or expired.
pub const INVALID_LOGIN_TOKEN: &str = "io.vmctl.Gateway.InvalidLoginToken";
