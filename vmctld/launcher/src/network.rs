//! The VM's network: its TAP on the bridge `vmbr0` (which systemd-networkd
//! makes from vmctl's shipped `.netdev`/`.network` files), and the
//! credential that gives the guest its addresses without DHCP.

use std::io;
use std::time::Duration;

use vmctl_api::spec::{VmNetwork, VmSpec};
use vmctl_vmm::{Credential, Driver, Net, VmConfig};

use crate::tap::{self, Tap};

/// The bridge every VM's TAP joins.
pub const BRIDGE: &str = "vmbr0";

/// The credential the guest's systemd-network-generator turns into
/// `/run/systemd/network/50-vmctl.network` (before the image's DHCP
/// fallback, `80-vmctl-guest.network`).
pub const CREDENTIAL: &str = "network.network.50-vmctl";

/// The TAP of the VM with vsock CID `cid`: CIDs are unique on the host and
/// `vmt-` + 10 digits fits IFNAMSIZ.
pub fn tap_name(cid: u32) -> String {
    format!("vmt-{cid}")
}

/// The TAP's device group: one per owner, never the default group 0, so a
/// bridge filter can tell owners apart (`meta iifgroup . meta oifgroup`).
pub fn device_group(owner_uid: u32) -> u32 {
    owner_uid.wrapping_add(1).max(1)
}

/// The `.network` file for the guest: its static addresses and gateways on
/// the NIC with its MAC.
pub fn network_file(net: &VmNetwork) -> String {
    format!(
        "[Match]\n\
         MACAddress={mac}\n\
         \n\
         [Link]\n\
         RequiredForOnline=yes\n\
         \n\
         [Network]\n\
         Address={ipv4}/{p4}\n\
         Address={ipv6}/{p6}\n\
         Gateway={gw4}\n\
         Gateway={gw6}\n\
         IPv6AcceptRA=no\n\
         LinkLocalAddressing=ipv6\n",
        mac = net.mac,
        ipv4 = net.ipv4,
        p4 = net.ipv4_prefix,
        ipv6 = net.ipv6,
        p6 = net.ipv6_prefix,
        gw4 = net.gateway4,
        gw6 = net.gateway6,
    )
}

/// The VM's TAP while the launcher runs; a persistent one (for
/// cloud-hypervisor) is deleted when this is dropped.
#[derive(Debug)]
pub struct Attached {
    tap: Tap,
    persistent: bool,
}

impl Attached {
    /// The TAP's interface index (for machined).
    pub fn ifindex(&self) -> u32 {
        self.tap.ifindex()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.persistent {
            if let Err(e) = tap::delete_link(self.tap.ifindex()) {
                tracing::warn!("cannot delete TAP {}: {e}", self.tap.name());
            }
        }
    }
}

/// Gives VM `spec` its NIC: creates its TAP on [`BRIDGE`] in the owner's
/// device group, adds it to `config` and adds the address credential.
/// A spec without a network gets nothing (no NIC).
///
/// QEMU inherits the TAP's descriptor, so the TAP dies with it; for
/// cloud-hypervisor, which opens the TAP by name, it is persistent and
/// deleted when the returned value is dropped (a `kill -9` of the launcher
/// leaves it behind until the next start of the VM replaces it).
pub async fn setup(
    spec: &VmSpec,
    driver: Driver,
    config: &mut VmConfig,
) -> Result<Option<Attached>, String> {
    let Some(net) = &spec.network else {
        return Ok(None);
    };
    let bridge = bridge_index().await.map_err(|_| {
        format!(
            "the VM bridge {BRIDGE} does not exist: systemd-networkd makes it from \
             /usr/lib/systemd/network/vmctl-vmbr0.netdev; is systemd-networkd running? \
             (systemctl enable --now systemd-networkd)"
        )
    })?;
    let name = tap_name(spec.cid);
    let persistent = driver == Driver::CloudHypervisor;
    let tap = create_replacing_stale(&name, persistent)
        .map_err(|e| format!("cannot create the VM's TAP {name}: {e}"))?;
    let attached = Attached { tap, persistent };
    tap::attach(attached.ifindex(), bridge, device_group(spec.owner_uid))
        .map_err(|e| format!("cannot attach TAP {name} to {BRIDGE}: {e}"))?;
    config.net.push(Net {
        tap: name,
        mac: net.mac.clone(),
        fd: (!persistent).then(|| attached.tap.fd()),
    });
    config
        .credentials
        .push(Credential::binary(CREDENTIAL, network_file(net).as_bytes()));
    Ok(Some(attached))
}

/// How long a start waits for networkd to make the bridge (at boot, VMs
/// may start while networkd is still creating it).
const BRIDGE_WAIT: Duration = Duration::from_secs(3);

/// The bridge's interface index, waiting up to [`BRIDGE_WAIT`] for it.
async fn bridge_index() -> io::Result<u32> {
    let deadline = tokio::time::Instant::now() + BRIDGE_WAIT;
    loop {
        match tap::ifindex(BRIDGE) {
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
}

/// Creates TAP `name`; a persistent one left by an earlier launcher that
/// was killed (cloud-hypervisor only) is deleted first.
fn create_replacing_stale(name: &str, persistent: bool) -> io::Result<Tap> {
    match Tap::create(name, persistent) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            tap::delete_link(tap::ifindex(name)?)?;
            Tap::create(name, persistent)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> VmNetwork {
        VmNetwork {
            ipv4: "10.77.0.2".parse().unwrap(),
            ipv4_prefix: 16,
            ipv6: "fd77:766d:6374::2".parse().unwrap(),
            ipv6_prefix: 64,
            mac: "02:76:6d:00:00:03".into(),
            gateway4: "10.77.0.1".parse().unwrap(),
            gateway6: "fd77:766d:6374::1".parse().unwrap(),
        }
    }

    #[test]
    fn guest_network_file() {
        assert_eq!(
            network_file(&net()),
            "[Match]\nMACAddress=02:76:6d:00:00:03\n\n[Link]\nRequiredForOnline=yes\n\n\
             [Network]\nAddress=10.77.0.2/16\nAddress=fd77:766d:6374::2/64\n\
             Gateway=10.77.0.1\nGateway=fd77:766d:6374::1\nIPv6AcceptRA=no\n\
             LinkLocalAddressing=ipv6\n"
        );
    }

    #[test]
    fn names_and_groups() {
        assert_eq!(tap_name(3), "vmt-3");
        assert!(tap_name(u32::MAX).len() < libc::IFNAMSIZ);
        assert_eq!(device_group(0), 1);
        assert_eq!(device_group(1000), 1001);
        assert_ne!(device_group(u32::MAX), 0);
    }

    #[tokio::test]
    async fn no_network_no_nic() {
        let mut spec: VmSpec = serde_json::from_str(
            r#"{"name":"a","id":"0123456789abcdef0123456789abcdef","owner_uid":0,
            "vcpus":1,"memory_bytes":134217728,"disk_bytes":1,"image":"default","cid":3}"#,
        )
        .unwrap();
        spec.network = None;
        let mut config: VmConfig = serde_json::from_str(
            r#"{"name":"a","vcpus":1,"memory_bytes":134217728,"kernel":"/k","runtime_dir":"/r"}"#,
        )
        .unwrap();
        let attached = setup(&spec, Driver::Qemu, &mut config).await.unwrap();
        assert!(attached.is_none());
        assert!(config.net.is_empty() && config.credentials.is_empty());
    }
}
