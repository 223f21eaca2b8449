//! VM networking end to end in the dev host (issue 9, host side):
//!
//! - systemd-networkd runs and brings up `vmbr0` with both gateway
//!   addresses from the files the packages ship;
//! - a VM gets its static addresses from the `network.network.50-vmctl`
//!   credential (the guest's systemd-network-generator writes the file,
//!   networkd applies it: `networkctl status en*` names it as the NIC's
//!   network file, `ip -j addr` shows both addresses); the host pings both;
//! - its TAP `vmt-<CID>` is on `vmbr0`, in the owner's device group, and
//!   machined knows it (`machinectl status` shows the interface);
//! - "the outside" is a network namespace inside the dev host behind a veth
//!   uplink with a small HTTP server (`http-peer`, which answers with the
//!   source address it saw): the VM reaches it through NAT and the server
//!   sees the host's uplink address;
//! - two VMs of one owner (user alice, in group vmctl: `vmctl create` and
//!   `systemctl start` as herself, through polkit and vmctld's store) reach
//!   each other (the second VM's sshd, over IPv4 and IPv6);
//! - a VM of another owner (user bob, likewise) works and reaches the
//!   outside but neither reaches nor is reached by alice's VMs;
//! - the isolation set holds exactly one element per running VM (its TAP's
//!   index and its owner's device group);
//! - after `systemctl stop` the TAP and its element are gone; after
//!   `kill -9` of QEMU too; after `kill -9` of the launcher too (the unit's
//!   `ExecStopPost=` removes what the launcher could not), and the other
//!   VMs' isolation still holds.
//!
//! All traffic stays inside the dev host's own network namespace and the
//! namespace this test makes in it.

use std::path::Path;
use std::time::{Duration, Instant};
use vmctl_e2e::{ensure_test_users, host, host_as, host_uid, vm_exec, vm_spec_field, Run};
use xtask::host::DevHost;

/// VM1 and VM2 are alice's.
const VM1: &str = "net1";
const VM2: &str = "net2";
const OWNER: &str = "alice";
/// Owned by another user, bob.
const VM3: &str = "net3";
/// alice's, made after VM1 is removed: it gets VM1's addresses.
const VM4: &str = "net4";
const OTHER_OWNER: &str = "bob";
/// The "outside" namespace and its addresses (TEST-NET-1, inside the dev host).
const OUTSIDE: &str = "vmctl-outside";
const UPLINK_HOST: &str = "192.0.2.1";
const UPLINK_OUTSIDE: &str = "192.0.2.2";

/// Runs `argv` in VM `vm` as root, through the host's `vmctl exec`.
fn guest(vm: &str, argv: &[&str]) -> Run {
    vm_exec(vm, argv)
}

fn tap_of(vm: &str) -> String {
    format!("vmt-{}", vm_spec_field(vm, "cid"))
}

fn link_exists(name: &str) -> bool {
    host(&["ip", "link", "show", "dev", name]).code == Some(0)
}

/// Polls `f` every 500 ms for at most `within`; returns its last answer.
fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `user` creates VM `vm` with vmctl and starts it with systemctl, as a
/// user would (polkit decides; vmctld's store records the owner).
fn create_and_start(user: &str, vm: &str) {
    host(&[
        "sh",
        "-c",
        &format!("systemctl stop vm@{vm}; vmctl rm {vm}; true"),
    ]);
    host_as(
        Some(user),
        &["vmctl", "create", vm, "--memory", "1G", "--disk", "4G"],
    )
    .ok();
    host_as(Some(user), &["systemctl", "start", &format!("vm@{vm}")]).ok();
    assert_eq!(vm_spec_field(vm, "owner_uid"), host_uid(user).to_string());
}

/// The device group of `user`'s TAPs (uid + 1).
fn group_of(user: &str) -> u32 {
    host_uid(user) + 1
}

/// The isolation set's elements: (TAP name, or its index once the TAP is
/// gone, as nft prints it; device group).
fn port_owner_elements() -> Vec<(String, u32)> {
    let out = host(&["nft", "-j", "list", "set", "bridge", "vmctl", "port_owner"]).ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let set = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("set"))
        .unwrap_or_else(|| panic!("no set in {}", out.stdout));
    let mut elements: Vec<(String, u32)> = set
        .get("elem")
        .and_then(|e| e.as_array())
        .map(|elems| {
            elems
                .iter()
                .map(|e| {
                    let pair = e["concat"].as_array().unwrap();
                    let port = match &pair[0] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (port, pair[1].as_u64().unwrap() as u32)
                })
                .collect()
        })
        .unwrap_or_default();
    elements.sort();
    elements
}

