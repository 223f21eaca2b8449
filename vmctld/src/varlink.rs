//! The varlink front end: serves `io.vmctl.Manager` and the mandatory
//! `org.varlink.service` interface over a Unix socket, using zlink.
//!
//! # How a call is handled, step by step
//!
//! 1. [`crate::varlink_server`] accepts connections within the connection
//!    caps and serves each in a task of its own, reading NUL-terminated JSON
//!    messages with zlink's [`zlink::Connection`] under a size limit and an
//!    idle timeout (see that module for the limits and why).
//! 2. Each message is decoded into a [`RawCall`]: the `method` string plus
//!    the raw `parameters` object (`oneway`/`more`/`upgrade` are taken by
//!    zlink). A message that is not JSON, or has no `method`, cannot be
//!    answered meaningfully: zlink closes that one connection and the
//!    daemon carries on serving everybody else.
//! 3. The server asked the kernel who the peer is (`SO_PEERCRED`) when it
//!    accepted the connection; that is the [`Caller`] of every call on it.
//! 4. The method name is split at its last `.` into interface and member.
//!    An unknown interface is answered with
//!    `org.varlink.service.InterfaceNotFound`, an unknown member with
//!    `org.varlink.service.MethodNotFound`.
//! 5. The parameters are checked against the method's declaration and
//!    decoded into its input type; unknown, missing or mistyped ones are
//!    answered with `org.varlink.service.InvalidParameter` naming the
//!    parameter.
//! 6. The [`Manager`] does the work. Its result becomes the reply
//!    parameters; a [`ManagerError`](crate::ManagerError) becomes the named
//!    `io.vmctl.Manager.*` error with its parameters.
//! 7. The server sends the reply (or nothing, if the call was `oneway`)
//!    and waits for the connection's next call.
//!
//! Create, Start, Stop, Restart and Remove may take minutes (a disk copy, a
//! TCG boot); they are [`Answer::Later`], awaited by the connection's own
//! task, so `vmctl list` on another connection answers meanwhile.
//!
//! `GetInterfaceDescription` returns the IDL file embedded from
//! `api/io.vmctl.Manager.varlink`, byte for byte.

use std::{os::fd::OwnedFd, sync::Arc};

use futures_util::{future::BoxFuture, FutureExt};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Map, Value};
use vmctl_api::{
    errors, idl,
    names::{GATEWAY_INTERFACE, VARLINK_INTERFACE},
    spec::VmmChoice,
    CreateParams, DetailsReply, ErrorReply, GetVersionReply, ListReply, NameParams,
};

use crate::{Caller, Manager};

/// The name of the varlink introspection interface every service serves.
pub const VARLINK_SERVICE_INTERFACE: &str = "org.varlink.service";

/// The standard description of `org.varlink.service`.
pub const VARLINK_SERVICE_DESCRIPTION: &str = "\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
";

/// A method call as received: the fully qualified method name and its
/// parameters, decoded per method later.
#[derive(Debug, Deserialize)]
pub struct RawCall {
    /// The fully qualified method name, e.g. `io.vmctl.Manager.List`.
    pub method: String,
    /// The parameters object, if any.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// The zlink service that dispatches calls to the [`Manager`].
#[derive(Debug)]
pub struct VarlinkService {
    manager: Arc<Manager>,
}

/// The result of one method: reply parameters or an error reply.
type Outcome = Result<Value, ErrorReply>;

/// Reply parameters as they are sent: a JSON tree, or text serialised
/// straight from the reply's types (`List`: building and dropping a tree
/// of 1,000 VMs cost more than everything else in the call).
#[derive(Debug)]
pub enum Params {
    /// A JSON tree.
    Tree(Value),
    /// Serialised JSON.
    Text(Box<RawValue>),
}

impl serde::Serialize for Params {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Tree(value) => value.serialize(serializer),
            Self::Text(text) => text.serialize(serializer),
        }
    }
}

impl Params {
    /// The parameters as a JSON tree.
    pub fn into_value(self) -> Outcome {
        match self {
            Self::Tree(value) => Ok(value),
            Self::Text(text) => serde_json::from_str(text.get())
                .map_err(|e| crate::ManagerError::internal(e).to_varlink()),
        }
    }
}

