//! [`VmConfig`]: everything a driver needs to start one VM, and its validation.
//!
//! The config is plain data (serde), written by vmctld and read by the
//! per-VM launcher. Paths must be absolute: the launcher runs with its own
//! working directory and the VMM resolves paths itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;

/// Smallest guest memory accepted (64 MiB).
pub const MIN_MEMORY_BYTES: u64 = 64 << 20;
const MIB: u64 = 1 << 20;

/// One VM, as the drivers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// VM name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 bytes).
    pub name: String,
    /// Number of virtual CPUs (1..=255).
    pub vcpus: u32,
    /// Guest memory in bytes; a multiple of 1 MiB, at least 64 MiB.
    pub memory_bytes: u64,
    /// Kernel image for direct kernel boot (bzImage or vmlinux).
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Block devices, in order (the first is `vda`).
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Network interfaces, each backed by an existing TAP device.
    #[serde(default)]
    pub net: Vec<Net>,
    /// Optional virtio-vsock device, exposed on the host as a hybrid-vsock Unix socket.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// Unix socket the VMM listens on for the guest's serial console (ttyS0).
    #[serde(default)]
    pub serial_socket: Option<PathBuf>,
    /// systemd credentials passed as SMBIOS type 11 OEM strings.
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// Directory for the VMM's own sockets (QMP, REST API, vhost-user).
    pub runtime_dir: PathBuf,
    /// Acceleration (QEMU only; cloud-hypervisor always needs KVM).
    #[serde(default)]
    pub accel: Accel,
    /// QEMU machine type (ignored by cloud-hypervisor).
    #[serde(default)]
    pub machine: Machine,
    /// The unprivileged identity the VMM processes run as (see
    /// [`crate::sandbox`]); `None` keeps the caller's.
    #[serde(default)]
    pub identity: Option<crate::sandbox::Identity>,
}

/// A virtio block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A virtio network interface on a TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Net {
    /// Name of an existing TAP device (at most 15 bytes).
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// QEMU only: a descriptor of the caller's, open on `/dev/net/tun` and
    /// attached to `tap` (`TUNSETIFF`), that QEMU inherits at the same
    /// number (`-netdev tap,fd=N`). A non-persistent TAP held this way
    /// vanishes with its last holder, even after `kill -9`.
    /// cloud-hypervisor ignores it and opens `tap` by name.
    #[serde(default)]
    pub fd: Option<i32>,
}

/// A virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context ID (>= 3).
    pub cid: u32,
    /// Host-side hybrid-vsock Unix socket (`CONNECT <port>\n` protocol).
    pub socket: PathBuf,
}

/// One systemd credential, rendered as `io.systemd.credential:NAME=VALUE`,
/// or `io.systemd.credential.binary:NAME=VALUE` when `binary` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Credential name (no `=`, `/`, whitespace or control characters).
    pub name: String,
    /// Credential value (no newline, no NUL); base64 when `binary` is set.
    pub value: String,
    /// The value is base64 (for values that span lines or hold any bytes).
    #[serde(default)]
    pub binary: bool,
}

impl Credential {
    /// A credential whose value is any bytes, carried as base64.
    pub fn binary(name: impl Into<String>, value: &[u8]) -> Credential {
        Credential {
            name: name.into(),
            value: base64(value),
            binary: true,
        }
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `-machine q35` with PCI devices.
    #[default]
    Q35,
    /// `-machine microvm` with virtio-mmio devices.
    Microvm,
}

/// Why a [`VmConfig`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Bad VM name.
    #[error("invalid VM name {0:?}: use 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
    /// vcpus out of range.
    #[error("vcpus must be between 1 and 255, got {0}")]
    InvalidVcpus(u32),
    /// Memory too small or not MiB-aligned.
    #[error("memory_bytes must be a multiple of 1 MiB and at least 64 MiB, got {0}")]
    InvalidMemory(u64),
    /// A path field is not absolute.
    #[error("{field} must be an absolute path, got {path:?}")]
    RelativePath {
        /// Which field.
        field: String,
        /// The offending path.
        path: PathBuf,
    },
    /// Kernel command line contains NUL or newline.
    #[error("kernel command line must not contain NUL or newline characters")]
    InvalidCmdline,
    /// Bad TAP name.
    #[error("invalid TAP device name {0:?}: 1-15 bytes, no '/', whitespace, ',' or ':'")]
    InvalidTap(String),
    /// Bad MAC address.
    #[error("invalid MAC address {0:?}: expected six hex pairs like 52:54:00:12:34:56, unicast")]
    InvalidMac(String),
    /// vsock CID reserved.
    #[error("vsock guest CID must be at least 3 (0-2 are reserved), got {0}")]
    InvalidCid(u32),
    /// Bad credential name.
    #[error(
        "invalid credential name {0:?}: non-empty, no '=', '/', whitespace or control characters"
    )]
    InvalidCredentialName(String),
    /// Bad credential value.
    #[error("credential {0:?} has a value with a newline or NUL")]
    InvalidCredentialValue(String),
    /// A binary credential whose value is not base64.
    #[error("binary credential {0:?} has a value that is not base64")]
    InvalidCredentialBase64(String),
    /// A TAP descriptor that cannot be one the caller passes on.
    #[error("TAP {0:?}: descriptor {1} is not above 2 (stdin, stdout, stderr)")]
    InvalidTapFd(String, i32),
    /// An identity that is root's.
    #[error("the VMM identity must not be uid or gid 0, got {0}:{1}")]
    RootIdentity(u32, u32),
}

