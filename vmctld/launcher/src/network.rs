//! The VM's network: its TAP on the bridge `vmbr0` (which systemd-networkd
//! makes from vmctl's shipped `.netdev`/`.network` files), and the
//! credential that gives the guest its addresses without DHCP.

use std::io;
use std::time::Duration;

use vmctl_api::spec::{VmNetwork, VmSpec};
use vmctl_vmm::{Credential, Driver, Net, VmConfig};

use crate::isolation::{self, Admitted};
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
/// bridge filter can tell owners apart (`isolation.rs`).
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
    /// Held for QEMU's TAP (which then lives as long as the launcher or
    /// QEMU holds it); `None` for a persistent one, which
    /// cloud-hypervisor must be able to open itself (a single-queue TAP
    /// takes one holder).
    tap: Option<Tap>,
    name: String,
    ifindex: u32,
    /// Its element in the isolation rules, removed after the TAP.
    _admitted: Option<Admitted>,
}

impl Attached {
    /// The TAP's interface index (for machined).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.tap.is_none() {
            if let Err(e) = tap::delete_link(self.ifindex) {
                tracing::warn!("cannot delete TAP {}: {e}", self.name);
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
    if let (true, Some(id)) = (persistent, config.identity) {
        tap.set_owner(id.uid)
            .map_err(|e| format!("cannot give TAP {name} to the VMM's uid {}: {e}", id.uid))?;
    }
    let mut attached = Attached {
        name: tap.name().to_owned(),
        ifindex: tap.ifindex(),
        tap: Some(tap),
        _admitted: None,
    };
    let group = device_group(spec.owner_uid);
    // The rules first: the TAP joins the bridge already filtered.
    let bridge_mac = tap::hardware_address(BRIDGE)
        .map_err(|e| format!("cannot read the MAC address of {BRIDGE}: {e}"))?;
    attached._admitted = Some(
        isolation::admit(attached.ifindex(), group, &bridge_mac).map_err(|e| {
            format!("cannot install the isolation between owners (nftables table vmctl): {e}")
        })?,
    );
    tap::attach(attached.ifindex(), bridge, group)
        .map_err(|e| format!("cannot attach TAP {name} to {BRIDGE}: {e}"))?;
    let fd = match &attached.tap {
        Some(tap) if !persistent => Some(tap.fd()),
        _ => None,
    };
    config.net.push(Net {
        tap: name,
        mac: net.mac.clone(),
        fd,
    });
    if persistent {
        attached.tap = None;
    }
    config
        .credentials
        .push(Credential::binary(CREDENTIAL, network_file(net).as_bytes()));
    Ok(Some(attached))
}

/// After the VM's unit stopped (`--release-network`): deletes a TAP a
/// killed launcher left (cloud-hypervisor's persistent one; QEMU's died
/// with QEMU) and the isolation elements of every TAP that is gone.
/// `spec` is `None` when the VM's spec is gone or unreadable.
pub fn release(spec: Option<&VmSpec>) -> Result<(), String> {
    if let Some(spec) = spec.filter(|s| s.network.is_some()) {
        let name = tap_name(spec.cid);
        if let Ok(index) = tap::ifindex(&name) {
            tap::delete_link(index).map_err(|e| format!("cannot delete TAP {name}: {e}"))?;
            tracing::info!("deleted TAP {name}, left by a launcher that did not end cleanly");
        }
    }
    match isolation::prune() {
        Ok(0) => Ok(()),
        Ok(n) => {
            tracing::info!("removed {n} isolation element(s) of TAPs that are gone");
            Ok(())
        }
        Err(e) => Err(format!("cannot prune the isolation elements: {e}")),
    }
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

    /// Writes one broadcast frame into `from` (as its VM would send it) and
    /// says whether each of `to` delivers it to its VM within 1 s.
    fn broadcast_reaches(from: &Tap, to: &[&Tap], marker: u8) -> Vec<bool> {
        // virtio_net_hdr (10 bytes, IFF_VNET_HDR) then the Ethernet frame:
        // broadcast, a made-up source, EtherType 0x88b5 (local experimental).
        let mut frame = vec![0u8; 10];
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&[0x02, 0x76, 0x6d, 0, 0, marker]);
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(&[marker; 46]);
        frame_reaches(from, to, &frame, marker)
    }

