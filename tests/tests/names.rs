//! `NAME.vm` through NSS in the dev host, end to end: the installed
//! `libnss_vmctl.so.2` (from the package, with the `hosts:` line the
//! package adds to `/etc/nsswitch.conf`) answers `getent` from
//! `/run/vmctl/hosts/`, keeps answering with vmctld stopped, and forgets a
//! VM after `vmctl rm`.
//!
//! Two tests: one on records placed by hand (the module and the layout on
//! their own), one on a VM made by `vmctl create` (vmctld keeping the
//! records). Creating a VM does not boot it, so neither test needs QEMU.

use std::time::Instant;
use vmctl_e2e::{host, vm_spec_field, Run};

/// `getent ARGS` in the dev host, bounded so a hang fails instead of
/// stalling the suite.
fn getent(args: &[&str]) -> Run {
    let mut argv = vec!["timeout", "20", "getent"];
    argv.extend_from_slice(args);
    host(&argv)
}

/// The whitespace-separated words of `getent` output.
fn words(run: &Run) -> Vec<&str> {
    run.stdout.split_whitespace().collect()
}

/// Asserts `getent ARGS` exits 0 and prints a line starting with `addr`
/// and naming `name`.
#[track_caller]
fn assert_resolves(args: &[&str], addr: &str, name: &str) {
    let run = getent(args);
    assert_eq!(run.code, Some(0), "getent {args:?}: {run:#?}");
    assert!(
        run.stdout.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&addr) && w.contains(&name)
        }),
        "getent {args:?} does not give {addr} {name}: {run:#?}"
    );
}

/// Asserts `getent ARGS` exits 2 (not found) with no output.
#[track_caller]
fn assert_not_found(args: &[&str]) {
    let run = getent(args);
    assert_eq!(run.code, Some(2), "getent {args:?}: {run:#?}");
    assert!(run.stdout.is_empty(), "getent {args:?}: {run:#?}");
}

/// `getent ahosts*` asks `getaddrinfo` with `AI_ADDRCONFIG`, which drops a
/// family the host has no non-loopback address of. The dev host's private
/// network has only `lo` until the VM bridge is up, so while `vmbr0` is
/// absent a dummy link with documentation addresses (192.0.2.1/32,
/// 2001:db8::1/128) stands in; it carries no traffic and is deleted by
/// [`drop_addrconfig_link`].
fn ensure_addrconfig_link() {
    if host(&["ip", "link", "show", "vmbr0"]).code == Some(0) {
        return;
    }
    let script = "ip link del nn-e2e 2>/dev/null; ip link add nn-e2e type dummy && ip link set nn-e2e up && \
                  ip addr add 192.0.2.1/32 dev nn-e2e && \
                  ip -6 addr add 2001:db8::1/128 dev nn-e2e nodad";
    host(&["sh", "-c", script]).ok();
}

fn drop_addrconfig_link() {
    let _ = host(&["ip", "link", "del", "nn-e2e"]);
}

/// Checks the installed module resolves the hosts-style basics that do not
/// depend on VMs.
fn assert_module_installed() {
    ensure_addrconfig_link();
    let conf = host(&["grep", "^hosts:", "/etc/nsswitch.conf"]).ok();
    assert!(
        conf.stdout.split_whitespace().any(|w| w == "vmctl"),
        "nsswitch.conf has no vmctl: {conf:#?}"
    );
    // nss-files still answers localhost.
    let local = getent(&["ahosts", "localhost"]);
    assert_eq!(local.code, Some(0), "{local:#?}");
    assert!(words(&local).contains(&"localhost"), "{local:#?}");
    assert_not_found(&["hosts", "nope.vm"]);
    assert_not_found(&["ahosts", "nope.vm"]);
}