impl VmConfig {
    /// Check every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.as_bytes()[0].is_ascii_alphanumeric()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(ConfigError::InvalidName(self.name.clone()));
        }
        if !(1..=255).contains(&self.vcpus) {
            return Err(ConfigError::InvalidVcpus(self.vcpus));
        }
        if self.memory_bytes < MIN_MEMORY_BYTES || !self.memory_bytes.is_multiple_of(MIB) {
            return Err(ConfigError::InvalidMemory(self.memory_bytes));
        }
        absolute("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            absolute("initrd", initrd)?;
        }
        if self.cmdline.contains(['\0', '\n']) {
            return Err(ConfigError::InvalidCmdline);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            absolute(&format!("disks[{i}].path"), &disk.path)?;
        }
        for net in &self.net {
            let tap_ok = !net.tap.is_empty()
                && net.tap.len() <= 15
                && !net.tap.chars().any(|c| {
                    c == '/' || c == ',' || c == ':' || c.is_whitespace() || c.is_control()
                });
            if !tap_ok {
                return Err(ConfigError::InvalidTap(net.tap.clone()));
            }
            if !valid_mac(&net.mac) {
                return Err(ConfigError::InvalidMac(net.mac.clone()));
            }
            if let Some(fd) = net.fd.filter(|fd| *fd < 3) {
                return Err(ConfigError::InvalidTapFd(net.tap.clone(), fd));
            }
        }
        if let Some(id) = self.identity.filter(|id| id.uid == 0 || id.gid == 0) {
            return Err(ConfigError::RootIdentity(id.uid, id.gid));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.cid < 3 {
                return Err(ConfigError::InvalidCid(vsock.cid));
            }
            absolute("vsock.socket", &vsock.socket)?;
        }
        if let Some(serial) = &self.serial_socket {
            absolute("serial_socket", serial)?;
        }
        for cred in &self.credentials {
            let name_ok = !cred.name.is_empty()
                && !cred
                    .name
                    .chars()
                    .any(|c| c == '=' || c == '/' || c.is_whitespace() || c.is_control());
            if !name_ok {
                return Err(ConfigError::InvalidCredentialName(cred.name.clone()));
            }
            if cred.value.contains(['\0', '\n']) {
                return Err(ConfigError::InvalidCredentialValue(cred.name.clone()));
            }
            if cred.binary
                && !cred
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            {
                return Err(ConfigError::InvalidCredentialBase64(cred.name.clone()));
            }
        }
        absolute("runtime_dir", &self.runtime_dir)?;
        Ok(())
    }

    /// The SMBIOS type 11 OEM strings carrying the credentials.
    pub fn oem_strings(&self) -> Vec<String> {
        self.credentials
            .iter()
            .map(|c| {
                let kind = if c.binary { ".binary" } else { "" };
                format!("io.systemd.credential{kind}:{}={}", c.name, c.value)
            })
            .collect()
    }

    /// Guest memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes / MIB
    }
}

