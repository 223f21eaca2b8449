//! The systemd credentials that give a guest its SSH access: a pure
//! function of the spec and the VM's host key, called by the launcher,
//! which passes them over SMBIOS type 11.
//!
//! Their values span lines, so they travel in the binary form
//! `io.systemd.credential.binary:NAME=BASE64` ([`GuestCredential::oem_string`]).
//!
//! - `system.hostname`: the VM's name, so `ssh NAME.vm hostname` prints it.
//! - The guest user's `authorized_keys`: for root `ssh.authorized_keys.root`
//!   (written by systemd's own `provision.conf`); for another user
//!   `sysusers.extra` makes the account and `tmpfiles.extra` writes its
//!   `~/.ssh/authorized_keys`.
//! - The host key: `tmpfiles.extra` lines (`f+~`, base64 argument) write
//!   `/etc/ssh/ssh_host_ed25519_key` (0600) and its `.pub`, replacing any
//!   key baked into the image, so the key vmctld published is the one sshd
//!   shows.
//! - `fstab.extra` (read by systemd-fstab-generator, systemd >= 254), for
//!   a VM with a data volume: mounts the second disk at
//!   [`DATA_MOUNT_POINT`] and grows its file system to the disk's size
//!   (`x-systemd.growfs`, so `vmctl resize-disk NAME data` shows after a
//!   restart).

use std::{fs, io};

use crate::spec::{Layout, VmSpec, DATA_MOUNT_POINT};

/// The guest agent's unit in the image: what must wait for the data disk.
const GUEST_AGENT_UNIT: &str = "vmctl-guest-agent.service";

/// The guest device of the data volume: the second virtio disk (the
/// launcher attaches the root disk first, the data volume second).
pub const DATA_DEVICE: &str = "/dev/vdb";

/// One credential for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCredential {
    /// Credential name, e.g. `tmpfiles.extra`.
    pub name: String,
    /// Its value (any bytes).
    pub value: Vec<u8>,
}

impl GuestCredential {
    fn new(name: &str, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.to_string(),
            value: value.into(),
        }
    }

    /// The value in base64 (standard alphabet, padded).
    pub fn value_base64(&self) -> String {
        base64(&self.value)
    }

    /// The SMBIOS type 11 string: `io.systemd.credential.binary:NAME=BASE64`.
    pub fn oem_string(&self) -> String {
        format!(
            "io.systemd.credential.binary:{}={}",
            self.name,
            self.value_base64()
        )
    }
}

/// The guest account used when a spec names none (specs from before SSH
/// keys, all made by root).
pub const DEFAULT_GUEST_USER: &str = "root";