/// Stops vmctld (its socket stays, and nothing here connects to it) and
/// checks `check` still passes; starts vmctld again whatever happened.
fn with_vmctld_stopped(check: impl FnOnce()) {
    host(&["systemctl", "stop", "vmctld.service"]).ok();
    let state = host(&["systemctl", "is-active", "vmctld.service"]);
    assert_ne!(state.stdout.trim(), "active", "{state:#?}");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    host(&["systemctl", "start", "vmctld.service"]).ok();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn hand_placed_records_resolve_through_the_installed_module() {
    assert_module_installed();
    let dir = "/run/vmctl/hosts";
    let script = format!(
        "set -e; mkdir -p {dir}/name {dir}/addr; \
         printf '10.77.200.2 fd77:766d:6374::c802\\n' > {dir}/name/names-e2e; \
         printf 'names-e2e\\n' > {dir}/addr/10.77.200.2; \
         printf 'names-e2e\\n' > {dir}/addr/fd77:766d:6374::c802; \
         printf '10.77.2' > {dir}/name/names-e2e-trunc; \
         head -c 64 /dev/urandom > {dir}/name/names-e2e-junk"
    );
    host(&["sh", "-c", &script]).ok();
    let cleanup = format!(
        "rm -f {dir}/name/names-e2e {dir}/addr/10.77.200.2 {dir}/addr/fd77:766d:6374::c802 \
         {dir}/name/names-e2e-trunc {dir}/name/names-e2e-junk"
    );

    let checks = || {
        assert_resolves(
            &["hosts", "names-e2e.vm"],
            "fd77:766d:6374::c802",
            "names-e2e.vm",
        );
        assert_resolves(
            &["ahostsv4", "NAMES-E2E.VM."],
            "10.77.200.2",
            "names-e2e.vm",
        );
        let both = getent(&["ahosts", "names-e2e.vm"]);
        assert_eq!(both.code, Some(0), "{both:#?}");
        let w = words(&both);
        assert!(w.contains(&"10.77.200.2") && w.contains(&"fd77:766d:6374::c802"));
        assert_resolves(&["hosts", "10.77.200.2"], "10.77.200.2", "names-e2e.vm");
        assert_resolves(
            &["hosts", "fd77:766d:6374::c802"],
            "fd77:766d:6374::c802",
            "names-e2e.vm",
        );
        assert_not_found(&["hosts", "names-e2e-trunc.vm"]);
        assert_not_found(&["hosts", "names-e2e-junk.vm"]);
        assert_not_found(&["hosts", "nope.vm"]);
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        checks();
        with_vmctld_stopped(|| {
            let start = Instant::now();
            assert_resolves(&["ahostsv4", "names-e2e.vm"], "10.77.200.2", "names-e2e.vm");
            eprintln!(
                "lookup with vmctld stopped: getent took {:?}",
                start.elapsed()
            );
            checks();
        });
    }));
    host(&["sh", "-c", &cleanup]).ok();
    drop_addrconfig_link();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert_not_found(&["hosts", "names-e2e.vm"]);
    assert_not_found(&["hosts", "10.77.200.2"]);
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn a_created_vm_resolves_by_name_until_rm() {
    assert_module_installed();
    let name = "namesvm";
    let fqdn = "namesvm.vm";
    host(&["vmctl", "create", name, "--memory", "512M"]).ok();
    let result = std::panic::catch_unwind(|| {
        let ipv4 = vm_spec_field(name, "ipv4");
        let ipv6 = vm_spec_field(name, "ipv6");
        let (ipv4, ipv6) = (ipv4.as_str(), ipv6.as_str());
        eprintln!("{name}: {ipv4} {ipv6}");

        let check = || {
            assert_resolves(&["hosts", fqdn], ipv6, fqdn);
            assert_resolves(&["ahostsv4", fqdn], ipv4, fqdn);
            let both = getent(&["ahosts", "NamesVM.VM"]);
            assert_eq!(both.code, Some(0), "{both:#?}");
            let w = words(&both);
            assert!(w.contains(&ipv4) && w.contains(&ipv6), "{both:#?}");
            assert_resolves(&["hosts", ipv4], ipv4, fqdn);
            assert_resolves(&["hosts", ipv6], ipv6, fqdn);
            assert_not_found(&["hosts", "nope.vm"]);
        };
        check();
        with_vmctld_stopped(|| {
            let start = Instant::now();
            check();
            eprintln!("lookups with vmctld stopped took {:?}", start.elapsed());
        });
        (ipv4.to_owned(), ipv6.to_owned())
    });
    host(&["vmctl", "rm", name]).ok();
    drop_addrconfig_link();
    let (ipv4, ipv6) = match result {
        Ok(addrs) => addrs,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert_not_found(&["hosts", fqdn]);
    assert_not_found(&["ahosts", fqdn]);
    assert_not_found(&["hosts", &ipv4]);
    assert_not_found(&["hosts", &ipv6]);
}
