//! The foundation, checked from outside in a real systemd host: units,
//! socket and D-Bus activation, the CLI, the varlink interface and NSS.

use vmctl_e2e::{host, Run};

fn installed_units() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
    let mut units: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".service", ".socket", ".slice"]
                .iter()
                .any(|s| n.ends_with(s))
        })
        .collect();
    units.sort();
    assert!(units.iter().any(|u| u == "vmctld.service"), "{units:?}");
    units
}

/// `systemctl CMD UNITS...`, forgetting earlier rapid restarts first: the
/// tests start and stop vmctld more often than StartLimitBurst= allows.
fn systemctl(args: &[&str]) -> Run {
    host(&[
        "systemctl",
        "reset-failed",
        "vmctld.service",
        "vmctld.socket",
    ]);
    let mut argv = vec!["systemctl"];
    argv.extend_from_slice(args);
    host(&argv)
}

fn is_active(unit: &str) -> String {
    host(&["systemctl", "is-active", unit])
        .stdout
        .trim()
        .to_owned()
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn every_installed_unit_verifies() {
    for unit in installed_units() {
        let path = format!("/usr/lib/systemd/system/{unit}");
        let run = host(&["systemd-analyze", "verify", &path]);
        assert_eq!(run.code, Some(0), "{unit} does not verify: {run:#?}");
        assert!(
            run.stderr.trim().is_empty(),
            "{unit} warnings: {}",
            run.stderr
        );
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn vmctld_is_hardened() {
    let run = host(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "vmctld.service",
    ])
    .ok();
    let overall = run
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line: {run:#?}"));
    let level: f32 = overall
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {overall:?}"));
    // The daemon needs little: a bus connection and its state directory.
    assert!(
        level <= 2.0,
        "vmctld exposure {level} (> 2.0):\n{}",
        run.stdout
    );
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn list_socket_activates_the_daemon() {
    systemctl(&["stop", "vmctld.service"]).ok();
    assert_eq!(is_active("vmctld.socket"), "active");
    assert_eq!(is_active("vmctld.service"), "inactive");

    let run = host(&["vmctl", "list"]).ok();
    assert_eq!(
        is_active("vmctld.service"),
        "active",
        "not socket-activated"
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected only a header: {run:#?}");
    assert!(lines[0].contains("NAME"), "no header: {run:#?}");

    let json = host(&["vmctl", "list", "--json"]).ok();
    assert_eq!(json.stdout.trim(), "[]");
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn stopped_daemon_is_activated_again() {
    host(&["vmctl", "list"]).ok();
    systemctl(&["stop", "vmctld"]).ok();
    assert_eq!(is_active("vmctld.service"), "inactive");
    host(&["vmctl", "list", "--json"]).ok();
    assert_eq!(is_active("vmctld.service"), "active");
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn dbus_activation_answers_get_version() {
    systemctl(&["stop", "vmctld.service"]).ok();
    let run = host(&[
        "busctl",
        "--system",
        "call",
        "org.vmctl.Manager1",
        "/org/vmctl/Manager1",
        "org.vmctl.Manager1",
        "GetVersion",
    ])
    .ok();
    assert!(
        run.stdout.contains(env!("CARGO_PKG_VERSION")),
        "version missing: {run:#?}"
    );
    assert_eq!(is_active("vmctld.service"), "active", "not D-Bus activated");

    let list = || {
        host(&[
            "busctl",
            "--system",
            "--json=short",
            "call",
            "org.vmctl.Manager1",
            "/org/vmctl/Manager1",
            "org.vmctl.Manager1",
            "List",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned()
    };
    assert_eq!(list(), r#"{"type":"a(ssuutsss)","data":[[]]}"#);
    // The same service layer as varlink: a VM made with the CLI shows up
    // (without a network, so its address fields are empty and the reply
    // is exact).
    host(&[
        "vmctl",
        "create",
        "dbuslist",
        "--memory",
        "512M",
        "--network",
        "none",
    ])
    .ok();
    let listed = list();
    host(&["vmctl", "rm", "dbuslist"]).ok();
    assert_eq!(
        listed,
        r#"{"type":"a(ssuutsss)","data":[[["dbuslist","stopped",0,1,536870912,"","",""]]]}"#
    );
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn varlink_interface_is_served_as_written() {
    let info = host(&["varlinkctl", "info", "/run/vmctl/io.vmctl.Manager"]).ok();
    assert!(info.stdout.contains("io.vmctl.Manager"), "{info:#?}");

    let list = host(&[
        "varlinkctl",
        "call",
        "--json=short",
        "/run/vmctl/io.vmctl.Manager",
        "io.vmctl.Manager.List",
        "{}",
    ])
    .ok();
    assert_eq!(list.stdout.trim(), r#"{"vms":[]}"#);

    // The served interface description is the IDL file installed from the tree.
    let served = host(&[
        "varlinkctl",
        "introspect",
        "/run/vmctl/io.vmctl.Manager",
        "io.vmctl.Manager",
    ])
    .ok();
    let idl = include_str!("../../api/io.vmctl.Manager.varlink");
    for method in idl
        .lines()
        .filter_map(|l| l.strip_prefix("method "))
        .map(|l| l.split('(').next().unwrap())
    {
        assert!(
            served.stdout.contains(&format!("method {method}(")),
            "{method} not served: {served:#?}"
        );
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn malformed_varlink_calls_get_errors_and_change_nothing() {
    let unknown = host(&[
        "varlinkctl",
        "call",
        "/run/vmctl/io.vmctl.Manager",
        "io.vmctl.Manager.NoSuchMethod",
        "{}",
    ]);
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown.stderr.contains("MethodNotFound"),
        "expected org.varlink.service.MethodNotFound: {unknown:#?}"
    );
    let bad_params = host(&[
        "varlinkctl",
        "call",
        "/run/vmctl/io.vmctl.Manager",
        "io.vmctl.Manager.List",
        r#"{"bogus": [1,2,3]}"#,
    ]);
    assert_ne!(bad_params.code, Some(0), "{bad_params:#?}");
    // Still serving.
    host(&["vmctl", "list", "--json"]).ok();
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn unreachable_daemon_gives_a_clear_error() {
    systemctl(&["stop", "vmctld.socket", "vmctld.service"]).ok();
    let run: Run = host(&["vmctl", "list"]);
    systemctl(&["start", "vmctld.socket"]).ok();
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr.contains("/run/vmctl/io.vmctl.Manager"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("systemctl status vmctld.socket"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn nss_module_resolves_only_vm_names() {
    let nsswitch = host(&["grep", "^hosts:", "/etc/nsswitch.conf"]).ok();
    assert!(nsswitch.stdout.contains("vmctl"), "{nsswitch:#?}");

    let missing = host(&["getent", "hosts", "nothing.vm"]);
    assert_eq!(missing.code, Some(2), "{missing:#?}");
    let localhost = host(&["getent", "hosts", "localhost"]).ok();
    assert!(!localhost.stdout.is_empty());

    // glibc really loads the module: records as vmctld publishes them
    // (one per name and per address under /run/vmctl/hosts/) resolve.
    host(&[
        "sh",
        "-c",
        "mkdir -p /run/vmctl/hosts/name /run/vmctl/hosts/addr \\
         && printf '192.0.2.7\\n' > /run/vmctl/hosts/name/e2etest \\
         && printf 'e2etest\\n' > /run/vmctl/hosts/addr/192.0.2.7",
    ])
    .ok();
    // getaddrinfo (gethostbyname4_r). Not ahostsv4: its AI_ADDRCONFIG hides
    // IPv4 answers in this host, whose only interface is loopback.
    let found = host(&["getent", "ahosts", "e2etest.vm"]);
    let reverse = host(&["getent", "hosts", "192.0.2.7"]);
    host(&[
        "rm",
        "-f",
        "/run/vmctl/hosts/name/e2etest",
        "/run/vmctl/hosts/addr/192.0.2.7",
    ])
    .ok();
    let found = found.ok();
    assert!(found.stdout.contains("192.0.2.7"), "{found:#?}");
    let reverse = reverse.ok();
    assert!(reverse.stdout.contains("e2etest.vm"), "{reverse:#?}");
}
