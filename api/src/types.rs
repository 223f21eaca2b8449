//! The records of the `io.vmctl.Manager` interface, as they travel on the
//! wire (field names match the IDL).

use serde::{Deserialize, Serialize};

/// A virtual machine known to vmctld (the IDL type `VM`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Unique name, valid per [`crate::validate_vm_name`].
    pub name: String,
    /// Lifecycle state: `stopped`, `starting`, `running`, `stopping` or
    /// `failed`, or `unknown` when vmctld cannot tell. A string so that older
    /// clients survive new states.
    pub state: String,
    /// Unix user ID of the owner (the creator).
    pub owner_uid: u32,
    /// The owner's user name (the uid in decimal when it has none).
    #[serde(default)]
    pub owner: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// IPv4 address on the host bridge, if allocated.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// IPv6 address on the host bridge, if allocated.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// MAC address of the VM's NIC, if it has one.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Everything vmctld knows about one VM (the IDL type `VMDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDetails {
    /// Unique name.
    pub name: String,
    /// Lifecycle state, as in [`Vm::state`].
    pub state: String,
    /// Unix user ID of the owner.
    pub owner_uid: u32,
    /// The owner's user name (the uid in decimal when it has none).
    #[serde(default)]
    pub owner: String,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Size of the root disk in bytes.
    pub disk_bytes: u64,
    /// The image the root disk was made from.
    pub image: String,
    /// `auto`, `cloud-hypervisor` or `qemu`.
    pub vmm: String,
    /// 128-bit ID as 32 lowercase hex digits.
    pub id: String,
    /// The guest's vsock context ID.
    pub cid: u32,
    /// The unit running the VM, `vm@NAME.service`.
    pub unit: String,
    /// IPv4 address on the host bridge, if allocated.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// IPv6 address on the host bridge, if allocated.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// MAC address of the VM's NIC, if it has one.
    #[serde(default)]
    pub mac: Option<String>,
    /// The guest account the SSH keys open.
    #[serde(default)]
    pub ssh_user: Option<String>,
    /// The OpenSSH public keys allowed to log in.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// The users the VM's site on the HTTPS proxy is shared with
    /// (`vmctl share`), by name.
    #[serde(default)]
    pub shared_with: Vec<String>,
}

/// The parameters of `Create`; omitted values get the daemon's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateParams {
    /// The new VM's name.
    pub name: String,
    /// Image name (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Guest memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Root disk size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// `auto`, `cloud-hypervisor` or `qemu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<crate::spec::VmmChoice>,
    /// `none` for a VM without NIC; `default` (or absent) for one on the
    /// host bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// OpenSSH public keys for the guest account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// Size in bytes of a new persistent data volume (named after the VM,
    /// mounted in the guest at `/var/lib/vmctl-data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    /// A kept data volume to attach instead of a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<String>,
    /// Discard the root disk at every stop (a fresh clone of the image at
    /// each start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
}

/// The reply parameters of `Create` and `Describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsReply {
    /// The VM.
    pub vm: VmDetails,
}

/// The parameters of the methods that take only a VM name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameParams {
    /// The VM's name.
    pub name: String,
}

/// The reply parameters of `GetVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetVersionReply {
    /// The version of vmctld, e.g. `0.1.0`.
    pub version: String,
    /// The version of the interface, see [`crate::idl::INTERFACE_VERSION`].
    pub interface_version: i64,
}

/// The parameters of `List`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListParams {
    /// Every user's VMs (needs manage-any), not only the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// The reply parameters of `List`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReply {
    /// The VMs the caller may see, sorted by name.
    pub vms: Vec<Vm>,
}

/// A reply of `List` with `more` after the first: one change of one VM the
/// caller may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListChange {
    /// Empty: the change is in `vm`.
    #[serde(default)]
    pub vms: Vec<Vm>,
    /// `added`, `changed` (its state) or `removed`.
    pub event: String,
    /// The VM now (for `removed`: as it was last).
    pub vm: Vm,
}