/// The credentials of `spec`, given the VM's host key pair (OpenSSH private
/// key text and public key line). With neither keys nor a host key the
/// list holds only the hostname.
pub fn for_spec(
    spec: &VmSpec,
    host_key_private: &str,
    host_key_public: &str,
) -> Vec<GuestCredential> {
    let mut creds = vec![GuestCredential::new("system.hostname", spec.name.as_str())];
    let user = spec.guest_user.as_deref().unwrap_or(DEFAULT_GUEST_USER);
    let mut tmpfiles = String::new();
    if !spec.ssh_authorized_keys.is_empty() {
        let mut keys = spec.ssh_authorized_keys.join("\n");
        keys.push('\n');
        if user == "root" {
            creds.push(GuestCredential::new("ssh.authorized_keys.root", keys));
        } else if !is_plain_user_name(user) {
            // Never reached through vmctld, which checks at create; a
            // hand-edited spec must not inject tmpfiles lines.
        } else {
            creds.push(GuestCredential::new(
                "sysusers.extra",
                format!("u {user} - \"vmctl owner\" /home/{user} /bin/bash\n"),
            ));
            tmpfiles.push_str(&format!(
                "d /home/{user} 0700 {user} {user} -\n\
                 d /home/{user}/.ssh 0700 {user} {user} -\n\
                 f+~ /home/{user}/.ssh/authorized_keys 0600 {user} {user} - {}\n",
                base64(keys.as_bytes())
            ));
        }
    }
    if !host_key_private.is_empty() && !host_key_public.is_empty() {
        let public = format!("{}\n", host_key_public.trim_end());
        tmpfiles.push_str(&format!(
            "d /etc/ssh 0755 root root -\n\
             f+~ /etc/ssh/ssh_host_ed25519_key 0600 root root - {}\n\
             f+~ /etc/ssh/ssh_host_ed25519_key.pub 0644 root root - {}\n",
            base64(host_key_private.as_bytes()),
            base64(public.as_bytes())
        ));
    }
    if !tmpfiles.is_empty() {
        creds.push(GuestCredential::new("tmpfiles.extra", tmpfiles));
    }
    if spec.data_volume.is_some() {
        // No fsck pass: the image need not have e2fsprogs. The guest agent
        // starts before local-fs.target (for an early READY), so the mount
        // is ordered before it: READY, and so `systemctl start vm@NAME`,
        // come only once the data is there.
        creds.push(GuestCredential::new(
            "fstab.extra",
            format!(
                "{DATA_DEVICE} {DATA_MOUNT_POINT} ext4 \
                 defaults,x-systemd.growfs,x-systemd.before={GUEST_AGENT_UNIT} 0 0\n"
            ),
        ));
    }
    creds
}