/// The interface index of TAP `tap` in the host.
fn ifindex_of(tap: &str) -> String {
    host(&["cat", &format!("/sys/class/net/{tap}/ifindex")])
        .ok()
        .stdout
        .trim()
        .to_owned()
}

/// Whether the isolation set still has an element for `tap` (by name, or
/// by its former `index`).
fn has_element(tap: &str, index: &str) -> bool {
    port_owner_elements()
        .iter()
        .any(|(port, _)| port == tap || port == index)
}

fn make_outside() {
    host(&[
        "sh",
        "-c",
        &format!("ip netns del {OUTSIDE} 2>/dev/null; ip link del vmctl-up 2>/dev/null; true"),
    ]);
    for cmd in [
        format!("ip netns add {OUTSIDE}"),
        format!("ip link add vmctl-up type veth peer name eth0 netns {OUTSIDE}"),
        format!("ip addr add {UPLINK_HOST}/24 dev vmctl-up"),
        "ip link set vmctl-up up".to_string(),
        format!("ip -n {OUTSIDE} addr add {UPLINK_OUTSIDE}/24 dev eth0"),
        format!("ip -n {OUTSIDE} link set eth0 up"),
        format!("ip -n {OUTSIDE} link set lo up"),
    ] {
        let argv: Vec<&str> = cmd.split(' ').collect();
        host(&argv).ok();
    }
    DevHost::current()
        .unwrap()
        .copy_in(
            Path::new(env!("CARGO_BIN_EXE_http-peer")),
            "/usr/local/bin/http-peer",
        )
        .unwrap();
    host(&[
        "systemd-run",
        "--unit",
        "vmctl-e2e-outside",
        "--collect",
        "ip",
        "netns",
        "exec",
        OUTSIDE,
        "/usr/local/bin/http-peer",
        &format!("{UPLINK_OUTSIDE}:8080"),
    ])
    .ok();
    assert!(
        wait_for(Duration::from_secs(10), || {
            host(&["ip", "netns", "exec", OUTSIDE, "ss", "-ltn"])
                .stdout
                .contains(&format!("{UPLINK_OUTSIDE}:8080"))
        }),
        "the outside HTTP server did not start: {:?}",
        host(&["journalctl", "-u", "vmctl-e2e-outside", "--no-pager"])
    );
}

fn remove_outside() {
    host(&["systemctl", "stop", "vmctl-e2e-outside"]);
    host(&["ip", "netns", "del", OUTSIDE]);
    host(&["ip", "link", "del", "vmctl-up"]);
}

/// An HTTP GET from inside `vm` with bash's /dev/tcp (the image has no curl).
fn http_get_from(vm: &str, ip: &str, port: u16) -> Run {
    guest(
        vm,
        &[
            "timeout",
            "20",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{ip}/{port} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
            ),
        ],
    )
}

/// The first bytes a TCP server at `ip`:22 sends, read from inside `vm`.
fn ssh_banner_from(vm: &str, ip: &str) -> Run {
    guest(
        vm,
        &[
            "timeout",
            "20",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{ip}/22 && head -c 8 <&3"),
        ],
    )
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn vms_get_addresses_nat_and_each_other_and_taps_die_with_the_vmm() {
    // networkd and the bridge from the shipped files.
    host(&["test", "-f", "/usr/lib/systemd/network/vmctl-vmbr0.netdev"]).ok();
    let active = host(&["systemctl", "is-active", "systemd-networkd"]);
    assert_eq!(active.stdout.trim(), "active", "{active:?}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let a = host(&["ip", "-j", "addr", "show", "dev", "vmbr0"]).stdout;
            a.contains("\"10.77.0.1\"") && a.contains("\"fd77:766d:6374::1\"")
        }),
        "vmbr0 without its addresses: {:?}",
        host(&["networkctl", "status", "vmbr0", "--no-pager"])
    );
    eprintln!(
        "{}",
        host(&["ip", "-br", "addr", "show", "dev", "vmbr0"]).stdout
    );

    ensure_test_users();
    make_outside();
    let result = std::panic::catch_unwind(|| {
        create_and_start(OWNER, VM1);
        create_and_start(OWNER, VM2);
        addresses_and_tap(VM1);
        addresses_and_tap(VM2);
        nat_to_the_outside(VM1);
        vms_reach_each_other();
        other_owner_is_isolated();
        taps_die_with_the_vmm();
        addresses_are_reused_after_rm();
    });
    for vm in [VM1, VM2, VM3, VM4] {
        let _ = host(&["systemctl", "stop", &format!("vm@{vm}")]);
        let _ = host(&["vmctl", "rm", vm]);
    }
    remove_outside();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn addresses_and_tap(vm: &str) {
    addresses_and_tap_of_owner(vm, &group_of(OWNER).to_string());
}

