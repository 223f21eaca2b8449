//! The calls the gateway makes to vmctld, over its varlink socket.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use vmctl_api::{
    client::{Client, ClientError},
    names::{GATEWAY_INTERFACE, VARLINK_INTERFACE},
    DetailsReply, VmDetails,
};

/// The error vmctld answers `LookupSSHKey` with for a key nobody
/// registered.
pub const NO_SUCH_KEY: &str = "io.vmctl.Gateway.NoSuchKey";

/// The error of `RegisterSSHKey` when registration is off or full.
pub const REGISTRATION_REFUSED: &str = "io.vmctl.Gateway.RegistrationRefused";

/// The user a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Identity {
    /// The user's uid: every call is made `onBehalfOf` it.
    pub uid: u32,
    /// The user's name.
    pub user: String,
}

/// vmctld at a socket path.
#[derive(Debug, Clone)]
pub struct Vmctld {
    path: PathBuf,
}

impl Vmctld {
    /// vmctld at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// A new connection (one per operation: calls are rare and short, and
    /// a broken connection then never outlives one command).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.path).await
    }

    /// Checks that vmctld takes this process for a gateway (`Hello`).
    pub async fn hello(&self) -> Result<String, ClientError> {
        #[derive(Deserialize)]
        struct Reply {
            gateway: String,
        }
        let mut client = self.connect().await?;
        let reply: Reply = client
            .call(&format!("{GATEWAY_INTERFACE}.Hello"), None)
            .await?;
        Ok(reply.gateway)
    }

    /// Hands vmctld the gateway's public key for guests
    /// (`SetGuestClientKey`): VMs started from now on trust it.
    pub async fn set_guest_client_key(&self, key: &str) -> Result<(), ClientError> {
        let mut client = self.connect().await?;
        client
            .call::<Value>(
                &format!("{GATEWAY_INTERFACE}.SetGuestClientKey"),
                Some(json!({ "key": key })),
            )
            .await
            .map(drop)
    }

    /// The owner of public key `key` (`TYPE BASE64`), `None` if nobody
    /// registered it.
    pub async fn lookup_key(&self, key: &str) -> Result<Option<Identity>, ClientError> {
        let mut client = self.connect().await?;
        let reply = client
            .call::<Identity>(
                &format!("{GATEWAY_INTERFACE}.LookupSSHKey"),
                Some(json!({ "key": key })),
            )
            .await;
        match reply {
            Ok(identity) => Ok(Some(identity)),
            Err(e) if e.error_name() == Some(NO_SUCH_KEY) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether an unknown key may register (`RegistrationOpen`).
    pub async fn registration_open(&self) -> Result<bool, ClientError> {
        #[derive(Deserialize)]
        struct Reply {
            open: bool,
        }
        let mut client = self.connect().await?;
        let reply: Reply = client
            .call(&format!("{GATEWAY_INTERFACE}.RegistrationOpen"), None)
            .await?;
        Ok(reply.open)
    }

    /// Makes account `name` for the unknown key `key` (`RegisterSSHKey`).
    pub async fn register(&self, name: &str, key: &str) -> Result<Identity, ClientError> {
        let mut client = self.connect().await?;
        client
            .call(
                &format!("{GATEWAY_INTERFACE}.RegisterSSHKey"),
                Some(json!({ "name": name, "key": key })),
            )
            .await
    }

    /// Calls `io.vmctl.Manager.<member>` for `uid`.
    pub async fn manager<T: serde::de::DeserializeOwned>(
        &self,
        uid: u32,
        member: &str,
        parameters: Value,
    ) -> Result<T, ClientError> {
        let mut client = self.connect().await?;
        client
            .call_for(
                uid,
                &format!("{VARLINK_INTERFACE}.{member}"),
                Some(parameters),
            )
            .await
    }

    /// `Describe` of VM `name` for `uid`.
    pub async fn describe(&self, uid: u32, name: &str) -> Result<VmDetails, ClientError> {
        let reply: DetailsReply = self
            .manager(uid, "Describe", json!({ "name": name }))
            .await?;
        Ok(reply.vm)
    }
}
