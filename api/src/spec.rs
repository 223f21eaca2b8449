//! The desired state of one VM as vmctld stores it and the launcher of
//! `vm@NAME.service` reads it, and where a VM's files live.
//!
//! vmctld is the only writer of a [`VmSpec`] (at `Create`, `Resize`, ...);
//! the launcher only reads it. Layout, for a VM called `NAME`:
//!
//! | what | path |
//! |---|---|
//! | spec | `/var/lib/vmctl/vms/NAME.json` |
//! | root disk | `/var/lib/vmctl/disks/NAME/root.raw` |
//! | data volume `VOL` | `/var/lib/vmctl/volumes/VOL.raw` |
//! | image `IMG` | `/var/lib/vmctl/images/IMG/{root.raw,vmlinuz,initrd.img}` |
//! | runtime sockets | `/run/vmctl/vm/NAME/` (`RuntimeDirectory=` of the unit) |

use serde::{Deserialize, Serialize};
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

/// The vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The host vsock port the guest agent says hello to when the guest is up.
pub const HELLO_PORT: u32 = 1025;

/// The first guest vsock CID vmctld hands out (0-2 are reserved).
pub const FIRST_GUEST_CID: u32 = 3;

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmChoice {
    /// cloud-hypervisor when it is installed and KVM is usable, else QEMU.
    #[default]
    Auto,
    /// cloud-hypervisor (needs KVM).
    CloudHypervisor,
    /// QEMU (KVM when usable, else TCG).
    Qemu,
}

impl VmmChoice {
    /// The name as in the spec and the API: `auto`, `cloud-hypervisor`,
    /// `qemu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::CloudHypervisor => "cloud-hypervisor",
            Self::Qemu => "qemu",
        }
    }
}

impl std::str::FromStr for VmmChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cloud-hypervisor" => Ok(Self::CloudHypervisor),
            "qemu" => Ok(Self::Qemu),
            other => Err(format!(
                "unknown VMM {other:?}: expected auto, cloud-hypervisor or qemu"
            )),
        }
    }
}

/// The stored definition of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Unique name, valid per [`crate::validate_vm_name`].
    pub name: String,
    /// 128-bit ID as 32 lowercase hex digits: the guest's machine ID and
    /// the machine ID registered with systemd-machined.
    pub id: String,
    /// Unix user ID of the owner (the creator).
    pub owner_uid: u32,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Size of the root disk in bytes.
    pub disk_bytes: u64,
    /// Name of the image the root disk was made from.
    pub image: String,
    /// Which VMM to use.
    #[serde(default)]
    pub vmm: VmmChoice,
    /// The guest's vsock context ID, unique on this host.
    pub cid: u32,
    /// The VM's place on the host bridge; `None` is a VM without a NIC
    /// (`vmctl create --network none`, and specs from before networking).
    #[serde(default)]
    pub network: Option<VmNetwork>,
    /// OpenSSH public keys (one `authorized_keys` line each, validated by
    /// vmctld) allowed to log in as [`VmSpec::guest_user`].
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// The guest account the keys open: the owner's user name on the host
    /// (`root` for VMs root made). `None` in specs from before SSH keys.
    #[serde(default)]
    pub guest_user: Option<String>,
    /// The persistent data volume attached as the second disk and mounted
    /// in the guest at [`DATA_MOUNT_POINT`] (`vmctl create --data SIZE` or
    /// `--data-volume NAME`); it outlives the VM unless removed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<String>,
    /// The root disk is discarded at every stop: the launcher clones a
    /// fresh one from the image at each start (`vmctl create
    /// --ephemeral`). The data volume, if any, persists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// Where the guest mounts the VM's data volume (the second virtio disk,
/// `/dev/vdb`, an ext4 file system vmctld made).
pub const DATA_MOUNT_POINT: &str = "/var/lib/vmctl-data";

/// A VM's addresses on the host bridge, allocated by vmctld at create and
/// freed at remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetwork {
    /// The guest's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Prefix length of the IPv4 subnet.
    pub ipv4_prefix: u8,
    /// The guest's IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Prefix length of the IPv6 subnet.
    pub ipv6_prefix: u8,
    /// The guest NIC's MAC address, `02:76:6d:xx:xx:xx` (lowercase).
    pub mac: String,
    /// The bridge's IPv4 address (the guest's gateway).
    pub gateway4: Ipv4Addr,
    /// The bridge's IPv6 address (the guest's gateway).
    pub gateway6: Ipv6Addr,
}

/// Where the files of VMs live (the defaults, or a test's directories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// vmctld's state directory (`/var/lib/vmctl`).
    pub state_dir: PathBuf,
    /// The runtime directory (`/run/vmctl`).
    pub runtime_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            state_dir: crate::names::DEFAULT_STATE_DIRECTORY.into(),
            runtime_dir: "/run/vmctl".into(),
        }
    }
}

impl Layout {
    /// A layout rooted elsewhere (tests).
    pub fn under(state_dir: impl AsRef<Path>, runtime_dir: impl AsRef<Path>) -> Self {
        Layout {
            state_dir: state_dir.as_ref().to_path_buf(),
            runtime_dir: runtime_dir.as_ref().to_path_buf(),
        }
    }