    /// Like [`broadcast_reaches`] with an IPv4/UDP packet to an unknown
    /// unicast MAC (flooded): bridged IP, which br_netfilter (where the
    /// kernel has it) also passes through the `inet` forward hook.
    fn ipv4_reaches(from: &Tap, to: &[&Tap], marker: u8) -> Vec<bool> {
        let mut frame = vec![0u8; 10];
        frame.extend_from_slice(&[0x02, 0x76, 0x6d, 0xff, 0xff, marker]);
        frame.extend_from_slice(&[0x02, 0x76, 0x6d, 0, 0, marker]);
        frame.extend_from_slice(&[0x08, 0x00]);
        let payload = [marker; 18];
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[10, 77, 0, 10, 10, 77, 0, 11]);
        let mut sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        frame.extend_from_slice(&ip);
        let udp_len = (8 + payload.len()) as u16;
        frame.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&payload);
        frame_reaches(from, to, &frame, marker)
    }

    /// Writes `frame` (virtio_net_hdr + Ethernet) into `from` and says
    /// whether each of `to` delivers a frame of the same EtherType ending
    /// in `marker` within 1 s.
    fn frame_reaches(from: &Tap, to: &[&Tap], frame: &[u8], marker: u8) -> Vec<bool> {
        let ethertype = [frame[22], frame[23]];
        // SAFETY: `frame` is valid for its length; `from.fd()` is open.
        let n = unsafe { libc::write(from.fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
        to.iter()
            .map(|tap| {
                let deadline = std::time::Instant::now() + Duration::from_secs(1);
                let mut buf = [0u8; 2048];
                while std::time::Instant::now() < deadline {
                    // SAFETY: `buf` is writable for its length (the fd is
                    // non-blocking).
                    let n = unsafe { libc::read(tap.fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    let got = &buf[10..n as usize];
                    if got.len() >= 15 && got[12..14] == ethertype && got.last() == Some(&marker) {
                        return true;
                    }
                }
                false
            })
            .collect()
    }

    /// Real TAPs on a real bridge in a private network namespace, with the
    /// rules applied by `nft`: frames pass between TAPs of one owner and
    /// never to another owner's; each TAP's element lives as long as it
    /// (removed at stop, pruned after a killed launcher), and a new TAP of
    /// another owner with a dead TAP's name is not admitted by its element.
    #[test]
    fn owners_are_isolated_on_the_bridge() {
        std::thread::spawn(|| {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's
            // network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("SKIPPED: cannot make a network namespace; run as root");
                return;
            }
            if std::process::Command::new("nft")
                .arg("--version")
                .output()
                .is_err()
            {
                eprintln!("SKIPPED: nft (nftables) is not installed");
                return;
            }
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap();
                assert!(ok.success(), "ip {args:?}");
            };
            ip(&["link", "add", BRIDGE, "type", "bridge"]);
            ip(&["link", "set", BRIDGE, "up"]);
            let bridge = tap::ifindex(BRIDGE).unwrap();
            let mac = tap::hardware_address(BRIDGE).unwrap();
            let alice = device_group(1000);
            let bob = device_group(1001);
            let mut taps = Vec::new();
            let mut admitted = Vec::new();
            for (i, group) in [alice, alice, bob].into_iter().enumerate() {
                let tap = Tap::create(&tap_name(10 + i as u32), false).unwrap();
                admitted.push(isolation::admit(tap.ifindex(), group, &mac).unwrap());
                tap::attach(tap.ifindex(), bridge, group).unwrap();
                taps.push(tap);
            }
            // Ports forward at once (no STP), but let the links settle.
            std::thread::sleep(Duration::from_millis(200));
            let [a1, a2, b1] = [&taps[0], &taps[1], &taps[2]];
            let mut elements = isolation::current().unwrap();
            elements.sort();
            assert_eq!(
                elements,
                [
                    (a1.ifindex(), alice),
                    (a2.ifindex(), alice),
                    (b1.ifindex(), bob)
                ]
            );
            assert_eq!(broadcast_reaches(a1, &[a2, b1], 1), [true, false]);
            assert_eq!(broadcast_reaches(b1, &[a1, a2], 2), [false, false]);
            assert_eq!(broadcast_reaches(a2, &[a1, b1], 3), [true, false]);
            // Bridged IP between one owner's VMs passes the routed-hairpin
            // rule too; not to the other owner.
            assert_eq!(ipv4_reaches(a1, &[a2, b1], 6), [true, false]);
            assert_eq!(ipv4_reaches(b1, &[a1, a2], 7), [false, false]);

            // Bob's VM stops: its element goes with its TAP.
            let (b1, b1_admitted) = (taps.pop().unwrap(), admitted.pop().unwrap());
            let b1_index = b1.ifindex();
            drop(b1);
            drop(b1_admitted);
            assert!(!isolation::current()
                .unwrap()
                .iter()
                .any(|e| e.0 == b1_index));
            // Alice's second launcher is killed: the TAP dies with its
            // holder, the element stays until the next prune (the unit's
            // ExecStopPost=, or any start).
            let (a2, a2_admitted) = (taps.pop().unwrap(), admitted.pop().unwrap());
            let a2_index = a2.ifindex();
            std::mem::forget(a2_admitted);
            drop(a2);
            assert!(isolation::current().unwrap().contains(&(a2_index, alice)));
            // Bob's next VM gets the very TAP name alice's had: it is not
            // admitted to alice's VMs, and the stale element is gone.
            let b2 = Tap::create(&tap_name(11), false).unwrap();
            admitted.push(isolation::admit(b2.ifindex(), bob, &mac).unwrap());
            tap::attach(b2.ifindex(), bridge, bob).unwrap();
            taps.push(b2);
            let [a1, b2] = [&taps[0], &taps[1]];
            let mut elements = isolation::current().unwrap();
            elements.sort();
            assert_eq!(elements, [(a1.ifindex(), alice), (b2.ifindex(), bob)]);
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(broadcast_reaches(a1, &[b2], 4), [false]);
            assert_eq!(broadcast_reaches(b2, &[a1], 8), [false]);
            assert_eq!(isolation::prune().unwrap(), 0);
            // Without the rules the same frame does reach bob: the test
            // can tell.
            let ok = std::process::Command::new("nft")
                .args(["delete", "table", "bridge", "vmctl"])
                .status()
                .unwrap();
            assert!(ok.success());
            assert_eq!(broadcast_reaches(a1, &[b2], 5), [true]);
        })
        .join()
        .unwrap();
    }

    /// `setup` for real in a private network namespace: QEMU gets the TAP's
    /// descriptor and the TAP dies with it; cloud-hypervisor gets a
    /// persistent TAP it can open itself, deleted when the launcher is done;
    /// without the bridge the error names systemd-networkd.
    #[test]
    fn setup_per_driver() {
        std::thread::spawn(|| {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's
            // network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("SKIPPED: cannot make a network namespace; run as root");
                return;
            }
            if std::process::Command::new("nft").arg("--version").output().is_err() {
                eprintln!("SKIPPED: nft (nftables) is not installed");
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut spec: VmSpec = serde_json::from_str(
                r#"{"name":"a","id":"0123456789abcdef0123456789abcdef","owner_uid":1000,
                "vcpus":1,"memory_bytes":134217728,"disk_bytes":1,"image":"default","cid":42}"#,
            )
            .unwrap();
            spec.network = Some(net());
            let config: VmConfig = serde_json::from_str(
                r#"{"name":"a","vcpus":1,"memory_bytes":134217728,"kernel":"/k","runtime_dir":"/r"}"#,
            )
            .unwrap();

            let mut c = config.clone();
            let err = rt
                .block_on(setup(&spec, Driver::Qemu, &mut c))
                .unwrap_err();
            assert!(err.contains("systemd-networkd"), "{err}");
            assert!(c.net.is_empty());

            let ok = std::process::Command::new("ip")
                .args(["link", "add", BRIDGE, "type", "bridge"])
                .status()
                .unwrap();
            assert!(ok.success());
            let mut c = config.clone();
            let attached = rt
                .block_on(setup(&spec, Driver::Qemu, &mut c))
                .unwrap()
                .unwrap();
            assert_eq!(c.net.len(), 1);
            assert_eq!(c.net[0].tap, "vmt-42");
            assert_eq!(c.net[0].mac, "02:76:6d:00:00:03");
            assert!(c.net[0].fd.is_some());
            assert_eq!(attached.ifindex(), tap::ifindex("vmt-42").unwrap());
            let qemu_tap = (attached.ifindex(), device_group(1000));
            assert_eq!(isolation::current().unwrap(), [qemu_tap]);
            assert_eq!(
                c.oem_strings(),
                [format!(
                    "io.systemd.credential.binary:{CREDENTIAL}={}",
                    vmctl_api::guest_credentials::base64(network_file(&net()).as_bytes())
                )]
            );
            drop(attached);
            assert!(tap::ifindex("vmt-42").is_err(), "QEMU's TAP outlived its holders");
            assert_eq!(isolation::current().unwrap(), [], "the TAP's element outlived it");

            let mut c = config.clone();
            let attached = rt
                .block_on(setup(&spec, Driver::CloudHypervisor, &mut c))
                .unwrap()
                .unwrap();
            assert_eq!(c.net[0].fd, None);
            // What cloud-hypervisor does with `tap=vmt-42`.
            let ch = Tap::create("vmt-42", true).expect("cloud-hypervisor can open its TAP");
            drop(ch);
            assert!(tap::ifindex("vmt-42").is_ok());
            drop(attached);
            assert!(tap::ifindex("vmt-42").is_err(), "the persistent TAP was left");
            assert_eq!(isolation::current().unwrap(), []);
        })
        .join()
        .unwrap();
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