/// `vm` has its addresses (from the credential), answers ping, and its TAP
/// is on vmbr0 in device group `group` (the owner's uid + 1) and known to
/// machined.
fn addresses_and_tap_of_owner(vm: &str, group: &str) {
    let ipv4 = vm_spec_field(vm, "ipv4");
    let ipv6 = vm_spec_field(vm, "ipv6");
    let mac = vm_spec_field(vm, "mac");
    eprintln!("{vm}: {ipv4} {ipv6} {mac}");

    // The agent says hello before guest networkd is up; static addresses
    // apply as soon as it is, IPv6 after DAD: allow some seconds.
    let mut addr = Run {
        code: None,
        stdout: String::new(),
        stderr: String::new(),
    };
    let has_both = wait_for(Duration::from_secs(60), || {
        addr = guest(vm, &["ip", "-j", "addr"]);
        addr.stdout
            .contains(&format!("\"local\":\"{ipv4}\",\"prefixlen\":16"))
            && addr
                .stdout
                .contains(&format!("\"local\":\"{ipv6}\",\"prefixlen\":64"))
            && addr.stdout.contains(&format!("\"address\":\"{mac}\""))
    });
    assert!(has_both, "{vm} lacks its addresses or MAC: {addr:?}");
    // They come from the credential's .network file, applied by networkd.
    let files = guest(vm, &["ls", "/run/systemd/network/"]).ok();
    assert!(
        files.stdout.contains("50-vmctl.network"),
        "systemd-network-generator did not write the credential's file: {files:?}"
    );
    let status = guest(vm, &["networkctl", "status", "--no-pager", "-n0"]).ok();
    eprintln!("{vm} networkctl status:\n{}", status.stdout);
    let link = guest(vm, &["networkctl", "status", "--no-pager", "-n0", "en*"]).ok();
    eprintln!("{vm}: {}", link.stdout);
    assert!(
        link.stdout
            .contains("/run/systemd/network/50-vmctl.network"),
        "the NIC is not configured by the credential's file: {link:?}"
    );

    // The host reaches it (an IPv6 address is usable only after the
    // guest's duplicate address detection, a second or two after it shows).
    for ip in [&ipv4, &ipv6] {
        let mut ping = host(&["ping", "-c1", "-W2", ip]);
        let reached = wait_for(Duration::from_secs(20), || {
            ping = host(&["ping", "-c1", "-W2", ip]);
            ping.code == Some(0)
        });
        eprintln!("{}", ping.stdout);
        assert!(reached, "ping {ip}: {ping:?}");
    }

    // Its TAP: on vmbr0, up, in the owner's device group.
    let tap = tap_of(vm);
    let link = host(&["ip", "-d", "-j", "link", "show", "dev", &tap]).ok();
    eprintln!("{tap}: {}", link.stdout);
    assert!(link.stdout.contains("\"master\":\"vmbr0\""), "{link:?}");
    assert!(
        link.stdout.contains(&format!("\"group\":\"{group}\"")),
        "{link:?}"
    );
    assert!(link.stdout.contains("\"persist\":false"), "{link:?}");
    let machine = host(&["machinectl", "status", vm, "--no-pager"]).ok();
    eprintln!("{}", machine.stdout);
    assert!(
        machine.stdout.contains(&format!("Iface: {tap}")),
        "machinectl status does not show {tap}: {machine:?}"
    );
}