/// A user's quota and usage (`GetQuota`, `SetQuota`); an absent limit is
/// unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// The user.
    pub uid: u32,
    /// Whether an override (`SetQuota`) sets the limits, rather than the
    /// configured defaults.
    pub overridden: bool,
    /// Most VMs.
    #[serde(default)]
    pub max_vms: Option<u64>,
    /// Most vCPUs over all VMs.
    #[serde(default)]
    pub max_vcpus: Option<u64>,
    /// Most memory over all VMs, bytes.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Most disk over all VMs, bytes.
    #[serde(default)]
    pub max_disk_bytes: Option<u64>,
    /// VMs held now.
    pub vms: u64,
    /// vCPUs held now.
    pub vcpus: u64,
    /// Memory held now, bytes.
    pub memory_bytes: u64,
    /// Disk held now, bytes.
    pub disk_bytes: u64,
}

/// The parameters of `GetQuota`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetQuotaParams {
    /// The user (default: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// The parameters of `SetQuota`: the limits of the override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetQuotaParams {
    /// The user.
    pub uid: u32,
    /// Most VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u64>,
    /// Most vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u64>,
    /// Most memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// Most disk, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

/// The reply parameters of `GetQuota` and `SetQuota`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaReply {
    /// The quota.
    pub quota: Quota,
}

/// One finding of `Doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind of disagreement, e.g. `orphan-disk`.
    pub kind: String,
    /// The VM concerned.
    #[serde(default)]
    pub vm: Option<String>,
    /// The file, directory or interface concerned.
    #[serde(default)]
    pub path: Option<String>,
    /// What is wrong and what repairing does.
    pub message: String,
    /// Whether it was repaired.
    pub repaired: bool,
}

/// The parameters of `Doctor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorParams {
    /// Repair what can be repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<bool>,
}

/// The reply parameters of `Doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReply {
    /// What disagrees, in the order found.
    pub findings: Vec<Finding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_round_trips_with_idl_field_names() {
        let vm = Vm {
            name: "blog".into(),
            state: "running".into(),
            owner_uid: 1000,
            owner: "alice".into(),
            vcpus: 2,
            memory_bytes: 2 << 30,
            ipv4: None,
            ipv6: None,
            mac: None,
        };
        let json = serde_json::to_value(&vm).unwrap();
        for field in [
            "name",
            "state",
            "owner_uid",
            "owner",
            "vcpus",
            "memory_bytes",
            "ipv4",
            "ipv6",
            "mac",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(serde_json::from_value::<Vm>(json).unwrap(), vm);
    }
}

// Storage (issue 12): volumes.

/// The parameters of `Remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RemoveParams {
    /// The VM's name.
    pub name: String,
    /// Delete the VM's data volume too (it is kept otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_data: Option<bool>,
}

/// One volume of the storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// The VM name (a root volume) or the data volume's name.
    pub name: String,
    /// `root` or `data`.
    pub kind: String,
    /// Size as the guest sees it, in bytes.
    pub size_bytes: u64,
    /// Bytes it occupies in the pool (extents shared with an image or
    /// other clones counted in full).
    pub allocated_bytes: u64,
    /// The VM using it; absent for a kept data volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Its owner's uid (a root volume's: its VM's owner); absent for a
    /// volume file the store has no record of yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    /// The owner's user name (the uid in decimal when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The reply of `PoolStatus`: the storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatusReply {
    /// `directory` or `lvm-thin`.
    pub backend: String,
    /// A directory, or `VG/thinpool`.
    pub location: String,
    /// Its size in bytes.
    pub total_bytes: u64,
    /// Bytes still free.
    pub free_bytes: u64,
    /// Whether root disks are copy-on-write clones of their image.
    pub reflink: bool,
}

/// The reply of `ListVolumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesReply {
    /// The volumes the caller may see, sorted by kind and name.
    pub volumes: Vec<VolumeEntry>,
}

/// The parameters of `ResizeDisk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeDiskParams {
    /// The VM's name.
    pub name: String,
    /// `root` or `data`.
    pub disk: String,
    /// The new size in bytes (at least the current one).
    pub size_bytes: u64,
}

/// One image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// The image's name.
    pub name: String,
    /// Size of its root disk in bytes.
    pub size_bytes: u64,
    /// Bytes its files occupy.
    pub allocated_bytes: u64,
    /// When its root disk was written, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The VMs made from it.
    pub vms: Vec<String>,
}

/// The reply of `ListImages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesReply {
    /// The images, sorted by name.
    pub images: Vec<ImageEntry>,
}