    /// The stored spec of VM `name`.
    pub fn spec_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("vms").join(format!("{name}.json"))
    }

    /// The directory of VM `name`'s disks.
    pub fn disk_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("disks").join(name)
    }

    /// The root disk of VM `name`.
    pub fn root_disk(&self, name: &str) -> PathBuf {
        self.disk_dir(name).join("root.raw")
    }

    /// The persistent data volume `volume` of the directory pool (it
    /// outlives the VMs it is attached to).
    pub fn volume_file(&self, volume: &str) -> PathBuf {
        self.state_dir.join("volumes").join(format!("{volume}.raw"))
    }

    /// The directory of image `image`.
    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.state_dir.join("images").join(image)
    }

    /// The runtime directory of VM `name` (its sockets).
    pub fn vm_runtime_dir(&self, name: &str) -> PathBuf {
        self.runtime_dir.join("vm").join(name)
    }

    /// The hybrid-vsock Unix socket of VM `name` (`CONNECT <port>` to reach
    /// a guest port; guest connections to host port P arrive on `<this>_P`).
    pub fn vsock_socket(&self, name: &str) -> PathBuf {
        self.vm_runtime_dir(name).join("vsock")
    }

    /// The directory of VM `name`'s SSH host key (0700, root only).
    pub fn key_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("keys").join(name)
    }

    /// The private SSH host key of VM `name` (OpenSSH format, 0600); the
    /// public key is next to it with `.pub` appended.
    pub fn host_key(&self, name: &str) -> PathBuf {
        self.key_dir(name).join("ssh_host_ed25519_key")
    }

    /// The public keys of the gateways (`vmctl-ssh` logs into guests with
    /// its own client key), one `authorized_keys` line per gateway; vmctld
    /// keeps it (`io.vmctl.Gateway.SetGuestClientKey`).
    pub fn gateway_keys(&self) -> PathBuf {
        self.state_dir.join("gateway_authorized_keys")
    }

    /// VM `name`'s copy of [`Self::gateway_keys`], next to its host key,
    /// where the launcher (which sees only the VM's own key directory)
    /// reads it for the guest's authorized keys.
    pub fn vm_gateway_keys(&self, name: &str) -> PathBuf {
        self.key_dir(name).join("gateway_authorized_keys")
    }

    /// The known-hosts file vmctld publishes for `Host *.vm`.
    pub fn known_hosts(&self) -> PathBuf {
        self.runtime_dir.join("ssh_known_hosts")
    }

    /// The directory of the NSS data (`name/`, `addr/`).
    pub fn hosts_dir(&self) -> PathBuf {
        self.runtime_dir.join("hosts")
    }

    /// The serial console socket of VM `name`.
    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.vm_runtime_dir(name).join("console")
    }
}

impl VmSpec {
    /// The systemd unit running this VM.
    pub fn unit(&self) -> String {
        unit_name(&self.name)
    }
}

/// The systemd unit of VM `name`: `vm@NAME.service`.
pub fn unit_name(name: &str) -> String {
    format!("vm@{name}.service")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_with_kebab_case_vmm() {
        let spec = VmSpec {
            name: "blog".into(),
            id: "0123456789abcdef0123456789abcdef".into(),
            owner_uid: 0,
            vcpus: 2,
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
            image: "default".into(),
            vmm: VmmChoice::CloudHypervisor,
            cid: 3,
            network: Some(VmNetwork {
                ipv4: Ipv4Addr::new(10, 77, 0, 2),
                ipv4_prefix: 16,
                ipv6: "fd77:766d:6374::2".parse().unwrap(),
                ipv6_prefix: 64,
                mac: "02:76:6d:00:00:03".into(),
                gateway4: Ipv4Addr::new(10, 77, 0, 1),
                gateway6: "fd77:766d:6374::1".parse().unwrap(),
            }),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA x@y".into()],
            guest_user: Some("root".into()),
            data_volume: Some("blog".into()),
            ephemeral: false,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""vmm":"cloud-hypervisor""#), "{json}");
        assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn old_specs_without_network_still_read() {
        let json = r#"{"name":"a","id":"0123456789abcdef0123456789abcdef","owner_uid":0,
            "vcpus":1,"memory_bytes":1,"disk_bytes":1,"image":"default","cid":3}"#;
        let spec: VmSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.network, None);
        assert!(spec.ssh_authorized_keys.is_empty());
        assert_eq!(spec.guest_user, None);
        assert_eq!(spec.data_volume, None);
    }

    #[test]
    fn layout_paths() {
        let l = Layout::default();
        assert_eq!(
            l.spec_file("blog"),
            Path::new("/var/lib/vmctl/vms/blog.json")
        );
        assert_eq!(
            l.root_disk("blog"),
            Path::new("/var/lib/vmctl/disks/blog/root.raw")
        );
        assert_eq!(
            l.vsock_socket("blog"),
            Path::new("/run/vmctl/vm/blog/vsock")
        );
        assert_eq!(unit_name("blog"), "vm@blog.service");
    }
}
