//! The varlink interface `io.vmctl.Gateway`: methods for vmctl's gateways
//! only (see [`crate::gateway`] for who is one and why). Every method
//! first checks [`Manager::require_gateway`]; the gateways add their
//! methods here, each declared in `api/io.vmctl.Gateway.varlink`.

use serde_json::json;
use vmctl_api::ErrorReply;

use crate::{
    varlink::{check_parameters, method_not_found, Answer, RawCall},
    Caller, Manager,
};

/// Dispatches `io.vmctl.Gateway.<member>`.
pub async fn call(manager: &Manager, caller: &Caller, member: &str, call: &RawCall) -> Answer {
    if let Err(e) = manager.require_gateway(caller) {
        // Unknown members of a refused caller are refused too: a
        // non-gateway learns nothing about the interface.
        return Answer::Now(Err(e.to_varlink()));
    }
    match member {
        "Hello" => Answer::Now(check_parameters(call, &[]).and_then(|()| hello(manager, caller))),
        "LookupSSHKey" => Answer::Now(lookup_ssh_key(manager, call)),
        "RegistrationOpen" => Answer::Now(check_parameters(call, &[]).and_then(|()| {
            manager
                .registration_settings()
                .map(|settings| json!({ "open": settings.open }))
                .map_err(|e| e.to_varlink())
        })),
        "RegisterSSHKey" => Answer::Now(match check_parameters(call, &["name", "key"]) {
            Err(e) => Err(e),
            Ok(()) => {
                let text = |name: &str| {
                    call.parameters
                        .as_ref()
                        .and_then(|p| p.get(name))
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| invalid_parameter(name))
                };
                match (text("name"), text("key")) {
                    (Ok(name), Ok(key)) => register_ssh_key(manager, &name, &key).await,
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
        }),
        "SetGuestClientKey" => Answer::Now(crate::varlink::key_parameter(call).and_then(|key| {
            manager
                .set_guest_client_key(caller, &key)
                .map(|()| json!({}))
                .map_err(|e| e.to_varlink())
        })),
        "ResolveRoute" => Answer::Now(match check_parameters(call, &["name"]) {
            Err(e) => Err(e),
            Ok(()) => match call
                .parameters
                .as_ref()
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
            {
                None => Err(invalid_parameter("name")),
                Some(name) => resolve_route(manager, caller, name).await,
            },
        }),
        "RedeemLoginToken" => Answer::Now(match check_parameters(call, &["token"]) {
            Err(e) => Err(e),
            Ok(()) => match call
                .parameters
                .as_ref()
                .and_then(|p| p.get("token"))
                .and_then(|n| n.as_str())
            {
                None => Err(invalid_parameter("token")),
                Some(token) => redeem_login_token(manager, caller, token),
            },
        }),
        _ => Answer::Now(Err(method_not_found(call))),
    }
}

/// The error of a login token that is unknown, used or expired.
pub const INVALID_LOGIN_TOKEN: &str = "io.vmctl.Gateway.InvalidLoginToken";

fn invalid_parameter(name: &str) -> ErrorReply {
    ErrorReply::new(
        vmctl_api::errors::INVALID_PARAMETER,
        json!({ "parameter": name }),
    )
}

async fn resolve_route(
    manager: &Manager,
    caller: &Caller,
    name: &str,
) -> Result<serde_json::Value, ErrorReply> {
    let route = manager
        .resolve_route(caller, name)
        .await
        .map_err(|e| e.to_varlink())?;
    Ok(json!({
        "ipv4": route.ipv4.map(|a| a.to_string()),
        "port": route.publication.port,
        "owner_uid": route.owner_uid,
        "shared_uids": route.shared_uids,
        "public": route.publication.public,
        "state": route.state,
    }))
}

fn redeem_login_token(
    manager: &Manager,
    caller: &Caller,
    token: &str,
) -> Result<serde_json::Value, ErrorReply> {
    match manager.redeem_login_token(caller, token) {
        Ok(Some((uid, user))) => Ok(json!({ "uid": uid, "user": user })),
        Ok(None) => Err(ErrorReply::new(INVALID_LOGIN_TOKEN, json!({}))),
        Err(e) => Err(e.to_varlink()),
    }
}

fn hello(manager: &Manager, caller: &Caller) -> Result<serde_json::Value, ErrorReply> {
    let gateway = match manager.gateway_peer(caller) {
        Ok(Some(name)) => name,
        Ok(None) => "root".to_string(),
        Err(e) => return Err(e.to_varlink()),
    };
    Ok(json!({ "gateway": gateway }))
}

/// The error of `RegisterSSHKey` when registration is off or full.
pub const REGISTRATION_REFUSED: &str = "io.vmctl.Gateway.RegistrationRefused";

/// `RegisterSSHKey(name, key) -> (uid, user)`: a new account for a key
/// nobody registered (see [`crate::registration`]).
async fn register_ssh_key(
    manager: &Manager,
    name: &str,
    key: &str,
) -> Result<serde_json::Value, ErrorReply> {
    match manager.register_ssh_user(name, key).await {
        Ok(Ok((uid, user))) => Ok(json!({ "uid": uid, "user": user })),
        Ok(Err(refused)) => Err(ErrorReply::new(
            REGISTRATION_REFUSED,
            json!({ "reason": refused.to_string() }),
        )),
        Err(e) => Err(e.to_varlink()),
    }
}

/// The error of `LookupSSHKey` for a key nobody registered.
pub const NO_SUCH_KEY: &str = "io.vmctl.Gateway.NoSuchKey";

/// `LookupSSHKey(key) -> (uid, user)`: whose key a client of the SSH
/// gateway proved.
fn lookup_ssh_key(manager: &Manager, call: &RawCall) -> Result<serde_json::Value, ErrorReply> {
    let key = crate::varlink::key_parameter(call)?;
    match manager.lookup_ssh_key(&key) {
        Ok(Some((uid, user))) => Ok(json!({ "uid": uid, "user": user })),
        Ok(None) => Err(ErrorReply::new(NO_SUCH_KEY, json!({}))),
        Err(e) => Err(e.to_varlink()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};
    use vmctl_api::errors;

    use crate::{
        varlink::{RawCall, VarlinkService},
        Caller, Manager, Registry,
    };

    /// A service whose configuration trusts `nobody` as a gateway, and the
    /// callers: nobody (the gateway) and a uid that is no gateway.
    fn service() -> (tempfile::TempDir, VarlinkService, Caller, Caller) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vmctl.conf");
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::fs::write(&config, format!("[Gateways]\nUsers={}\n", nobody.name)).unwrap();
        let manager = Manager::new(Registry::new(dir.path())).with_config(&config);
        let service = VarlinkService::new(Arc::new(manager));
        let gateway = Caller::without_subject(nobody.uid.as_raw());
        let stranger = Caller::without_subject(nobody.uid.as_raw() - 1);
        (dir, service, gateway, stranger)
    }

    fn call(method: &str, parameters: Value) -> RawCall {
        RawCall {
            method: method.to_string(),
            parameters: Some(parameters),
        }
    }

    fn denied_as_gateway(outcome: Result<Value, vmctl_api::ErrorReply>) {
        let e = outcome.unwrap_err();
        assert_eq!(e.error, errors::PERMISSION_DENIED, "{e:?}");
        assert_eq!(e.parameters, Some(json!({ "action": "org.vmctl.gateway" })));
    }

    #[tokio::test]
    async fn hello_names_the_gateway_and_refuses_everybody_else() {
        let (_dir, service, gateway, stranger) = service();
        let hello = call("io.vmctl.Gateway.Hello", json!({}));
        let reply = service.dispatch(&gateway, &hello).await.unwrap();
        assert_eq!(reply, json!({ "gateway": "nobody" }));
        denied_as_gateway(service.dispatch(&stranger, &hello).await);
        // Unknown members are refused alike for non-gateways.
        let unknown = call("io.vmctl.Gateway.Nope", json!({}));
        denied_as_gateway(service.dispatch(&stranger, &unknown).await);
        let e = service.dispatch(&gateway, &unknown).await.unwrap_err();
        assert_eq!(e.error, errors::METHOD_NOT_FOUND);
        let root = service.dispatch(&Caller::ROOT, &hello).await.unwrap();
        assert_eq!(root, json!({ "gateway": "root" }));
    }

    #[tokio::test]
    async fn lookup_ssh_key_answers_gateways_only() {
        let (_dir, service, gateway, stranger) = service();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e";
        let lookup = call("io.vmctl.Gateway.LookupSSHKey", json!({ "key": key }));
        let e = service.dispatch(&gateway, &lookup).await.unwrap_err();
        assert_eq!(e.error, super::NO_SUCH_KEY);
        let add = call(
            "io.vmctl.Manager.AddSSHKey",
            json!({ "key": format!("{key} me@host") }),
        );
        service.dispatch(&Caller::ROOT, &add).await.unwrap();
        let found = service.dispatch(&gateway, &lookup).await.unwrap();
        assert_eq!(found, json!({ "uid": 0, "user": "root" }));
        denied_as_gateway(service.dispatch(&stranger, &lookup).await);
    }

    #[tokio::test]
    async fn on_behalf_of_is_for_gateways_and_never_for_root() {
        let (_dir, service, gateway, stranger) = service();
        let list_for = |uid: Value| call("io.vmctl.Manager.List", json!({ "onBehalfOf": uid }));
        let listed = service.dispatch(&gateway, &list_for(json!(4242))).await;
        assert_eq!(listed.unwrap(), json!({ "vms": [] }));
        denied_as_gateway(service.dispatch(&stranger, &list_for(json!(4242))).await);
        denied_as_gateway(service.dispatch(&gateway, &list_for(json!(0))).await);
        for bad in [json!(-1), json!("1000"), json!(1u64 << 40)] {
            let e = service
                .dispatch(&gateway, &list_for(bad))
                .await
                .unwrap_err();
            assert_eq!(e.error, errors::INVALID_PARAMETER);
            assert_eq!(e.parameters, Some(json!({ "parameter": "onBehalfOf" })));
        }
        // Acting for a user grants nothing beyond create and manage-own:
        // listing everybody's VMs needs manage-any.
        let all = call(
            "io.vmctl.Manager.List",
            json!({ "onBehalfOf": 4242, "all": true }),
        );
        let e = service.dispatch(&gateway, &all).await.unwrap_err();
        assert_eq!(e.error, errors::PERMISSION_DENIED, "{e:?}");
    }
}
