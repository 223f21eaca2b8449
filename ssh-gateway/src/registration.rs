//! A connection whose key nobody registered, on a host where an
//! administrator opened registration (`[SSHGateway] Register=yes` in
//! vmctld's configuration): its only command is `register NAME`, which
//! asks vmctld to make the account NAME for that key
//! (`io.vmctl.Gateway.RegisterSSHKey`). Everything else is refused with
//! the reason and the way to register.

use vmctl_api::client::ClientError;

use crate::{
    commands::Output,
    server::UNKNOWN_KEY_MESSAGE,
    vmctld::{Vmctld, REGISTRATION_REFUSED},
};

/// What an unregistered key is told when registration is open.
pub fn usage() -> String {
    format!(
        "{UNKNOWN_KEY_MESSAGE}\nor make an account for it here: ssh -p 2222 HOST register NAME\n"
    )
}

/// Runs command line `line` for the unregistered key `key`.
pub async fn run(line: &str, key: &str, vmctld: &Vmctld) -> Output {
    let words = shell_words::split(line).unwrap_or_default();
    let name = match words.as_slice() {
        [register, name] if register == "register" => name,
        _ => {
            return Output {
                stderr: usage(),
                status: 1,
                ..Output::default()
            }
        }
    };
    match vmctld.register(name, key).await {
        Ok(identity) => Output {
            stdout: format!(
                "registered {} (uid {}); this key opens the account now: \
                 ssh -p 2222 HOST help\n",
                identity.user, identity.uid
            ),
            ..Output::default()
        },
        Err(e) => Output {
            stderr: format!("vmctl-ssh: {}\n", refusal(&e)),
            status: 1,
            ..Output::default()
        },
    }
}

/// The reason of a refused registration, as the client is told.
fn refusal(e: &ClientError) -> String {
    if let ClientError::Daemon(reply) = e {
        if reply.error == REGISTRATION_REFUSED {
            if let Some(reason) = reply
                .parameters
                .as_ref()
                .and_then(|p| p.get("reason"))
                .and_then(|r| r.as_str())
            {
                return reason.to_string();
            }
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_register_name_is_a_command() {
        let vmctld = Vmctld::new(std::path::Path::new("/nonexistent/socket"));
        for line in ["ls", "register", "register a b", "whoami"] {
            let out = run(line, "ssh-ed25519 AAAA", &vmctld).await;
            assert_eq!(out.status, 1, "{line}");
            assert!(out.stderr.contains("register NAME"), "{line}: {out:?}");
        }
        // A well-formed request reaches vmctld (here: none to reach).
        let out = run("register carol", "ssh-ed25519 AAAA", &vmctld).await;
        assert!(out.stderr.contains("cannot connect to vmctld"), "{out:?}");
    }

    #[test]
    fn a_refusal_shows_vmctlds_reason() {
        let e = ClientError::Daemon(vmctl_api::ErrorReply::new(
            REGISTRATION_REFUSED,
            serde_json::json!({ "reason": "registration is off on this host" }),
        ));
        assert_eq!(refusal(&e), "registration is off on this host");
    }
}
