//! The gateway's own keys, made on first start in its state directory
//! (`/var/lib/vmctl-ssh`, mode 0700, owned by `vmctl-ssh`), each file 0600:
//!
//! - the host key clients see (`ssh_host_ed25519_key`);
//! - the client key it logs into guests with (`guest_client_ed25519_key`),
//!   whose public half vmctld puts into each VM's authorized keys.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use russh::keys::{ssh_key::LineEnding, Algorithm, PrivateKey};

/// The host key file under the state directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// The guest client key file under the state directory.
pub const CLIENT_KEY_FILE: &str = "guest_client_ed25519_key";

/// Loads the ed25519 key at `path`, making it (0600) when it is missing.
pub fn load_or_generate(path: &Path) -> anyhow::Result<PrivateKey> {
    match fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(&text)
            .with_context(|| format!("{} is not an OpenSSH private key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(path),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn generate(path: &Path) -> anyhow::Result<PrivateKey> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate an ed25519 key")?;
    let text = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the new key")?;
    // Written under a temporary name and renamed, so a crash never leaves
    // a half key that the next start would refuse.
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
    let public = key.public_key().to_openssh().context("encode public key")?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    tracing::info!("made a new key {}", path.display());
    Ok(key)
}

/// The `TYPE BASE64` form of a public key (no comment), as keys are
/// looked up in vmctld's store.
pub fn key_line(key: &russh::keys::PublicKey) -> String {
    let mut line = key.to_openssh().unwrap_or_default();
    // to_openssh appends the comment, if any.
    if let Some((kind, rest)) = line.split_once(' ') {
        let data = rest.split(' ').next().unwrap_or_default();
        line = format!("{kind} {data}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_KEY_FILE);
        let first = load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_generate(&path).unwrap();
        assert_eq!(first.public_key(), second.public_key());
        let line = key_line(first.public_key());
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert_eq!(line.split(' ').count(), 2);
        let published =
            fs::read_to_string(dir.path().join(format!("{HOST_KEY_FILE}.pub"))).unwrap();
        assert!(published.starts_with(&line), "{published}");
    }

    #[test]
    fn a_broken_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_KEY_FILE);
        fs::write(&path, "garbage").unwrap();
        let e = format!("{:#}", load_or_generate(&path).unwrap_err());
        assert!(e.contains(HOST_KEY_FILE), "{e}");
    }
}
