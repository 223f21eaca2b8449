//! The gateways' client keys for guests: the SSH gateway logs into a VM's
//! sshd with a key of its own, which every guest trusts for its SSH user.
//!
//! A gateway hands its public key over with
//! `io.vmctl.Gateway.SetGuestClientKey`; vmctld keeps one line per gateway
//! in `<state>/gateway_authorized_keys` (comment `vmctl-gateway:NAME`) and
//! copies the file into each VM's key directory (0600, root only), where
//! the launcher, which sees only that directory, reads it when the VM
//! starts ([`vmctl_api::guest_credentials::for_vm`]). A VM running when a
//! key changes gets it at its next start.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use vmctl_api::{spec::Layout, ssh_keys::validate_public_key};

use crate::{Caller, Manager, ManagerError};

/// The comment that marks a gateway's line.
fn marker(gateway: &str) -> String {
    format!("vmctl-gateway:{gateway}")
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Sets gateway `gateway`'s key (a checked `TYPE BASE64 [COMMENT]`; the
/// comment is replaced by the marker). Returns whether the file changed.
pub fn set(layout: &Layout, gateway: &str, key: &str) -> io::Result<bool> {
    let path = layout.gateway_keys();
    let old = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let marker = marker(gateway);
    let fields: Vec<&str> = key.split_ascii_whitespace().take(2).collect();
    let line = format!("{} {marker}", fields.join(" "));
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| l.split_ascii_whitespace().nth(2) != Some(marker.as_str()))
        .collect();
    lines.push(&line);
    let text = lines.join("\n") + "\n";
    if text == old {
        return Ok(false);
    }
    write_private(&path, &text)?;
    Ok(true)
}

/// Copies the gateways' keys into VM `name`'s key directory (which must
/// exist); without any, nothing is copied.
pub fn copy_to_vm(layout: &Layout, name: &str) -> io::Result<()> {
    match fs::read_to_string(layout.gateway_keys()) {
        Ok(text) => write_private(&layout.vm_gateway_keys(name), &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Manager {
    /// `SetGuestClientKey`: the calling gateway's key for guests (root
    /// sets it as gateway "root"). The caller is checked by
    /// [`Manager::require_gateway`] first.
    pub fn set_guest_client_key(&self, caller: &Caller, key: &str) -> Result<(), ManagerError> {
        let gateway = self
            .gateway_peer(caller)?
            .unwrap_or_else(|| "root".to_string());
        let key = validate_public_key(key).map_err(|reason| ManagerError::InvalidArgument {
            what: "SSH key".into(),
            reason,
        })?;
        let layout = self.layout();
        let changed = set(layout, &gateway, &key).map_err(|e| {
            ManagerError::internal(format!("{}: {e}", layout.gateway_keys().display()))
        })?;
        if !changed {
            return Ok(());
        }
        tracing::info!("gateway {gateway} set its client key for guests");
        for spec in self.registry().list()? {
            if layout.key_dir(&spec.name).is_dir() {
                if let Err(e) = copy_to_vm(layout, &spec.name) {
                    tracing::warn!("VM {}: gateway keys: {e}", spec.name);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e";
    const B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8f";

    #[test]
    fn one_line_per_gateway_replaced_in_place_and_copied_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path(), dir.path().join("run"));
        fs::create_dir_all(layout.key_dir("blog")).unwrap();
        copy_to_vm(&layout, "blog").unwrap();
        assert!(!layout.vm_gateway_keys("blog").exists(), "nothing to copy");
        assert!(set(&layout, "vmctl-ssh", &format!("{A} me@x")).unwrap());
        assert!(!set(&layout, "vmctl-ssh", A).unwrap(), "unchanged");
        assert!(set(&layout, "vmctl-https", B).unwrap());
        assert!(set(&layout, "vmctl-ssh", B).unwrap());
        let text = fs::read_to_string(layout.gateway_keys()).unwrap();
        assert_eq!(
            text,
            format!("{B} vmctl-gateway:vmctl-https\n{B} vmctl-gateway:vmctl-ssh\n")
        );
        copy_to_vm(&layout, "blog").unwrap();
        let copy = layout.vm_gateway_keys("blog");
        assert_eq!(fs::read_to_string(&copy).unwrap(), text);
        let mode = fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