fn nat_to_the_outside(vm: &str) {
    let got = http_get_from(vm, UPLINK_OUTSIDE, 8080);
    eprintln!("{vm} -> outside: {got:?}");
    assert_eq!(got.code, Some(0), "{got:?}");
    assert!(
        got.stdout.contains(&format!("peer {UPLINK_HOST}\n")),
        "the outside did not see the masqueraded source {UPLINK_HOST}: {got:?}"
    );
    let server = host(&[
        "journalctl",
        "-u",
        "vmctl-e2e-outside",
        "--no-pager",
        "-o",
        "cat",
    ]);
    eprintln!("outside server log:\n{}", server.stdout);
}

fn vms_reach_each_other() {
    for (from, to) in [(VM1, VM2), (VM2, VM1)] {
        for key in ["ipv4", "ipv6"] {
            let ip = vm_spec_field(to, key);
            let banner = ssh_banner_from(from, &ip);
            eprintln!("{from} -> {to} {ip}:22: {banner:?}");
            assert!(banner.stdout.starts_with("SSH-2.0"), "{banner:?}");
        }
    }
}

/// A VM of another owner works, reaches the outside, and cannot reach the
/// first owner's VMs, nor they it.
fn other_owner_is_isolated() {
    create_and_start(OTHER_OWNER, VM3);
    assert!(
        wait_for(Duration::from_secs(120), || guest(VM3, &["true"]).code
            == Some(0)),
        "{VM3} did not come up"
    );
    addresses_and_tap_of_owner(VM3, &group_of(OTHER_OWNER).to_string());
    nat_to_the_outside(VM3);
    assert_isolated();
    // The rules that did it: one element per running VM, its TAP and its
    // owner's group.
    eprintln!(
        "{}",
        host(&["nft", "list", "table", "bridge", "vmctl"]).stdout
    );
    let mut expected = vec![
        (tap_of(VM1), group_of(OWNER)),
        (tap_of(VM2), group_of(OWNER)),
        (tap_of(VM3), group_of(OTHER_OWNER)),
    ];
    expected.sort();
    assert_eq!(port_owner_elements(), expected);
}

/// Neither of bob's VM and alice's reaches the other (where running).
fn assert_isolated() {
    for (from, to) in [(VM3, VM1), (VM1, VM3), (VM3, VM2)] {
        if !is_active(from) || !is_active(to) {
            continue;
        }
        for key in ["ipv4", "ipv6"] {
            let ip = vm_spec_field(to, key);
            let banner = ssh_banner_from(from, &ip);
            eprintln!("{from} -> {to} {ip}:22 (other owner): {banner:?}");
            assert!(
                !banner.stdout.contains("SSH"),
                "{from} reached {to}, a VM of another owner: {banner:?}"
            );
        }
    }
}

fn is_active(vm: &str) -> bool {
    host(&["systemctl", "is-active", "--quiet", &format!("vm@{vm}")]).code == Some(0)
}

