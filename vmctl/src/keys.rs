//! The SSH public keys `vmctl create` sends: the files named with
//! `--ssh-key`, else the caller's `~/.ssh/*.pub`; and `vmctl ssh-key`,
//! the caller's keys for the SSH gateway.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use vmctl_api::ssh_keys::validate_public_key;

/// The keys in `files`: every non-empty, non-comment line must be a valid
/// public key; the error names the file and line. A file with no key is an
/// error too (a typo in the path of an empty file would otherwise give a
/// VM nobody can log in to).
pub fn read_key_files(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    for file in files {
        let found = keys_in(file)?;
        if found.is_empty() {
            bail!("--ssh-key {}: no public key in the file", file.display());
        }
        keys.extend(found);
    }
    Ok(keys)
}

fn keys_in(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = fs::read_to_string(file)
        .with_context(|| format!("--ssh-key {}: cannot read the file", file.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = validate_public_key(line)
            .map_err(|e| anyhow::anyhow!("--ssh-key {} line {}: {e}", file.display(), i + 1))?;
        keys.push(key);
    }
    Ok(keys)
}

/// The keys of `$HOME/.ssh/*.pub`, sorted by file name; files that hold
/// no valid key are skipped with a warning. None at all is fine (the VM is
/// then reached with `vmctl shell`).
pub fn default_keys() -> Vec<String> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    keys_in_dir(&Path::new(&home).join(".ssh"))
}

fn keys_in_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
        .collect();
    files.sort();
    let mut keys = Vec::new();
    for file in files {
        match keys_in(&file) {
            Ok(found) => keys.extend(found),
            Err(e) => eprintln!("vmctl: warning: skipping {}: {e:#}", file.display()),
        }
    }
    keys
}

/// `vmctl ssh-key add/list/rm`: the caller's keys in vmctld's store,
/// which open the SSH gateway to the caller's account.
pub async fn ssh_key(address: &Path, action: crate::cli::SshKeyCommand) -> anyhow::Result<()> {
    use crate::cli::SshKeyCommand;
    let method = |m: &str| format!("{}.{m}", vmctl_api::names::VARLINK_INTERFACE);
    let mut client = crate::client::connect(address).await?;
    match action {
        SshKeyCommand::Add { file } => {
            let keys = read_key_files(std::slice::from_ref(&file))?;
            for key in &keys {
                client
                    .call::<serde_json::Value>(
                        &method("AddSSHKey"),
                        Some(serde_json::json!({ "key": key })),
                    )
                    .await?;
            }
            println!(
                "Registered {} key{} from {}.",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" },
                file.display()
            );
        }
        SshKeyCommand::List => {
            #[derive(serde::Deserialize)]
            struct Reply {
                keys: Vec<String>,
            }
            let reply: Reply = client.call(&method("ListSSHKeys"), None).await?;
            for key in reply.keys {
                println!("{key}");
            }
        }
        SshKeyCommand::Rm { key } => {
            let path = Path::new(&key);
            let keys = if path.is_file() {
                read_key_files(&[path.to_path_buf()])?
            } else {
                vec![key]
            };
            for key in keys {
                client
                    .call::<serde_json::Value>(
                        &method("RemoveSSHKey"),
                        Some(serde_json::json!({ "key": key })),
                    )
                    .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e me@host";

    #[test]
    fn reads_named_files_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("id.pub");
        fs::write(&good, format!("# mine\n{KEY}\n\n")).unwrap();
        assert_eq!(read_key_files(std::slice::from_ref(&good)).unwrap(), [KEY]);
        let bad = dir.path().join("id");
        fs::write(
            &bad,
            format!("{KEY}\n-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        )
        .unwrap();
        let e = read_key_files(&[good, bad]).unwrap_err().to_string();
        assert!(e.contains("id line 2: unknown key type"), "{e}");
        let empty = dir.path().join("empty.pub");
        fs::write(&empty, "").unwrap();
        let e = read_key_files(&[empty]).unwrap_err().to_string();
        assert!(e.contains("no public key"), "{e}");
        let e = read_key_files(&[dir.path().join("missing.pub")]).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn default_keys_skip_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.pub"), format!("{KEY}\n")).unwrap();
        fs::write(dir.path().join("a.pub"), "garbage\n").unwrap();
        fs::write(dir.path().join("id_ed25519"), "private\n").unwrap();
        assert_eq!(keys_in_dir(dir.path()), [KEY]);
        assert!(keys_in_dir(&dir.path().join("nope")).is_empty());
    }
}