fn absolute(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::RelativePath {
            field: field.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// `aa:bb:cc:dd:ee:ff`, unicast (lowest bit of the first octet clear).
fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid config used across the crate's unit tests.
    pub(crate) fn sample() -> VmConfig {
        VmConfig {
            name: "blog".into(),
            vcpus: 2,
            memory_bytes: 1 << 30,
            kernel: "/var/lib/vmctl/kernel/vmlinuz".into(),
            initrd: Some("/var/lib/vmctl/kernel/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda rw".into(),
            disks: vec![
                Disk {
                    path: "/var/lib/vmctl/volumes/blog.raw".into(),
                    read_only: false,
                },
                Disk {
                    path: "/var/lib/vmctl/seed,1.raw".into(),
                    read_only: true,
                },
            ],
            net: vec![Net {
                tap: "vmt-blog".into(),
                mac: "52:54:00:12:34:56".into(),
                fd: None,
            }],
            vsock: Some(Vsock {
                cid: 7,
                socket: "/run/vmctl/vm/blog/vsock".into(),
            }),
            serial_socket: Some("/run/vmctl/vm/blog/serial".into()),
            credentials: vec![Credential {
                name: "ssh.authorized_keys.root".into(),
                value: "ssh-ed25519 AAAA x@y".into(),
                binary: false,
            }],
            runtime_dir: "/run/vmctl/vm/blog".into(),
            accel: Accel::Auto,
            machine: Machine::Q35,
            identity: None,
        }
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn errors_name_the_problem() {
        let mut c = sample();
        c.name = "-bad".into();
        assert_eq!(c.validate(), Err(ConfigError::InvalidName("-bad".into())));
        let mut c = sample();
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::InvalidVcpus(0)));
        let mut c = sample();
        c.memory_bytes = (512 << 20) + 1;
        assert!(matches!(c.validate(), Err(ConfigError::InvalidMemory(_))));
        let mut c = sample();
        c.memory_bytes = 32 << 20;
        assert!(matches!(c.validate(), Err(ConfigError::InvalidMemory(_))));
        let mut c = sample();
        c.kernel = "vmlinuz".into();
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel must be an absolute path, got \"vmlinuz\""
        );
        let mut c = sample();
        c.disks[1].path = "rel.raw".into();
        assert!(err_text(&c).starts_with("disks[1].path must be an absolute path"));
        let mut c = sample();
        c.net[0].tap = "a-very-long-tap-name".into();
        assert!(matches!(c.validate(), Err(ConfigError::InvalidTap(_))));
        let mut c = sample();
        c.net[0].mac = "53:54:00:12:34:56".into(); // multicast
        assert!(matches!(c.validate(), Err(ConfigError::InvalidMac(_))));
        let mut c = sample();
        c.net[0].mac = "52:54:00:12:34".into();
        assert!(matches!(c.validate(), Err(ConfigError::InvalidMac(_))));
        let mut c = sample();
        c.vsock.as_mut().unwrap().cid = 2;
        assert_eq!(c.validate(), Err(ConfigError::InvalidCid(2)));
        let mut c = sample();
        c.credentials[0].name = "a=b".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidCredentialName(_))
        ));
        let mut c = sample();
        c.credentials[0].value = "x\ny".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidCredentialValue(_))
        ));
        let mut c = sample();
        c.credentials[0] = Credential::binary("x", b"a\nb");
        c.validate().unwrap();
        c.credentials[0].value.push('\n');
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidCredentialValue(_))
        ));
        c.credentials[0].value = "a b".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidCredentialBase64(_))
        ));
        let mut c = sample();
        c.net[0].fd = Some(2);
        assert_eq!(
            c.validate(),
            Err(ConfigError::InvalidTapFd("vmt-blog".into(), 2))
        );
        let mut c = sample();
        c.cmdline = "a\nb".into();
        assert_eq!(c.validate(), Err(ConfigError::InvalidCmdline));
    }

    fn err_text(c: &VmConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn serde_round_trip_and_defaults() {
        let c = sample();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), c);
        let minimal: VmConfig = serde_json::from_str(
            r#"{"name":"a","vcpus":1,"memory_bytes":134217728,"kernel":"/k","runtime_dir":"/run/x"}"#,
        )
        .unwrap();
        assert_eq!(minimal.accel, Accel::Auto);
        assert_eq!(minimal.machine, Machine::Q35);
        minimal.validate().unwrap();
        assert_eq!(
            sample().oem_strings(),
            ["io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA x@y"]
        );
    }

    #[test]
    fn binary_credentials_render_base64() {
        let mut c = sample();
        c.credentials = vec![
            Credential::binary("network.network.50-vmctl", b"[Match]\nName=*\n"),
            Credential::binary("a", b"ab"),
            Credential::binary("b", b"abc"),
        ];
        assert_eq!(
            c.oem_strings(),
            [
                "io.systemd.credential.binary:network.network.50-vmctl=W01hdGNoXQpOYW1lPSoK",
                "io.systemd.credential.binary:a=YWI=",
                "io.systemd.credential.binary:b=YWJj",
            ]
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), c);
    }
}