/// Stop, kill -9 of QEMU and kill -9 of the launcher each leave neither
/// the TAP nor its isolation element behind; isolation holds throughout.
fn taps_die_with_the_vmm() {
    let tap1 = tap_of(VM1);
    let index1 = ifindex_of(&tap1);
    host(&["systemctl", "stop", &format!("vm@{VM1}")]).ok();
    assert!(!link_exists(&tap1), "{tap1} left after stop");
    assert!(
        !has_element(&tap1, &index1),
        "the isolation element of {tap1} ({index1}) outlived it: {:?}",
        port_owner_elements()
    );
    eprintln!("after stop: {tap1} and its element are gone");

    let tap2 = tap_of(VM2);
    let index2 = ifindex_of(&tap2);
    let leader = host(&["machinectl", "show", VM2, "-p", "Leader", "--value"])
        .ok()
        .stdout;
    let leader = leader.trim();
    let comm = host(&["cat", &format!("/proc/{leader}/comm")]).ok().stdout;
    assert!(
        comm.starts_with("qemu"),
        "machined's leader {leader} is {comm}"
    );
    host(&["kill", "-9", leader]).ok();
    assert!(
        wait_for(Duration::from_secs(30), || !link_exists(&tap2)),
        "{tap2} left after kill -9 of QEMU ({leader}): {:?}",
        host(&["ip", "-d", "link", "show", "dev", &tap2])
    );
    assert!(
        wait_for(Duration::from_secs(30), || !has_element(&tap2, &index2)),
        "the isolation element of {tap2} ({index2}) outlived QEMU: {:?}",
        port_owner_elements()
    );
    eprintln!("after kill -9 of QEMU {leader}: {tap2} and its element are gone");
    let state = host(&["systemctl", "is-active", &format!("vm@{VM2}")]);
    eprintln!("vm@{VM2} after kill -9: {}", state.stdout.trim());

    // alice starts VM2 again; then bob's launcher is killed outright, so
    // it cannot clean up: the unit's ExecStopPost= does.
    host_as(Some(OWNER), &["systemctl", "start", &format!("vm@{VM2}")]).ok();
    let tap3 = tap_of(VM3);
    let index3 = ifindex_of(&tap3);
    host(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "--signal=KILL",
        &format!("vm@{VM3}"),
    ])
    .ok();
    assert!(
        wait_for(Duration::from_secs(60), || !is_active(VM3)
            && !link_exists(&tap3)
            && !has_element(&tap3, &index3)),
        "{tap3} or its element ({index3}) left after kill -9 of the launcher: {:?} {:?}",
        host(&["ip", "-d", "link", "show", "dev", &tap3]),
        port_owner_elements()
    );
    eprintln!("after kill -9 of the launcher: {tap3} and its element are gone");
    let journal = host(&[
        "journalctl",
        "-u",
        &format!("vm@{VM3}"),
        "--no-pager",
        "-o",
        "cat",
    ]);
    eprintln!(
        "{}",
        journal
            .stdout
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        port_owner_elements(),
        [(tap_of(VM2), group_of(OWNER))],
        "only the running VM has an element"
    );
    // bob's VM again, with a new TAP: still kept from alice's. Both must
    // have their addresses first, or "unreachable" would prove nothing.
    host_as(
        Some(OTHER_OWNER),
        &["systemctl", "start", &format!("vm@{VM3}")],
    )
    .ok();
    addresses_and_tap(VM2);
    addresses_and_tap_of_owner(VM3, &group_of(OTHER_OWNER).to_string());
    nat_to_the_outside(VM3);
    assert_isolated();
    let mut expected = vec![
        (tap_of(VM2), group_of(OWNER)),
        (tap_of(VM3), group_of(OTHER_OWNER)),
    ];
    expected.sort();
    assert_eq!(port_owner_elements(), expected);
}

/// Without networkd's bridge a VM with a network does not start, and says
/// why at once (naming systemd-networkd) instead of hanging.
#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn without_networkd_the_start_fails_fast_naming_it() {
    const VM: &str = "nonet";
    host(&[
        "sh",
        "-c",
        &format!("systemctl stop vm@{VM}; vmctl rm {VM}; true"),
    ]);
    host(&["vmctl", "create", VM, "--memory", "1G", "--disk", "4G"]).ok();
    host(&[
        "systemctl",
        "stop",
        "systemd-networkd.socket",
        "systemd-networkd.service",
    ])
    .ok();
    host(&["ip", "link", "del", "vmbr0"]).ok();
    let started = Instant::now();
    let start = host(&["timeout", "120", "systemctl", "start", &format!("vm@{VM}")]);
    let took = started.elapsed();
    let journal = host(&[
        "journalctl",
        "-u",
        &format!("vm@{VM}"),
        "--no-pager",
        "-o",
        "cat",
    ])
    .stdout;
    host(&["systemctl", "start", "systemd-networkd.service"]).ok();
    let _ = host(&["vmctl", "rm", VM]);
    eprintln!("start without vmbr0 after {took:?}: {start:?}\n{journal}");
    assert_ne!(start.code, Some(0), "the VM started without a bridge");
    assert_ne!(start.code, Some(124), "systemctl start hung");
    assert!(
        journal.contains("systemd-networkd") && journal.contains("vmbr0"),
        "the failure does not name networkd and the bridge:\n{journal}"
    );
    assert!(
        wait_for(Duration::from_secs(20), || link_exists("vmbr0")),
        "networkd did not bring vmbr0 back"
    );
}