/// A user name that is safe inside sysusers and tmpfiles lines:
/// `[a-z_][a-z0-9_-]*`, at most 32 characters.
pub fn is_plain_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The credentials of `spec` with its host key read from `layout` (as
/// root: the private key is 0600), and the gateways' client keys of the
/// VM's key directory added to its authorized keys. A VM without a host
/// key (made before vmctld made them) gets the others.
pub fn for_vm(layout: &Layout, spec: &VmSpec) -> io::Result<Vec<GuestCredential>> {
    let private_path = layout.host_key(&spec.name);
    let mut public_path = private_path.clone().into_os_string();
    public_path.push(".pub");
    let read = |path: &std::path::Path| match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    };
    let private = read(&private_path)?;
    let public = read(std::path::Path::new(&public_path))?;
    let gateways = read(&layout.vm_gateway_keys(&spec.name))?;
    if gateways.trim().is_empty() {
        return Ok(for_spec(spec, &private, &public));
    }
    // The gateways' client keys open the same account as the owner's keys
    // (the SSH gateway logs in as the VM's SSH user).
    let mut spec = spec.clone();
    spec.ssh_authorized_keys.extend(
        gateways
            .lines()
            .filter(|l| crate::ssh_keys::validate_public_key(l).is_ok())
            .map(str::to_string),
    );
    Ok(for_spec(&spec, &private, &public))
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::VmmChoice;

    fn spec(user: Option<&str>, keys: &[&str]) -> VmSpec {
        VmSpec {
            name: "blog".into(),
            id: "0123456789abcdef0123456789abcdef".into(),
            owner_uid: 0,
            vcpus: 1,
            memory_bytes: 1 << 30,
            disk_bytes: 4 << 30,
            image: "default".into(),
            vmm: VmmChoice::Qemu,
            cid: 3,
            network: None,
            ssh_authorized_keys: keys.iter().map(|k| k.to_string()).collect(),
            guest_user: user.map(str::to_string),
            data_volume: None,
            ephemeral: false,
        }
    }

    #[test]
    fn a_data_volume_is_mounted_by_fstab_extra() {
        let mut s = spec(None, &[]);
        assert!(!for_spec(&s, "", "").iter().any(|c| c.name == "fstab.extra"));
        s.data_volume = Some("blog".into());
        let creds = for_spec(&s, "", "");
        assert_eq!(
            value(&creds, "fstab.extra"),
            "/dev/vdb /var/lib/vmctl-data ext4 \
             defaults,x-systemd.growfs,x-systemd.before=vmctl-guest-agent.service 0 0\n"
        );
    }

    fn value<'a>(creds: &'a [GuestCredential], name: &str) -> &'a str {
        let c = creds.iter().find(|c| c.name == name).expect(name);
        std::str::from_utf8(&c.value).unwrap()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn root_gets_its_authorized_keys_and_the_host_key() {
        let creds = for_spec(
            &spec(None, &["ssh-ed25519 A a", "ssh-rsa B b"]),
            "PRIV\n",
            "ssh-ed25519 PUB",
        );
        assert_eq!(value(&creds, "system.hostname"), "blog");
        assert_eq!(
            value(&creds, "ssh.authorized_keys.root"),
            "ssh-ed25519 A a\nssh-rsa B b\n"
        );
        let tmpfiles = value(&creds, "tmpfiles.extra");
        assert!(tmpfiles.contains(&format!(
            "f+~ /etc/ssh/ssh_host_ed25519_key 0600 root root - {}\n",
            base64(b"PRIV\n")
        )));
        assert!(tmpfiles.contains(&base64(b"ssh-ed25519 PUB\n")));
        assert!(creds.iter().all(|c| c.name != "sysusers.extra"));
        assert_eq!(
            creds[0].oem_string(),
            format!(
                "io.systemd.credential.binary:system.hostname={}",
                base64(b"blog")
            )
        );
    }

    #[test]
    fn another_owner_gets_an_account_of_their_name() {
        let creds = for_spec(&spec(Some("alice"), &["ssh-ed25519 A a"]), "", "");
        assert!(value(&creds, "sysusers.extra").starts_with("u alice - "));
        let tmpfiles = value(&creds, "tmpfiles.extra");
        assert!(tmpfiles.contains(&format!(
            "f+~ /home/alice/.ssh/authorized_keys 0600 alice alice - {}\n",
            base64(b"ssh-ed25519 A a\n")
        )));
        assert!(creds.iter().all(|c| c.name != "ssh.authorized_keys.root"));
        let hostile = for_spec(&spec(Some("x 0777 root"), &["ssh-ed25519 A a"]), "", "");
        assert_eq!(hostile.len(), 1, "{hostile:?}");
        assert!(!is_plain_user_name("Alice") && is_plain_user_name("_a-1"));
    }

    #[test]
    fn for_vm_reads_the_host_key_files() {
        let dir = std::env::temp_dir().join(format!("vmctl-gc-{}", std::process::id()));
        let layout = Layout::under(&dir, dir.join("run"));
        let s = spec(None, &[]);
        assert_eq!(for_vm(&layout, &s).unwrap().len(), 1, "no key yet");
        fs::create_dir_all(layout.key_dir("blog")).unwrap();
        fs::write(layout.host_key("blog"), "PRIV\n").unwrap();
        fs::write(
            layout.key_dir("blog").join("ssh_host_ed25519_key.pub"),
            "ssh-ed25519 P c\n",
        )
        .unwrap();
        let creds = for_vm(&layout, &s).unwrap();
        let tmpfiles = value(&creds, "tmpfiles.extra");
        assert!(tmpfiles.contains(&base64(b"PRIV\n")), "{tmpfiles}");
        assert!(
            tmpfiles.contains(&base64(b"ssh-ed25519 P c\n")),
            "{tmpfiles}"
        );
        assert!(creds.iter().all(|c| c.name != "ssh.authorized_keys.root"));
        // A gateway's client key opens the VM's account (root here).
        let gateway = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e vmctl-gateway:vmctl-ssh";
        fs::write(
            layout.vm_gateway_keys("blog"),
            format!("{gateway}\nnot a key\n"),
        )
        .unwrap();
        let creds = for_vm(&layout, &s).unwrap();
        assert_eq!(
            value(&creds, "ssh.authorized_keys.root"),
            format!("{gateway}\n")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_keys_no_host_key_only_the_hostname() {
        let creds = for_spec(&spec(None, &[]), "", "");
        assert_eq!(creds.len(), 1);
    }
}
