//! Guest access for owners: `vmctl exec`, `shell`, `cp` and `console` for
//! the VM's owner (and holders of manage-any), without opening the VM's
//! root-only sockets to anybody.
//!
//! The hybrid-vsock socket (`/run/vmctl/vm/NAME/vsock`, the guest agent
//! behind `CONNECT 1024`) and the launcher's console socket stay `0600`
//! root. vmctld checks the caller (the VM must be visible to it, and polkit
//! must grant `org.vmctl.vm.manage-own`), connects to the socket itself,
//! does the hybrid-vsock handshake, and hands the already connected
//! descriptor to the client: over varlink as `SCM_RIGHTS` ancillary data on
//! the reply to `OpenGuest`, over D-Bus as an `h` return value. From then
//! on the client speaks to the guest directly; vmctld copies nothing, so
//! exec latency and throughput are those of the root path.
//!
//! What a caller can hold is bounded: one varlink connection receives at
//! most [`MAX_FDS_PER_CONNECTION`] descriptors (and each uid only a few
//! connections, see [`crate::admission`]), and vmctld keeps no copy of a
//! descriptor it has handed off.

use std::{fmt, io, os::fd::OwnedFd, path::Path, str::FromStr, time::Duration};

use tokio::net::UnixStream;
use vmctl_guest::client::{connect_hybrid_vsock, ClientError};

use crate::{manager::STATE_UNKNOWN, Caller, Manager, ManagerError};

/// How many guest descriptors one varlink connection may be handed. `vmctl`
/// needs one per command; the cap only stops a client from making guest
/// connections without end on one varlink connection.
pub const MAX_FDS_PER_CONNECTION: usize = 16;

/// The guest's sshd on vsock (`systemd-ssh-generator`'s `sshd-vsock.socket`).
pub const GUEST_SSH_PORT: u32 = 22;

/// How long vmctld waits for the VMM to answer `CONNECT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What of a guest a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A connection to the guest agent (vsock port 1024): exec, shell, cp.
    Agent,
    /// The serial console, as the launcher serves it.
    Console,
    /// The guest's sshd on vsock port 22 (systemd's ssh generator makes it
    /// listen there in a VM): the SSH gateway's way into a guest.
    Ssh,
}

impl Channel {
    /// The name on the wire: `agent` or `console`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Console => "console",
            Self::Ssh => "ssh",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = ManagerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Self::Agent),
            "console" => Ok(Self::Console),
            "ssh" => Ok(Self::Ssh),
            other => Err(ManagerError::InvalidArgument {
                what: "channel".into(),
                reason: format!("{other:?} is not one of \"agent\", \"console\", \"ssh\""),
            }),
        }
    }
}

impl Manager {
    /// Opens `channel` of VM `name` for `caller` and returns the connected
    /// descriptor, ready to be handed to the caller.
    ///
    /// A VM the caller may not see is `NoSuchVM`, exactly as a missing one;
    /// a visible VM needs `manage-own` for its owner and `manage-any` for
    /// anybody else (polkit); a VM that is not running is `VMNotRunning`
    /// naming its state.
    pub async fn open_guest(
        &self,
        caller: &Caller,
        name: &str,
        channel: Channel,
    ) -> Result<OwnedFd, ManagerError> {
        self.manageable_unit(caller, name).await?;
        let connected = match channel {
            Channel::Agent => {
                let socket = self.layout().vsock_socket(name);
                connect_agent(&socket).await
            }
            Channel::Ssh => {
                let socket = self.layout().vsock_socket(name);
                connect_hybrid_vsock(&socket, GUEST_SSH_PORT, HANDSHAKE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
            Channel::Console => {
                let socket = self.layout().console_socket(name);
                UnixStream::connect(&socket)
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))
            }
        };
        let stream = match connected {
            Ok(stream) => stream,
            Err(why) => return Err(self.not_reachable(name, channel, why).await),
        };
        let stream = stream.into_std().map_err(ManagerError::internal)?;
        tracing::info!("handed the {channel} of VM {name} to uid {}", caller.uid);
        Ok(OwnedFd::from(stream))
    }