/// The gateway addresses vmbr0 carries now, as `ip -j addr` prints them.
fn bridge_addresses() -> String {
    host(&["ip", "-j", "addr", "show", "dev", "vmbr0"]).stdout
}

/// Writes (or with `None` removes) `/etc/vmctl/vmctl.conf` and restarts
/// vmctld, which brings the bridge's drop-in in line with it at start-up.
fn configure_subnets(conf: Option<&str>) {
    match conf {
        Some(text) => {
            host(&["mkdir", "-p", "/etc/vmctl"]).ok();
            host(&[
                "sh",
                "-c",
                &format!("printf '%s' '{text}' > /etc/vmctl/vmctl.conf"),
            ])
            .ok();
        }
        None => {
            host(&["rm", "-f", "/etc/vmctl/vmctl.conf"]).ok();
        }
    }
    host(&["systemctl", "restart", "vmctld.service"]).ok();
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn configured_subnets_reach_the_bridge_and_the_vms() {
    const VM: &str = "subnet1";
    let dropin = "/run/systemd/network/vmctl-vmbr0.network.d/50-vmctl-subnets.conf";
    configure_subnets(Some(
        "[Network]\nIPv4Subnet=10.78.0.0/24\nIPv6Subnet=fd00:78::/64\n",
    ));
    let result = std::panic::catch_unwind(|| {
        let written = host(&["cat", dropin]).ok().stdout;
        assert!(written.contains("Address=10.78.0.1/24"), "{written}");
        assert!(
            wait_for(Duration::from_secs(20), || {
                let a = bridge_addresses();
                a.contains("\"10.78.0.1\"")
                    && a.contains("\"fd00:78::1\"")
                    && !a.contains("\"10.77.0.1\"")
            }),
            "vmbr0 did not move to the configured subnets: {}",
            bridge_addresses()
        );
        ensure_test_users();
        create_and_start(OWNER, VM);
        assert_eq!(vm_spec_field(VM, "ipv4"), "10.78.0.2");
        // READY comes before the guest's networkd has applied its address.
        assert!(
            wait_for(Duration::from_secs(60), || {
                host(&["ping", "-c1", "-W2", "10.78.0.2"]).code == Some(0)
            }),
            "no answer from the VM on the configured subnet: {:?}",
            guest(VM, &["ip", "-br", "addr"])
        );
    });
    let _ = host(&["systemctl", "stop", &format!("vm@{VM}")]);
    let _ = host(&["vmctl", "rm", VM]);
    configure_subnets(None);
    let back = wait_for(Duration::from_secs(20), || {
        let a = bridge_addresses();
        a.contains("\"10.77.0.1\"") && !a.contains("\"10.78.0.1\"")
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(
        back,
        "vmbr0 did not return to the shipped subnets: {}",
        bridge_addresses()
    );
    assert_eq!(
        host(&["test", "-e", dropin]).code,
        Some(1),
        "the drop-in is gone"
    );
}

/// After `vmctl rm` a VM's addresses are free: the next VM gets them (the
/// lowest free ones), and its name, not the old one, resolves to them.
fn addresses_are_reused_after_rm() {
    let (ipv4, ipv6) = (vm_spec_field(VM1, "ipv4"), vm_spec_field(VM1, "ipv6"));
    host_as(Some(OWNER), &["vmctl", "rm", VM1]).ok();
    let gone = host(&["getent", "hosts", &format!("{VM1}.vm")]);
    assert_eq!(gone.code, Some(2), "{VM1}.vm still resolves: {gone:?}");
    host_as(
        Some(OWNER),
        &["vmctl", "create", VM4, "--memory", "1G", "--disk", "4G"],
    )
    .ok();
    assert_eq!(
        (vm_spec_field(VM4, "ipv4"), vm_spec_field(VM4, "ipv6")),
        (ipv4.clone(), ipv6.clone()),
        "{VM4} did not get the addresses {VM1} freed"
    );
    let named = host(&["getent", "hosts", &ipv4]).ok();
    assert_eq!(
        named.stdout.split_whitespace().nth(1),
        Some(format!("{VM4}.vm").as_str()),
        "{named:?}"
    );
    eprintln!("after rm of {VM1}: {VM4} has {ipv4} {ipv6}");
}
