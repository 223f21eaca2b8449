//! Each VM's SSH host key and the known-hosts file that vouches for it.
//!
//! vmctld makes an ed25519 key pair per VM at create (`ssh-keygen`, run
//! with arguments, no shell) under `<state>/keys/NAME/` (0700, the private
//! key 0600); the launcher hands the pair to the guest by credential. The
//! public keys are published in `/run/vmctl/ssh_known_hosts`, one line per
//! VM (`NAME.vm,IPV4,IPV6 ssh-ed25519 KEY`), rewritten atomically; the
//! installed `/etc/ssh/ssh_config.d/50-vmctl.conf` names it for `Host *.vm`
//! with `StrictHostKeyChecking yes`, so the first `ssh NAME.vm` asks
//! nothing and a different key is refused.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
};

use vmctl_api::spec::{Layout, VmSpec};

/// The program that makes the keys.
pub const SSH_KEYGEN: &str = "ssh-keygen";

/// Makes VM `name`'s host key pair in `layout.key_dir(name)`, which must
/// not exist yet (created 0700, its parent too).
pub fn generate(layout: &Layout, name: &str) -> io::Result<()> {
    let dir = layout.key_dir(name);
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let key = layout.host_key(name);
    let output = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("root@{name}"))
        .arg("-f")
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {SSH_KEYGEN}: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{SSH_KEYGEN} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    // The gateways' client keys, for the launcher to hand to the guest.
    crate::gateway_keys::copy_to_vm(layout, name)
}

/// VM `name`'s public host key line (`ssh-ed25519 KEY COMMENT`), `None`
/// when it has none.
pub fn public_key(layout: &Layout, name: &str) -> Option<String> {
    let mut path = layout.host_key(name).into_os_string();
    path.push(".pub");
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// The known-hosts line of `spec` with public key `key`: the name under
/// `.vm` and, when the VM has them, its addresses; the key's comment is
/// dropped.
pub fn known_hosts_line(spec: &VmSpec, key: &str) -> String {
    let mut hosts = format!("{}.vm", spec.name);
    if let Some(net) = &spec.network {
        hosts.push_str(&format!(",{},{}", net.ipv4, net.ipv6));
    }
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    format!("{hosts} {}", key.join(" "))
}

/// Rewrites `path` with the known-hosts lines of `specs` (those with a
/// host key), atomically (temporary file, then rename), mode 0644.
pub fn write_known_hosts(layout: &Layout, specs: &[VmSpec]) -> io::Result<()> {
    let path = layout.known_hosts();
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let mut text = String::from("# Written by vmctld: the SSH host keys of the VMs.\n");
    for spec in specs {
        if let Some(key) = public_key(layout, &spec.name) {
            text.push_str(&known_hosts_line(spec, &key));
            text.push('\n');
        }
    }
    let tmp = dir.join(".ssh_known_hosts.tmp");
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The daemon's umask is 0077; ssh runs as any user.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::spec;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn generates_a_private_key_only_root_reads_and_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path().join("state"), dir.path().join("run"));
        generate(&layout, "blog").unwrap();
        let meta = fs::metadata(layout.host_key("blog")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let key_dir = fs::metadata(layout.key_dir("blog")).unwrap();
        assert_eq!(key_dir.mode() & 0o777, 0o700);
        let public = public_key(&layout, "blog").unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
        assert!(
            generate(&layout, "blog").is_err(),
            "an existing key is kept"
        );

        let mut blog = spec("blog", 0);
        blog.network = Some(vmctl_api::spec::VmNetwork {
            ipv4: "10.77.0.2".parse().unwrap(),
            ipv4_prefix: 16,
            ipv6: "fd77:766d:6374::2".parse().unwrap(),
            ipv6_prefix: 64,
            mac: "02:76:6d:00:00:03".into(),
            gateway4: "10.77.0.1".parse().unwrap(),
            gateway6: "fd77:766d:6374::1".parse().unwrap(),
        });
        write_known_hosts(&layout, &[blog, spec("nokey", 0)]).unwrap();
        let text = fs::read_to_string(layout.known_hosts()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 1, "{text}");
        let fields: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(fields[0], "blog.vm,10.77.0.2,fd77:766d:6374::2");
        assert_eq!(
            fields[1..].join(" "),
            public.split(' ').take(2).collect::<Vec<_>>().join(" ")
        );
        let meta = fs::metadata(layout.known_hosts()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
    }
}