    /// The error for a guest that could not be reached: `VMNotRunning`
    /// unless systemd says the VM runs.
    async fn not_reachable(&self, name: &str, channel: Channel, why: String) -> ManagerError {
        let state = self.vm_state(name).await;
        match state.as_str() {
            "running" | STATE_UNKNOWN => {
                ManagerError::internal(format!("cannot reach the {channel} of VM {name}: {why}"))
            }
            _ => ManagerError::VmNotRunning {
                name: name.into(),
                state,
            },
        }
    }
}

/// Connects to the guest agent through the hybrid-vsock socket `socket`.
async fn connect_agent(socket: &Path) -> Result<UnixStream, String> {
    connect_hybrid_vsock(socket, vmctl_guest::AGENT_PORT, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| match e {
            ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                format!("{} does not exist", socket.display())
            }
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Action, Authority};
    use crate::registry::testing::{spec, write};
    use crate::Registry;
    use std::os::unix::net::UnixStream as StdStream;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// A manager with VM `blog` of uid 1000 under a temporary state and
    /// runtime directory, and VM `mine` of uid 1002; uid 1000 and 1001 hold
    /// manage-own, 1002 nothing.
    fn manager(dir: &Path) -> Manager {
        for (name, uid) in [("blog", 1000), ("mine", 1002)] {
            let json = serde_json::to_string(&spec(name, uid)).unwrap();
            write(dir, &format!("{name}.json"), &json);
        }
        let registry = Registry::new(dir);
        let grants = [(1000, Action::ManageOwn), (1001, Action::ManageOwn)];
        Manager::new(registry)
            .with_runtime_dir(dir.join("run"))
            .with_authority(Authority::fixed(grants))
    }

    /// Writes a line to the handed-off `fd` and reads the fake VMM's answer.
    async fn talk(fd: OwnedFd) -> String {
        let mut stream = UnixStream::from_std(StdStream::from(fd)).unwrap();
        stream.write_all(b"hello\n").await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// A fake VMM socket: answers `CONNECT 1024` with `OK 1`, then echoes
    /// one line in capitals (what the handed-off descriptor talks to).
    fn fake_vmm(path: &Path) -> tokio::task::JoinHandle<String> {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            stream.get_mut().write_all(b"OK 7\n").await.unwrap();
            let mut data = String::new();
            stream.read_line(&mut data).await.unwrap();
            stream
                .get_mut()
                .write_all(data.to_uppercase().as_bytes())
                .await
                .unwrap();
            line
        })
    }

    #[tokio::test]
    async fn owner_and_root_get_a_connected_agent_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        for caller in [Caller::without_subject(1000), Caller::ROOT] {
            let vmm = fake_vmm(&m.layout().vsock_socket("blog"));
            let fd = m.open_guest(&caller, "blog", Channel::Agent).await.unwrap();
            assert_eq!(talk(fd).await, "HELLO\n");
            assert_eq!(vmm.await.unwrap(), "CONNECT 1024\n");
            std::fs::remove_file(m.layout().vsock_socket("blog")).unwrap();
        }
    }

    #[tokio::test]
    async fn owner_without_manage_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let e = m
            .open_guest(&Caller::without_subject(1002), "mine", Channel::Console)
            .await
            .unwrap_err();
        assert!(matches!(e, ManagerError::PermissionDenied { .. }), "{e}");
    }

    #[tokio::test]
    async fn another_user_gets_no_such_vm_like_a_missing_vm() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        let other = Caller::without_subject(1001);
        let theirs = m.open_guest(&other, "blog", Channel::Agent).await;
        let missing = m.open_guest(&other, "nope", Channel::Agent).await;
        assert_eq!(
            theirs.unwrap_err(),
            ManagerError::NoSuchVm {
                name: "blog".into()
            }
        );
        assert_eq!(
            missing.unwrap_err(),
            ManagerError::NoSuchVm {
                name: "nope".into()
            }
        );
    }

    #[tokio::test]
    async fn a_vm_without_sockets_is_not_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        for channel in [Channel::Agent, Channel::Console] {
            let e = m
                .open_guest(&Caller::ROOT, "blog", channel)
                .await
                .unwrap_err();
            // Without systemd the state is unknown: the cause is named.
            assert!(e.to_string().contains("cannot reach the"), "{e}");
        }
    }

    /// A fake VMM serving any number of connections like [`fake_vmm`].
    fn fake_vmm_forever(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    stream.get_mut().write_all(b"OK 7\n").await.unwrap();
                    let mut data = String::new();
                    stream.read_line(&mut data).await.unwrap();
                    let answer = data.to_uppercase();
                    stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
                });
            }
        });
    }

    /// Over a real varlink socket: the reply to `OpenGuest` carries a
    /// descriptor connected to the guest, and a connection gets at most
    /// `max_fds` of them (then `QuotaExceeded`, and no guest connection).
    #[tokio::test]
    async fn varlink_hands_over_descriptors_within_the_cap() {
        use crate::varlink_server::Limits;
        use serde_json::{json, Value};
        use vmctl_api::ErrorReply;
        use zlink::{tokio::unix, Call, Connection};

        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path());
        fake_vmm_forever(&m.layout().vsock_socket("blog"));
        let socket = dir.path().join("varlink");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let limits = Limits {
            max_fds: 2,
            ..Limits::default()
        };
        tokio::spawn(crate::varlink::serve(
            listener,
            std::sync::Arc::new(m),
            limits,
        ));

        #[derive(Debug, serde::Serialize)]
        struct Method {
            method: &'static str,
            parameters: Value,
        }
        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut conn = Connection::new(unix::Stream::try_from(stream).unwrap());
        let call = Call::new(Method {
            method: "io.vmctl.Manager.OpenGuest",
            parameters: json!({"name": "blog", "channel": "agent"}),
        });
        // The test runs as root, who may open every VM.
        for _ in 0..2 {
            let (reply, fds) = conn
                .call_method::<_, Value, ErrorReply>(&call, Vec::new())
                .await
                .unwrap();
            reply.unwrap();
            assert_eq!(fds.len(), 1);
            assert_eq!(talk(fds.into_iter().next().unwrap()).await, "HELLO\n");
        }
        let (reply, fds) = conn
            .call_method::<_, Value, ErrorReply>(&call, Vec::new())
            .await
            .unwrap();
        let e = reply.unwrap_err();
        assert_eq!(e.error, vmctl_api::errors::QUOTA_EXCEEDED, "{e}");
        assert!(fds.is_empty());

        // A missing VM is NoSuchVM, without a descriptor.
        let mut conn = Connection::new(
            unix::Stream::try_from(tokio::net::UnixStream::connect(&socket).await.unwrap())
                .unwrap(),
        );
        let call = |params: Value| {
            Call::new(Method {
                method: "io.vmctl.Manager.OpenGuest",
                parameters: params,
            })
        };
        let (reply, fds) = conn
            .call_method::<_, Value, ErrorReply>(
                &call(json!({"name": "nope", "channel": "agent"})),
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(reply.unwrap_err().error, vmctl_api::errors::NO_SUCH_VM);
        assert!(fds.is_empty());
        // A bad channel is named (zlink decodes org.varlink.service errors
        // itself).
        let e = conn
            .call_method::<_, Value, ErrorReply>(
                &call(json!({"name": "blog", "channel": "vsock"})),
                Vec::new(),
            )
            .await
            .unwrap_err();
        let e = format!("{e:?}");
        assert!(
            e.contains("InvalidParameter") && e.contains("channel"),
            "{e}"
        );
    }

    #[test]
    fn channels() {
        assert_eq!("agent".parse::<Channel>().unwrap(), Channel::Agent);
        assert_eq!("console".parse::<Channel>().unwrap(), Channel::Console);
        assert_eq!("ssh".parse::<Channel>().unwrap(), Channel::Ssh);
        assert!(matches!(
            "vsock".parse::<Channel>(),
            Err(ManagerError::InvalidArgument { .. })
        ));
    }
}