/// How a call is answered: now, or by a future polled by the server
/// alongside the other connections (the long operations).
pub enum Answer {
    /// The outcome is known.
    Now(Outcome),
    /// The outcome is known, its parameters already serialised.
    Serialized(Result<Box<RawValue>, ErrorReply>),
    /// The outcome comes when the future completes.
    Later(BoxFuture<'static, Outcome>),
    /// The outcome comes with descriptors for the client (`OpenGuest`):
    /// the server runs the future only while the connection is under its
    /// descriptor cap, and sends them with the reply (`SCM_RIGHTS`).
    WithFds(BoxFuture<'static, Result<(Value, Vec<OwnedFd>), ErrorReply>>),
    /// Replies until the client leaves (`List` with `more`, see
    /// [`crate::list_watch`]): each item is sent with `continues: true`;
    /// an error ends the call.
    Stream(futures_util::stream::BoxStream<'static, Outcome>),
}

impl Answer {
    /// Waits for the outcome (tests, and callers that may block); any
    /// descriptors are closed.
    pub async fn outcome(self) -> Outcome {
        self.reply().await.0.and_then(Params::into_value)
    }

    /// Waits for the outcome and the descriptors to send with it.
    pub async fn reply(self) -> (Result<Params, ErrorReply>, Vec<OwnedFd>) {
        match self {
            Self::Now(outcome) => (outcome.map(Params::Tree), Vec::new()),
            Self::Serialized(outcome) => (outcome.map(Params::Text), Vec::new()),
            Self::Later(future) => (future.await.map(Params::Tree), Vec::new()),
            Self::WithFds(future) => match future.await {
                Ok((params, fds)) => (Ok(Params::Tree(params)), fds),
                Err(e) => (Err(e), Vec::new()),
            },
            // Only the first reply.
            Self::Stream(mut stream) => match futures_util::StreamExt::next(&mut stream).await {
                Some(outcome) => (outcome.map(Params::Tree), Vec::new()),
                None => (
                    Err(crate::ManagerError::internal("no reply").to_varlink()),
                    Vec::new(),
                ),
            },
        }
    }
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        Self::Now(outcome)
    }
}

impl VarlinkService {
    /// A service answering with `manager`.
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }

    /// Dispatches one call and waits for its outcome (steps 4 to 6).
    pub async fn dispatch(&self, caller: &Caller, call: &RawCall) -> Outcome {
        self.answer(caller, call).await.outcome().await
    }

    /// Dispatches a call made with `more`: `List` then watches
    /// ([`crate::list_watch`]); the other methods answer once, as without.
    pub async fn answer_more(&self, caller: &Caller, call: &RawCall) -> Answer {
        if call.method == format!("{VARLINK_INTERFACE}.List") {
            let caller = match on_behalf_of(&self.manager, caller, call) {
                Ok(caller) => caller,
                Err(e) => return Answer::Now(Err(e)),
            };
            return match list_parameters(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok(all) => Answer::Stream(
                    crate::list_watch::watch(self.manager.clone(), caller.clone(), all).await,
                ),
            };
        }
        self.answer(caller, call).await
    }

    /// Dispatches a call that came with descriptors: only `ImportImage`
    /// takes any (the image files the client opened, at most
    /// [`crate::image_import::MAX_FDS`]); for any other call they are
    /// closed at once and the call is answered as without.
    pub async fn answer_with_fds(
        &self,
        caller: &Caller,
        call: &RawCall,
        fds: Vec<OwnedFd>,
    ) -> Answer {
        if call.method != format!("{VARLINK_INTERFACE}.ImportImage") {
            drop(fds);
            return self.answer(caller, call).await;
        }
        if fds.len() > crate::image_import::MAX_FDS {
            drop(fds);
            return Answer::Now(Err(import_without_files()));
        }
        let mut caller = match on_behalf_of(&self.manager, caller, call) {
            Ok(caller) => caller,
            Err(e) => return Answer::Now(Err(e)),
        };
        caller.allow_interaction = allows_interaction(call);
        let name = match name_parameter(call) {
            Ok(name) => name,
            Err(e) => return Answer::Now(Err(e)),
        };
        let manager = self.manager.clone();
        Answer::Later(
            async move {
                match manager.import_image(&caller, &name, fds).await {
                    Ok(()) => Ok(json!({})),
                    Err(e) => Err(e.to_varlink()),
                }
            }
            .boxed(),
        )
    }

    /// Dispatches one call by interface and member name; long operations
    /// are returned unfinished.
    pub async fn answer(&self, caller: &Caller, call: &RawCall) -> Answer {
        let (interface, member) = call.method.rsplit_once('.').unwrap_or(("", ""));
        match interface {
            VARLINK_SERVICE_INTERFACE => self.varlink_service(member, call).into(),
            VARLINK_INTERFACE => match on_behalf_of(&self.manager, caller, call) {
                Ok(caller) => self.manager_call(&caller, member, call).await,
                Err(e) => Answer::Now(Err(e)),
            },
            GATEWAY_INTERFACE => {
                crate::varlink_gateway::call(&self.manager, caller, member, call).await
            }
            _ => Answer::Now(Err(ErrorReply::new(
                errors::INTERFACE_NOT_FOUND,
                json!({ "interface": interface }),
            ))),
        }
    }

    /// `org.varlink.service.*`.
    fn varlink_service(&self, member: &str, call: &RawCall) -> Outcome {
        match member {
            "GetInfo" => {
                check_parameters(call, &[])?;
                Ok(json!({
                    "vendor": "vmctl",
                    "product": "vmctld",
                    "version": self.manager.version(),
                    "url": "man:vmctld(8)",
                    "interfaces": [VARLINK_SERVICE_INTERFACE, VARLINK_INTERFACE, GATEWAY_INTERFACE],
                }))
            }
            "GetInterfaceDescription" => {
                #[derive(Deserialize)]
                struct In {
                    interface: String,
                }
                check_parameters(call, &["interface"])?;
                let input: In = parameters(call, "interface")?;
                let description = match input.interface.as_str() {
                    VARLINK_INTERFACE => idl::INTERFACE_DESCRIPTION,
                    GATEWAY_INTERFACE => idl::GATEWAY_INTERFACE_DESCRIPTION,
                    VARLINK_SERVICE_INTERFACE => VARLINK_SERVICE_DESCRIPTION,
                    other => {
                        return Err(ErrorReply::new(
                            errors::INTERFACE_NOT_FOUND,
                            json!({ "interface": other }),
                        ))
                    }
                };
                Ok(json!({ "description": description }))
            }
            _ => Err(method_not_found(call)),
        }
    }

    /// `io.vmctl.Manager.*`.
    async fn manager_call(&self, caller: &Caller, member: &str, call: &RawCall) -> Answer {
        let manager = self.manager.clone();
        let mut caller = caller.clone();
        caller.allow_interaction = allows_interaction(call);
        match member {
            "GetVersion" => Answer::Now(check_parameters(call, &[]).and_then(|()| {
                to_value(GetVersionReply {
                    version: self.manager.version().to_string(),
                    interface_version: idl::INTERFACE_VERSION,
                })
            })),
            "List" => Answer::Serialized(match list_parameters(call) {
                Err(e) => Err(e),
                Ok(all) => match self.manager.list_vms(&caller, all).await {
                    Ok(vms) => serde_json::value::to_raw_value(&ListReply { vms })
                        .map_err(|e| crate::ManagerError::internal(e).to_varlink()),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "Describe" => Answer::Now(match name_parameter(call) {
                Err(e) => Err(e),
                Ok(name) => match self.manager.describe(&caller, &name).await {
                    Ok(vm) => to_value(DetailsReply { vm }),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "Create" => match create_parameters(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok(params) => Answer::Later(
                    async move {
                        match manager.create(&caller, params).await {
                            Ok(vm) => to_value(DetailsReply { vm }),
                            Err(e) => Err(e.to_varlink()),
                        }
                    }
                    .boxed(),
                ),
            },
            "Remove" => match remove_parameters(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok((name, delete_data)) => Answer::Later(
                    async move {
                        match manager.remove_with_data(&caller, &name, delete_data).await {
                            Ok(()) => Ok(json!({})),
                            Err(e) => Err(e.to_varlink()),
                        }
                    }
                    .boxed(),
                ),
            },
            "ListVolumes" => Answer::Now(match check_parameters(call, &[]) {
                Err(e) => Err(e),
                Ok(()) => list_volumes(&self.manager, &caller).await,
            }),
            "Rebuild" => match rebuild_parameters(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok((name, image)) => Answer::Later(
                    async move {
                        match manager.rebuild(&caller, &name, image.as_deref()).await {
                            Ok(()) => Ok(json!({})),
                            Err(e) => Err(e.to_varlink()),
                        }
                    }
                    .boxed(),
                ),
            },
            "ResizeDisk" => Answer::Now(match resize_disk_parameters(call) {
                Err(e) => Err(e),
                Ok(p) => match self
                    .manager
                    .resize_disk(&caller, &p.name, &p.disk, p.size_bytes)
                    .await
                {
                    Ok(()) => Ok(json!({})),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            // With its files it goes through answer_with_fds.
            "ImportImage" => Answer::Now(Err(import_without_files())),
            "PoolStatus" => Answer::Now(match check_parameters(call, &[]) {
                Err(e) => Err(e),
                Ok(()) => match self.manager.pool_status(&caller).await {
                    Ok(p) => to_value(vmctl_api::types::PoolStatusReply {
                        backend: p.backend.to_string(),
                        location: p.location,
                        total_bytes: p.total_bytes,
                        free_bytes: p.free_bytes,
                        reflink: p.reflink,
                    }),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "ListImages" => Answer::Now(match check_parameters(call, &[]) {
                Err(e) => Err(e),
                Ok(()) => match self.manager.list_images(&caller).await {
                    Ok(images) => to_value(vmctl_api::types::ImagesReply {
                        images: images
                            .into_iter()
                            .map(|i| vmctl_api::types::ImageEntry {
                                name: i.name,
                                size_bytes: i.size_bytes,
                                allocated_bytes: i.allocated_bytes,
                                created: i.created,
                                vms: i.vms,
                            })
                            .collect(),
                    }),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "RemoveImage" => Answer::Now(match name_parameter(call) {
                Err(e) => Err(e),
                Ok(name) => match self.manager.remove_image(&caller, &name).await {
                    Ok(()) => Ok(json!({})),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "Publish" => Answer::Now(match publish_parameters(call) {
                Err(e) => Err(e),
                Ok((name, port, public)) => {
                    match self.manager.publish(&caller, &name, port, public).await {
                        Ok(p) => Ok(json!({ "port": p.port, "public": p.public })),
                        Err(e) => Err(e.to_varlink()),
                    }
                }
            }),
            "Share" | "Unshare" => Answer::Now(match share_parameters(call) {
                Err(e) => Err(e),
                Ok((name, user)) => {
                    let result = if member == "Share" {
                        self.manager.share(&caller, &name, &user).await
                    } else {
                        self.manager.unshare(&caller, &name, &user).await
                    };
                    match result {
                        Ok(users) => Ok(json!({ "shared_with": users })),
                        Err(e) => Err(e.to_varlink()),
                    }
                }
            }),
            "IssueLoginToken" => Answer::Now(match name_parameter(call) {
                Err(e) => Err(e),
                Ok(name) => match self.manager.issue_login_token(&caller, &name).await {
                    Ok(token) => Ok(json!({
                        "token": token,
                        "expires_in_sec": crate::publish::LOGIN_TOKEN_LIFETIME.as_secs(),
                    })),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "RemoveVolume" => Answer::Now(match name_parameter(call) {
                Err(e) => Err(e),
                Ok(name) => match self.manager.delete_volume(&caller, &name).await {
                    Ok(()) => Ok(json!({})),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "Start" | "Stop" | "Restart" => match name_parameter(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok(name) => {
                    let member = member.to_string();
                    Answer::Later(
                        async move {
                            let result = match member.as_str() {
                                "Start" => manager.start(&caller, &name).await,
                                "Stop" => manager.stop(&caller, &name).await,
                                _ => manager.restart(&caller, &name).await,
                            };
                            result.map(|()| json!({})).map_err(|e| e.to_varlink())
                        }
                        .boxed(),
                    )
                }
            },
            "OpenGuest" => match open_guest_parameters(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok((name, channel)) => Answer::WithFds(
                    async move {
                        match manager.open_guest(&caller, &name, channel).await {
                            Ok(fd) => Ok((json!({}), vec![fd])),
                            Err(e) => Err(e.to_varlink()),
                        }
                    }
                    .boxed(),
                ),
            },
            "GetQuota" => Answer::Now(match get_quota_parameters(call) {
                Err(e) => Err(e),
                Ok(uid) => match self.manager.get_quota(&caller, uid).await {
                    Ok(quota) => to_value(vmctl_api::types::QuotaReply { quota }),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "SetQuota" => Answer::Now(match set_quota_parameters(call) {
                Err(e) => Err(e),
                Ok((uid, over)) => match self.manager.set_quota(&caller, uid, over).await {
                    Ok(quota) => to_value(vmctl_api::types::QuotaReply { quota }),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "Doctor" => match doctor_parameters(call) {
                Err(e) => Answer::Now(Err(e)),
                Ok(repair) => Answer::Later(
                    async move {
                        match manager.doctor(&caller, repair).await {
                            Ok(findings) => to_value(vmctl_api::types::DoctorReply {
                                findings: findings.into_iter().map(Into::into).collect(),
                            }),
                            Err(e) => Err(e.to_varlink()),
                        }
                    }
                    .boxed(),
                ),
            },
            "AddSSHKey" => Answer::Now(match key_parameter(call) {
                Err(e) => Err(e),
                Ok(key) => match self.manager.add_ssh_key(&caller, &key).await {
                    Ok(()) => Ok(json!({})),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "ListSSHKeys" => Answer::Now(match check_parameters(call, &[]) {
                Err(e) => Err(e),
                Ok(()) => match self.manager.list_ssh_keys(&caller).await {
                    Ok(keys) => Ok(json!({ "keys": keys })),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            "RemoveSSHKey" => Answer::Now(match key_parameter(call) {
                Err(e) => Err(e),
                Ok(key) => match self.manager.remove_ssh_key(&caller, &key).await {
                    Ok(()) => Ok(json!({})),
                    Err(e) => Err(e.to_varlink()),
                },
            }),
            _ => Answer::Now(Err(method_not_found(call))),
        }
    }
}

/// The `key` parameter of the SSH key methods.
pub(crate) fn key_parameter(call: &RawCall) -> Result<String, ErrorReply> {
    #[derive(Deserialize)]
    struct In {
        key: String,
    }
    check_parameters(call, &["key"])?;
    let input: In = parameters(call, "key")?;
    Ok(input.key)
}

/// `OpenGuest`'s name and channel.
fn open_guest_parameters(
    call: &RawCall,
) -> Result<(String, crate::guest_access::Channel), ErrorReply> {
    #[derive(Deserialize)]
    struct In {
        name: String,
        channel: String,
    }
    check_parameters(call, &["name", "channel"])?;
    let input: In = parameters(call, "name")?;
    let channel = input
        .channel
        .parse()
        .map_err(|_| invalid_parameter("channel"))?;
    Ok((input.name, channel))
}

/// `GetQuota`'s optional uid.
fn get_quota_parameters(call: &RawCall) -> Result<Option<u32>, ErrorReply> {
    check_parameters(call, &["uid"])?;
    let input: vmctl_api::types::GetQuotaParams = parameters(call, "uid")?;
    Ok(input.uid)
}

/// `SetQuota`'s uid and override.
fn set_quota_parameters(call: &RawCall) -> Result<(u32, crate::store::QuotaOverride), ErrorReply> {
    check_parameters(
        call,
        &[
            "uid",
            "max_vms",
            "max_vcpus",
            "max_memory_bytes",
            "max_disk_bytes",
        ],
    )?;
    let input: vmctl_api::types::SetQuotaParams = parameters(call, "uid")?;
    Ok((
        input.uid,
        crate::store::QuotaOverride {
            vms: input.max_vms,
            vcpus: input.max_vcpus,
            memory: input.max_memory_bytes,
            disk: input.max_disk_bytes,
        },
    ))
}

/// `Doctor`'s repair flag.
fn doctor_parameters(call: &RawCall) -> Result<bool, ErrorReply> {
    check_parameters(call, &["repair"])?;
    let input: vmctl_api::types::DoctorParams = parameters(call, "repair")?;
    Ok(input.repair.unwrap_or(false))
}

/// The `name` parameter of the methods that take only a name.
/// `Rebuild`'s name and optional new image.
fn rebuild_parameters(call: &RawCall) -> Result<(String, Option<String>), ErrorReply> {
    #[derive(Deserialize)]
    struct In {
        name: String,
        image: Option<String>,
    }
    check_parameters(call, &["name", "image"])?;
    let input: In = parameters(call, "name")?;
    Ok((input.name, input.image))
}

fn name_parameter(call: &RawCall) -> Result<String, ErrorReply> {
    check_parameters(call, &["name"])?;
    let input: NameParams = parameters(call, "name")?;
    Ok(input.name)
}

/// `Publish`'s name, port and public flag (HTTPS proxy).
fn publish_parameters(call: &RawCall) -> Result<(String, Option<u16>, Option<bool>), ErrorReply> {
    #[derive(Deserialize)]
    struct In {
        name: String,
        port: Option<u16>,
        public: Option<bool>,
    }
    check_parameters(call, &["name", "port", "public"])?;
    let input: In = parameters(call, "port")?;
    Ok((input.name, input.port, input.public))
}

/// `Share`'s and `Unshare`'s VM name and user.
fn share_parameters(call: &RawCall) -> Result<(String, String), ErrorReply> {
    #[derive(Deserialize)]
    struct In {
        name: String,
        user: String,
    }
    check_parameters(call, &["name", "user"])?;
    let input: In = parameters(call, "user")?;
    Ok((input.name, input.user))
}

/// `List`'s `all`.
fn list_parameters(call: &RawCall) -> Result<bool, ErrorReply> {
    check_parameters(call, &["all"])?;
    let input: vmctl_api::ListParams = parameters(call, "all")?;
    Ok(input.all.unwrap_or(false))
}

/// `Create`'s parameters, each checked so that a bad one is named.
fn create_parameters(call: &RawCall) -> Result<CreateParams, ErrorReply> {
    const NAMES: [&str; 11] = [
        "name",
        "image",
        "vcpus",
        "memory_bytes",
        "disk_bytes",
        "vmm",
        "network",
        "ssh_authorized_keys",
        "data_bytes",
        "data_volume",
        "ephemeral",
    ];
    check_parameters(call, &NAMES)?;
    let map = match &call.parameters {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    fn field<T: for<'de> Deserialize<'de>>(
        map: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<T>, ErrorReply> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|_| invalid_parameter(key)),
        }
    }
    let vmm = match field::<String>(&map, "vmm")? {
        None => None,
        Some(v) => Some(
            v.parse::<VmmChoice>()
                .map_err(|_| invalid_parameter("vmm"))?,
        ),
    };
    Ok(CreateParams {
        name: field(&map, "name")?.ok_or_else(|| invalid_parameter("name"))?,
        image: field(&map, "image")?,
        vcpus: field(&map, "vcpus")?,
        memory_bytes: field(&map, "memory_bytes")?,
        disk_bytes: field(&map, "disk_bytes")?,
        vmm,
        network: field(&map, "network")?,
        ssh_authorized_keys: field(&map, "ssh_authorized_keys")?,
        data_bytes: field(&map, "data_bytes")?,
        data_volume: field(&map, "data_volume")?,
        ephemeral: field(&map, "ephemeral")?,
    })
}

/// `Remove`'s `name` and `delete_data` (storage).
fn remove_parameters(call: &RawCall) -> Result<(String, bool), ErrorReply> {
    check_parameters(call, &["name", "delete_data"])?;
    let input: vmctl_api::types::RemoveParams = parameters(call, "name")?;
    Ok((input.name, input.delete_data.unwrap_or(false)))
}

/// `ResizeDisk`'s parameters (storage).
fn resize_disk_parameters(
    call: &RawCall,
) -> Result<vmctl_api::types::ResizeDiskParams, ErrorReply> {
    check_parameters(call, &["name", "disk", "size_bytes"])?;
    parameters(call, "size_bytes")
}

/// `ListVolumes` (storage).
async fn list_volumes(manager: &Manager, caller: &Caller) -> Outcome {
    match manager.list_volumes(caller).await {
        Ok(entries) => to_value(vmctl_api::types::VolumesReply {
            volumes: entries
                .into_iter()
                .map(|e| vmctl_api::types::VolumeEntry {
                    name: e.info.volume.name().to_string(),
                    kind: e.info.volume.kind().to_string(),
                    size_bytes: e.info.size_bytes,
                    allocated_bytes: e.info.allocated_bytes,
                    vm: e.vm,
                    owner_uid: e.owner_uid,
                    owner: e.owner,
                })
                .collect(),
        }),
        Err(e) => Err(e.to_varlink()),
    }
}

/// `ImportImage` without (or with too many) descriptors.
fn import_without_files() -> ErrorReply {
    crate::ManagerError::InvalidArgument {
        what: "descriptors".into(),
        reason: format!(
            "ImportImage takes a container image (a tarball or an OCI layout directory), \
             or the root disk, the kernel and optionally the initrd, as descriptors \
             (SCM_RIGHTS), in that order: 1 to {}",
            crate::image_import::MAX_FDS
        ),
    }
    .to_varlink()
}

fn invalid_parameter(name: &str) -> ErrorReply {
    ErrorReply::new(errors::INVALID_PARAMETER, json!({ "parameter": name }))
}

pub(crate) fn method_not_found(call: &RawCall) -> ErrorReply {
    ErrorReply::new(errors::METHOD_NOT_FOUND, json!({ "method": call.method }))
}

/// Rejects parameters the method does not declare (step 5): the
/// parameters must be absent or an object whose keys are all in `allowed`.
/// The parameter by which a client lets polkit ask its user for a
/// password (its agent, e.g. `pkttyagent`, must be running), as systemd's
/// varlink services call it. Every method that authorises accepts it.
pub const ALLOW_INTERACTIVE: &str = "allowInteractiveAuthentication";

/// Whether the call set [`ALLOW_INTERACTIVE`] to `true`.
fn allows_interaction(call: &RawCall) -> bool {
    call.parameters
        .as_ref()
        .and_then(|p| p.get(ALLOW_INTERACTIVE))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The caller a call runs as: `caller` itself, or, when the call carries
/// [`crate::gateway::ON_BEHALF_OF`], the user a gateway acts for (refused
/// for anyone but a trusted gateway; see [`crate::gateway`]).
fn on_behalf_of(manager: &Manager, caller: &Caller, call: &RawCall) -> Result<Caller, ErrorReply> {
    let Some(value) = call
        .parameters
        .as_ref()
        .and_then(|p| p.get(crate::gateway::ON_BEHALF_OF))
    else {
        return Ok(caller.clone());
    };
    let uid = value
        .as_u64()
        .and_then(|uid| u32::try_from(uid).ok())
        .ok_or_else(|| {
            ErrorReply::new(
                errors::INVALID_PARAMETER,
                json!({ "parameter": crate::gateway::ON_BEHALF_OF }),
            )
        })?;
    manager.act_for(caller, uid).map_err(|e| e.to_varlink())
}

pub(crate) fn check_parameters(call: &RawCall, allowed: &[&str]) -> Result<(), ErrorReply> {
    let invalid =
        |name: &str| ErrorReply::new(errors::INVALID_PARAMETER, json!({ "parameter": name }));
    let known = |name: &str| {
        name == ALLOW_INTERACTIVE || name == crate::gateway::ON_BEHALF_OF || allowed.contains(&name)
    };
    match &call.parameters {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(map)) => match map.keys().find(|k| !known(k)) {
            Some(unknown) => Err(invalid(unknown)),
            None => Ok(()),
        },
        Some(_) => Err(invalid("parameters")),
    }
}

/// Decodes the call's parameters; `name` is reported when they do not fit.
fn parameters<T: for<'de> Deserialize<'de>>(call: &RawCall, name: &str) -> Result<T, ErrorReply> {
    let value = call.parameters.clone().unwrap_or_else(|| json!({}));
    serde_json::from_value(value)
        .map_err(|_| ErrorReply::new(errors::INVALID_PARAMETER, json!({ "parameter": name })))
}

fn to_value(reply: impl serde::Serialize) -> Outcome {
    serde_json::to_value(reply).map_err(|e| crate::ManagerError::internal(e).to_varlink())
}

/// Serves `manager` on `listener` within `limits` until the listener fails
/// (see [`crate::varlink_server`]).
pub async fn serve(
    listener: tokio::net::UnixListener,
    manager: Arc<Manager>,
    limits: crate::varlink_server::Limits,
) -> anyhow::Result<()> {
    let service = Arc::new(VarlinkService::new(manager));
    crate::varlink_server::serve(listener, service, limits).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    /// A service over a store of its own, removed when it is dropped.
    struct TestService {
        _dir: tempfile::TempDir,
        service: VarlinkService,
    }

    impl std::ops::Deref for TestService {
        type Target = VarlinkService;

        fn deref(&self) -> &VarlinkService {
            &self.service
        }
    }

    fn service() -> TestService {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::new(Registry::new(dir.path()));
        TestService {
            _dir: dir,
            service: VarlinkService::new(Arc::new(manager)),
        }
    }

    fn call(method: &str, parameters: Value) -> RawCall {
        RawCall {
            method: method.into(),
            parameters: Some(parameters),
        }
    }

    #[tokio::test]
    async fn served_description_is_the_idl_file() {
        let expected = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../api/io.vmctl.Manager.varlink"
        ))
        .unwrap();
        let reply = service()
            .dispatch(
                &Caller::ROOT,
                &call(
                    "org.varlink.service.GetInterfaceDescription",
                    json!({"interface": "io.vmctl.Manager"}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(reply["description"].as_str().unwrap(), expected);
    }

    #[test]
    fn descriptions_parse_as_varlink_idl() {
        let ours = zlink::idl::Interface::try_from(idl::INTERFACE_DESCRIPTION).unwrap();
        assert_eq!(ours.name().to_string(), VARLINK_INTERFACE);
        let methods: Vec<String> = ours.methods().map(|m| m.name().to_string()).collect();
        assert_eq!(
            methods,
            [
                "GetVersion",
                "List",
                "Create",
                "Start",
                "Stop",
                "Restart",
                "Remove",
                "Describe",
                "OpenGuest",
                "GetQuota",
                "SetQuota",
                "Doctor",
                "ListVolumes",
                "PoolStatus",
                "RemoveVolume",
                "Rebuild",
                "ResizeDisk",
                "ListImages",
                "ImportImage",
                "RemoveImage",
                "AddSSHKey",
                "ListSSHKeys",
                "RemoveSSHKey",
                "Publish",
                "Share",
                "Unshare",
                "IssueLoginToken"
            ]
        );
        let errors: Vec<String> = ours.errors().map(|e| e.name().to_string()).collect();
        assert_eq!(errors, idl::declared_errors());

        let service = zlink::idl::Interface::try_from(VARLINK_SERVICE_DESCRIPTION).unwrap();
        assert_eq!(service.name().to_string(), VARLINK_SERVICE_INTERFACE);
    }

    #[tokio::test]
    async fn unknown_interface_and_method() {
        let s = service();
        let e = s
            .dispatch(&Caller::ROOT, &call("io.example.Nope", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.error, errors::INTERFACE_NOT_FOUND);
        assert_eq!(e.parameters.unwrap()["interface"], "io.example");
        let e = s
            .dispatch(&Caller::ROOT, &call("io.vmctl.Manager.Nope", json!({})))
            .await
            .unwrap_err();
        assert_eq!(e.error, errors::METHOD_NOT_FOUND);
        let e = s
            .dispatch(
                &Caller::ROOT,
                &call("org.varlink.service.GetInterfaceDescription", json!({})),
            )
            .await
            .unwrap_err();
        assert_eq!(e.error, errors::INVALID_PARAMETER);
    }

    #[tokio::test]
    async fn unknown_parameters_are_rejected() {
        let s = service();
        let e = s
            .dispatch(
                &Caller::ROOT,
                &call("io.vmctl.Manager.List", json!({"bogus": [1, 2, 3]})),
            )
            .await
            .unwrap_err();
        assert_eq!(e.error, errors::INVALID_PARAMETER);
        assert_eq!(e.parameters.unwrap()["parameter"], "bogus");
        let e = s
            .dispatch(
                &Caller::ROOT,
                &call("io.vmctl.Manager.GetVersion", json!([1])),
            )
            .await
            .unwrap_err();
        assert_eq!(e.error, errors::INVALID_PARAMETER);
        let e = s
            .dispatch(
                &Caller::ROOT,
                &call(
                    "org.varlink.service.GetInterfaceDescription",
                    json!({"interface": "io.vmctl.Manager", "extra": 1}),
                ),
            )
            .await
            .unwrap_err();
        assert_eq!(e.parameters.unwrap()["parameter"], "extra");
        s.dispatch(&Caller::ROOT, &call("io.vmctl.Manager.List", json!({})))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_create_parameters_are_named() {
        let s = service();
        for (params, bad) in [
            (json!({"name": "x", "vmm": "vmware"}), "vmm"),
            (json!({"name": "x", "vcpus": -1}), "vcpus"),
            (json!({"name": "x", "memory_bytes": "1G"}), "memory_bytes"),
            (json!({"image": "default"}), "name"),
            (json!({"name": "x", "cpus": 2}), "cpus"),
        ] {
            let e = s
                .dispatch(&Caller::ROOT, &call("io.vmctl.Manager.Create", params))
                .await
                .unwrap_err();
            assert_eq!(e.error, errors::INVALID_PARAMETER);
            assert_eq!(e.parameters.unwrap()["parameter"], bad);
        }
    }

    #[tokio::test]
    async fn get_info_lists_interfaces() {
        let reply = service()
            .dispatch(
                &Caller::ROOT,
                &call("org.varlink.service.GetInfo", json!({})),
            )
            .await
            .unwrap();
        assert_eq!(
            reply["interfaces"],
            json!([
                "org.varlink.service",
                "io.vmctl.Manager",
                "io.vmctl.Gateway"
            ])
        );
    }

    #[tokio::test]
    async fn interactive_authentication_is_accepted_and_passed_on() {
        let params = json!({ "all": true, ALLOW_INTERACTIVE: true });
        let list = call("io.vmctl.Manager.List", params);
        assert!(allows_interaction(&list));
        let plain = call("io.vmctl.Manager.List", json!({}));
        assert!(!allows_interaction(&plain));
        // Root's List: the parameter is no unknown parameter.
        service().dispatch(&Caller::ROOT, &list).await.unwrap();
    }
}
