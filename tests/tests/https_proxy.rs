//! The HTTPS proxy (`vmctl-https`) end to end in the dev host: the real
//! socket units and service as installed, vmctld's gateway interface, a
//! VM serving HTTP (`http-echo`, which echoes the headers it got), and
//! curl as the client with `--resolve` (names under the test domain
//! `vm.test` all mean 127.0.0.1) and the test CA.
//!
//! Checked on one VM of alice's:
//! - socket activation: the service is inactive until the first request;
//! - TLS with a user-provided certificate (CertificateFile=/KeyFile=);
//! - unknown name 404; HTTP on port 80 redirects to HTTPS (308);
//! - private by default: no session gets the 404 of an unknown name,
//!   which says how an owner logs in; alice's
//!   one-time link (`vmctl login`) opens a page that asks to confirm,
//!   whose form (posted from the site) gives a session cookie (HttpOnly,
//!   Secure, for the domain); with it 200 and the VM sees
//!   `X-VmCtl-User: alice` and her uid, never a client-sent one, plus
//!   `X-Forwarded-For/-Proto/-Host`; the link works once; root's session
//!   (another user) gets the same 404 as an unknown name;
//! - sharing: bob cannot get a link for alice's VM or share it
//!   (`io.vmctl.Manager.NoSuchVM`); after `vmctl share web bob` his own
//!   link lets him in (200, `X-VmCtl-User: bob`), `vmctl show` names him;
//!   after `vmctl unshare` his session gets the 404 again;
//! - `systemctl reload vmctl-https` (SIGHUP: the certificate files are
//!   read again) leaves the service running and answering;
//! - `vmctl publish --public`: 200 without a session;
//! - a VM not answering 502, a stopped VM 503 naming `vmctl start`;
//! - 100 MB up and down through the proxy, sha256 intact;
//! - the unit's `systemd-analyze security` exposure is at most 2.0.
//!
//! And with ACME against Debian's Pebble on loopback (its binaries copied
//! from this machine; `pebble-challtestsrv` answers every name with
//! 127.0.0.1, so Pebble's HTTP-01 check reaches the proxy's port 80): the
//! first HTTPS request to a VM's name gets a certificate Pebble issued,
//! and Pebble's 60-second certificates are renewed in the background and
//! served without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmctl_e2e::{ensure_test_users, host, host_as, host_uid, serve_in_vm, vm_exec, Run};
use xtask::host::DevHost;

const VM: &str = "web";
const DOMAIN: &str = "vm.test";
const TLS_DIR: &str = "/etc/vmctl/https-e2e";

/// A CA and a `*.vm.test` certificate it signed, made with openssl on this
/// machine in `dir`.
fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=vmctl e2e CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
                "-subj",
                "/CN=*.vm.test",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:*.vm.test\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // Pebble's own HTTPS certificate (its directory at 127.0.0.1:14000).
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "pebble-key.pem",
                "-out",
                "pebble.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("pebble.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "pebble.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "pebble-cert.pem",
        "-days",
        "2",
        "-extfile",
        "pebble.cnf",
    ]);
}

/// curl in the host with the test CA and every test name on 127.0.0.1;
/// `-D -` puts the response head before the body on stdout.
fn curl_as(user: Option<&str>, args: &[&str]) -> Run {
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "-D",
        "-",
        "--cacert",
        "/etc/vmctl/https-e2e/ca.pem",
    ];
    let resolves: Vec<String> = [VM, "nope"]
        .iter()
        .flat_map(|n| [443, 80].map(|port| format!("{n}.{DOMAIN}:{port}:127.0.0.1")))
        .collect();
    for r in &resolves {
        argv.push("--resolve");
        argv.push(r);
    }
    argv.extend_from_slice(args);
    host_as(user, &argv)
}

fn curl(args: &[&str]) -> Run {
    curl_as(None, args)
}

/// The status code of a `curl -D -` run.
fn status(run: &Run) -> u16 {
    run.stdout
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status: {run:#?}"))
}

/// What a browser does with a `vmctl login` link once its user confirms:
/// the page's form posts the token (from the site itself); the session
/// cookie goes to `jar`.
fn log_in(link: &str, jar: &str) -> Run {
    let (action, token) = link
        .split_once("?token=")
        .unwrap_or_else(|| panic!("not a login link: {link}"));
    let origin = action.trim_end_matches("/.vmctl/login");
    curl(&[
        "-c",
        jar,
        "-H",
        &format!("Origin: {origin}"),
        "--data",
        &format!("token={token}"),
        action,
    ])
}

fn url(path: &str) -> String {
    format!("https://{VM}.{DOMAIN}{path}")
}

/// Waits until `url` answers `want` (the guest's server and the proxy's
/// 3 s route cache take a moment), at most `within`.
fn wait_for_status(args: &[&str], want: u16, within: Duration) -> Run {
    let deadline = std::time::Instant::now() + within;
    loop {
        let run = curl(args);
        if run.code == Some(0) && status(&run) == want || std::time::Instant::now() > deadline {
            return run;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        host(&[
            "sh",
            "-c",
            &format!(
                "systemctl stop vmctl-https.service vmctl-https.socket vmctl-https-http.socket; \
                 vmctl rm {VM} >/dev/null 2>&1; rm -rf /etc/vmctl/https.conf {TLS_DIR} \
                 /var/lib/vmctl-https /var/tmp/https-e2e-*; true"
            ),
        ]);
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn https_proxy_routes_logs_in_and_keeps_private_vms_private() {
    ensure_test_users();
    host(&["sh", "-c", &format!("vmctl rm {VM} >/dev/null 2>&1; true")]);
    let _cleanup = Cleanup;
    let dev = DevHost::current().unwrap();

    // The certificate, readable by the proxy's user only (and root).
    let local: PathBuf = std::env::temp_dir().join(format!("https-e2e-{}", std::process::id()));
    make_certificates(&local);
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        dev.copy_in(&local.join(f), &format!("{TLS_DIR}/{f}"))
            .unwrap();
    }
    std::fs::remove_dir_all(&local).ok();
    host(&["chgrp", "vmctl-https", &format!("{TLS_DIR}/key.pem")]).ok();
    host(&["chmod", "0640", &format!("{TLS_DIR}/key.pem")]).ok();
    host(&[
        "sh",
        "-c",
        &format!(
            "printf '[HTTPS]\\nDomain={DOMAIN}\\nCertificateFile={TLS_DIR}/cert.pem\\n\
             KeyFile={TLS_DIR}/key.pem\\n' > /etc/vmctl/https.conf"
        ),
    ])
    .ok();

    // alice's VM with the echo server on port 80.
    host_as(
        Some("alice"),
        &[
            "vmctl", "create", VM, "--cpus", "1", "--memory", "1G", "--disk", "4G",
        ],
    )
    .ok();
    host_as(Some("alice"), &["vmctl", "start", VM]).ok();
    serve_in_vm(
        VM,
        Path::new(env!("CARGO_BIN_EXE_http-echo")),
        "http-echo",
        "0.0.0.0:80",
    );

    // Socket activation: nothing runs until the first connection.
    host(&[
        "systemctl",
        "start",
        "vmctl-https.socket",
        "vmctl-https-http.socket",
    ])
    .ok();
    let active = host(&["systemctl", "is-active", "vmctl-https.service"]);
    assert_eq!(active.stdout.trim(), "inactive", "{active:#?}");

    // Unknown name: 404, and the TLS handshake verified with the test CA.
    let run = curl(&["https://nope.vm.test/"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(status(&run), 404, "{run:#?}");
    assert!(
        run.stdout
            .contains("There is no VM published at nope.vm.test"),
        "{run:#?}"
    );
    let active = host(&["systemctl", "is-active", "vmctl-https.service"]);
    assert_eq!(active.stdout.trim(), "active", "{active:#?}");
    assert_eq!(
        host(&[
            "systemctl",
            "show",
            "-p",
            "User",
            "--value",
            "vmctl-https.service"
        ])
        .stdout
        .trim(),
        "vmctl-https"
    );

    // Port 80 redirects to HTTPS, path and query kept.
    let run = curl(&["http://web.vm.test/a/b?c=d"]);
    assert_eq!(status(&run), 308, "{run:#?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.eq_ignore_ascii_case("location: https://web.vm.test/a/b?c=d")),
        "{run:#?}"
    );

    // Private by default: no session, no entry, and the page says how.
    let run = curl(&[&url("/")]);
    assert_eq!(status(&run), 404, "{run:#?}");
    assert!(run.stdout.contains("vmctl login web"), "{run:#?}");
    assert!(
        run.stdout
            .contains("There is no VM published at web.vm.test"),
        "{run:#?}"
    );

    // alice's one-time link gives her a session cookie.
    let link = host_as(Some("alice"), &["vmctl", "login", VM]).ok().stdout;
    let link = link.trim();
    assert!(
        link.starts_with("https://web.vm.test/.vmctl/login?token="),
        "{link}"
    );
    let jar = "/var/tmp/https-e2e-alice.jar";
    // Opening the link only asks to confirm (a form posting the token).
    let run = curl(&[link]);
    assert_eq!(status(&run), 200, "{run:#?}");
    assert!(run.stdout.contains("<form method=\"post\""), "{run:#?}");
    let run = log_in(link, jar);
    assert_eq!(status(&run), 303, "{run:#?}");
    let set_cookie = run
        .stdout
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: vmctl_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie: {run:#?}"));
    for attribute in ["Domain=vm.test", "HttpOnly", "Secure", "SameSite=Lax"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    // The link works once.
    let run = log_in(link, "/var/tmp/https-e2e-again.jar");
    assert_eq!(status(&run), 403, "{run:#?}");

    // With the session: the VM answers, told who it is, and a client's
    // own X-VmCtl-* and X-Forwarded-* never arrive.
    let alice_uid = host_uid("alice");
    let run = wait_for_status(
        &[
            "-b",
            jar,
            "-H",
            "X-VmCtl-User: root",
            "-H",
            "X-VmCtl-Uid: 0",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            &url("/hello?x=1"),
        ],
        200,
        Duration::from_secs(60),
    );
    assert_eq!(status(&run), 200, "{run:#?}");
    let body = run.stdout.split("\r\n\r\n").nth(1).unwrap_or("");
    let seen: Vec<&str> = body.lines().collect();
    assert_eq!(seen[0], "GET /hello?x=1", "{body}");
    assert!(seen.contains(&"x-vmctl-user: alice"), "{body}");
    assert!(
        seen.contains(&format!("x-vmctl-uid: {alice_uid}").as_str()),
        "{body}"
    );
    assert!(seen.contains(&"x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(seen.contains(&"x-forwarded-proto: https"), "{body}");
    assert!(seen.contains(&"x-forwarded-host: web.vm.test"), "{body}");
    assert!(seen.contains(&"host: web.vm.test"), "{body}");
    assert_eq!(body.matches("x-vmctl-user").count(), 1, "{body}");
    assert_eq!(body.matches("x-vmctl-uid").count(), 1, "{body}");
    assert_eq!(body.matches("x-forwarded-for").count(), 1, "{body}");
    assert!(
        !body.contains("vmctl_session"),
        "the VM saw the session: {body}"
    );
    assert!(
        !body.contains("6.6.6.6") && !body.contains(": root"),
        "{body}"
    );

    // Another user's session (root's own link): the same 404 as for a
    // name that does not exist.
    let root_link = host(&["vmctl", "login", VM]).ok().stdout;
    let root_jar = "/var/tmp/https-e2e-root.jar";
    assert_eq!(status(&log_in(root_link.trim(), root_jar)), 303);
    let run = curl(&["-b", root_jar, &url("/")]);
    assert_eq!(status(&run), 404, "{run:#?}");
    assert!(
        run.stdout
            .contains("There is no VM published at web.vm.test"),
        "{run:#?}"
    );

    // Sharing. Before: bob can neither get a login link for alice's VM
    // nor share it himself; to him it does not exist.
    let run = host_as(Some("bob"), &["vmctl", "login", VM]);
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr.contains("(io.vmctl.Manager.NoSuchVM)"),
        "{run:#?}"
    );
    let run = host_as(Some("bob"), &["vmctl", "share", VM, "bob"]);
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr
            .contains("no VM named \"web\" (io.vmctl.Manager.NoSuchVM)"),
        "{run:#?}"
    );
    // alice shares it: show (text and JSON) names bob.
    let run = host_as(Some("alice"), &["vmctl", "share", VM, "bob"]).ok();
    assert_eq!(run.stdout.trim(), "web: shared with bob", "{run:#?}");
    let run = host_as(Some("alice"), &["vmctl", "show", VM]).ok();
    assert!(run.stdout.contains("  Shared: bob\n"), "{run:#?}");
    let run = host_as(Some("alice"), &["vmctl", "describe", VM, "--json"]).ok();
    let details: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:#?}"));
    assert_eq!(
        details["shared_with"],
        serde_json::json!(["bob"]),
        "{run:#?}"
    );
    // bob logs in with his own link and gets in, named as himself.
    let bob_link = host_as(Some("bob"), &["vmctl", "login", VM]).ok().stdout;
    let bob_jar = "/var/tmp/https-e2e-bob.jar";
    assert_eq!(status(&log_in(bob_link.trim(), bob_jar)), 303);
    let run = wait_for_status(&["-b", bob_jar, &url("/")], 200, Duration::from_secs(10));
    assert_eq!(status(&run), 200, "{run:#?}");
    let bob_uid = host_uid("bob");
    assert!(run.stdout.contains("\nx-vmctl-user: bob\n"), "{run:#?}");
    assert!(
        run.stdout.contains(&format!("\nx-vmctl-uid: {bob_uid}\n")),
        "{run:#?}"
    );
    // After unshare bob's session is refused again (within the proxy's
    // 3 s route cache), with the same 404 as an unknown name.
    let run = host_as(Some("alice"), &["vmctl", "unshare", VM, "bob"]).ok();
    assert_eq!(run.stdout.trim(), "web: shared with nobody", "{run:#?}");
    let run = wait_for_status(&["-b", bob_jar, &url("/")], 404, Duration::from_secs(10));
    assert_eq!(status(&run), 404, "{run:#?}");
    assert!(
        run.stdout
            .contains("There is no VM published at web.vm.test"),
        "{run:#?}"
    );
    // Unsharing a user it is not shared with names the mistake.
    let run = host_as(Some("alice"), &["vmctl", "unshare", VM, "bob"]);
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr.contains("web is not shared with bob")
            && run.stderr.contains("(io.vmctl.Manager.InvalidArgument)"),
        "{run:#?}"
    );

    // A reload (the certificate files read again) keeps it serving.
    host(&["systemctl", "reload", "vmctl-https.service"]).ok();
    let active = host(&["systemctl", "is-active", "vmctl-https.service"]);
    assert_eq!(active.stdout.trim(), "active", "{active:#?}");
    let run = curl(&["-b", jar, &url("/")]);
    assert_eq!(status(&run), 200, "{run:#?}");

    // 100 MB down and up through the proxy, intact.
    let run = host(&[
        "sh",
        "-c",
        &format!(
            "curl -sS --max-time 600 --cacert {TLS_DIR}/ca.pem --resolve web.vm.test:443:127.0.0.1 \
             -b {jar} {down} -o /var/tmp/https-e2e-down && stat -c %s /var/tmp/https-e2e-down && \
             curl -sS --max-time 600 --cacert {TLS_DIR}/ca.pem --resolve web.vm.test:443:127.0.0.1 \
             -b {jar} --data-binary @/var/tmp/https-e2e-down -H 'Content-Type: application/octet-stream' \
             {echo} | sha256sum && sha256sum < /var/tmp/https-e2e-down",
            down = url("/bytes/104857600"),
            echo = url("/echo"),
        ),
    ])
    .ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "104857600", "{run:#?}");
    assert_eq!(lines[1], lines[2], "the echoed 100 MB differ: {run:#?}");

    // Public: anyone, without a session, and no identity headers.
    let published = host_as(Some("alice"), &["vmctl", "publish", VM, "--public"]).ok();
    assert!(
        published.stdout.contains("open to anyone"),
        "{published:#?}"
    );
    let run = wait_for_status(&[&url("/")], 200, Duration::from_secs(10));
    assert_eq!(status(&run), 200, "{run:#?}");
    assert!(!run.stdout.contains("x-vmctl-user"), "{run:#?}");
    // bob may not change alice's publication.
    let run = host_as(Some("bob"), &["vmctl", "publish", VM, "--private"]);
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.contains("no VM named \"web\""), "{run:#?}");

    // Nothing listening in the VM: 502.
    vm_exec(VM, &["systemctl", "stop", "http-echo"]).ok();
    let run = wait_for_status(&[&url("/")], 502, Duration::from_secs(10));
    assert_eq!(status(&run), 502, "{run:#?}");
    assert!(
        run.stdout.contains("nothing answered on its port 80"),
        "{run:#?}"
    );

    // Stopped: 503 saying how to start it.
    host_as(Some("alice"), &["vmctl", "stop", VM]).ok();
    let run = wait_for_status(&[&url("/")], 503, Duration::from_secs(10));
    assert_eq!(status(&run), 503, "{run:#?}");
    assert!(run.stdout.contains("vmctl start web"), "{run:#?}");

    // The unit's sandbox.
    let run = host(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "vmctl-https.service",
    ]);
    let exposure: f64 = run
        .stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vmctl-https.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure: {run:#?}"));
    println!("systemd-analyze security vmctl-https.service: {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure}: {run:#?}");

    host_as(Some("alice"), &["vmctl", "rm", VM]).ok();
}

const ACME_VM: &str = "acmesite";

struct AcmeCleanup;

impl Drop for AcmeCleanup {
    fn drop(&mut self) {
        host(&[
            "sh",
            "-c",
            &format!(
                "systemctl stop vmctl-https.service vmctl-https.socket vmctl-https-http.socket \
                 pebble.service pebble-dns.service; systemctl reset-failed pebble.service \
                 pebble-dns.service; vmctl rm {ACME_VM} >/dev/null 2>&1; \
                 rm -rf /etc/vmctl/https.conf {TLS_DIR} /var/lib/vmctl-https; true"
            ),
        ]);
    }
}

/// The certificate the proxy serves for `name`: curl's `%{certs}` (the
/// chain as curl saw it, verified against `ca`).
fn served_certificate(name: &str, ca: &str) -> Run {
    host(&[
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-o",
        "/dev/null",
        "-w",
        "%{certs}",
        "--cacert",
        ca,
        "--resolve",
        &format!("{name}.{DOMAIN}:443:127.0.0.1"),
        &format!("https://{name}.{DOMAIN}/"),
    ])
}

/// The first certificate's `Start date:` line in curl's `%{certs}`.
fn start_date(certs: &Run) -> String {
    certs
        .stdout
        .lines()
        .find(|l| l.starts_with("Start date:"))
        .unwrap_or_else(|| panic!("no certificate details: {certs:#?}"))
        .to_string()
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn https_proxy_gets_and_renews_certificates_from_pebble() {
    host(&[
        "sh",
        "-c",
        &format!("vmctl rm {ACME_VM} >/dev/null 2>&1; true"),
    ]);
    let _cleanup = AcmeCleanup;
    let dev = DevHost::current().unwrap();
    let local: PathBuf =
        std::env::temp_dir().join(format!("https-e2e-acme-{}", std::process::id()));
    make_certificates(&local);
    for f in ["ca.pem", "pebble-cert.pem", "pebble-key.pem"] {
        dev.copy_in(&local.join(f), &format!("{TLS_DIR}/{f}"))
            .unwrap();
    }
    std::fs::remove_dir_all(&local).ok();
    for bin in ["pebble", "pebble-challtestsrv"] {
        dev.copy_in(
            &Path::new("/usr/bin").join(bin),
            &format!("/usr/local/bin/{bin}"),
        )
        .unwrap_or_else(|e| panic!("{bin} (Debian package pebble, `cargo xtask deps`): {e}"));
        host(&["chmod", "0755", &format!("/usr/local/bin/{bin}")]).ok();
    }
    // Pebble: its directory on 127.0.0.1:14000, HTTP-01 checks on port 80,
    // names resolved by the DNS stub (everything is 127.0.0.1), leaf
    // certificates valid for 60 s.
    host(&[
        "sh",
        "-c",
        &format!(
            "cat > {TLS_DIR}/pebble.json <<'EOF'\n\
             {{\"pebble\": {{\"listenAddress\": \"127.0.0.1:14000\", \
             \"managementListenAddress\": \"127.0.0.1:15000\", \
             \"certificate\": \"{TLS_DIR}/pebble-cert.pem\", \
             \"privateKey\": \"{TLS_DIR}/pebble-key.pem\", \
             \"httpPort\": 80, \"tlsPort\": 443, \"ocspResponderURL\": \"\", \
             \"externalAccountBindingRequired\": false, \
             \"certificateValidityPeriod\": 60}}}}\nEOF"
        ),
    ])
    .ok();
    host(&[
        "systemd-run",
        "--unit=pebble-dns",
        "/usr/local/bin/pebble-challtestsrv",
        "-defaultIPv4",
        "127.0.0.1",
        // No AAAA answers: Pebble would try [::1] first.
        "-defaultIPv6",
        "",
        "-dns01",
        "127.0.0.1:8053",
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-management",
        "127.0.0.1:8055",
    ])
    .ok();
    host(&[
        "systemd-run",
        "--unit=pebble",
        "-E",
        "PEBBLE_VA_NOSLEEP=1",
        "/usr/local/bin/pebble",
        "-config",
        &format!("{TLS_DIR}/pebble.json"),
        "-dnsserver",
        "127.0.0.1:8053",
    ])
    .ok();
    host(&[
        "sh",
        "-c",
        &format!(
            "printf '[HTTPS]\\nDomain={DOMAIN}\\nAcmeDirectory=https://127.0.0.1:14000/dir\\n\
             AcmeRootCA={TLS_DIR}/ca.pem\\n\
             AcmeRenewCheckSec=5\\n' > /etc/vmctl/https.conf"
        ),
    ])
    .ok();
    // A VM vmctld knows (the proxy orders certificates only for those);
    // it need not run for its login page to be served.
    host(&["vmctl", "create", ACME_VM, "--network", "none"]).ok();
    host(&[
        "systemctl",
        "start",
        "vmctl-https.socket",
        "vmctl-https-http.socket",
    ])
    .ok();

    // Pebble's root, which signs what it issues (made at its start).
    let mut root = Run {
        code: None,
        stdout: String::new(),
        stderr: String::new(),
    };
    for _ in 0..30 {
        root = host(&[
            "curl",
            "-sS",
            "--cacert",
            &format!("{TLS_DIR}/ca.pem"),
            "-o",
            &format!("{TLS_DIR}/pebble-root.pem"),
            "https://127.0.0.1:15000/roots/0",
        ]);
        if root.code == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    root.ok();
    let pebble_root = format!("{TLS_DIR}/pebble-root.pem");

    // The first request orders the certificate; the page comes over it.
    let first = served_certificate(ACME_VM, &pebble_root);
    assert_eq!(first.code, Some(0), "{first:#?}");
    assert!(first.stdout.contains("Issuer:"), "{first:#?}");
    assert!(first.stdout.contains("Pebble"), "not Pebble's: {first:#?}");
    let first_start = start_date(&first);
    let stored = host(&[
        "stat",
        "-c",
        "%a %U",
        &format!("/var/lib/vmctl-https/certs/{ACME_VM}.{DOMAIN}.key"),
    ])
    .ok();
    assert_eq!(stored.stdout.trim(), "600 vmctl-https", "{stored:#?}");
    let pid = host(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "vmctl-https.service",
    ])
    .ok()
    .stdout;

    // Renewal: within the last third of 60 s, checked every 5 s; a new
    // certificate (a later start date) from the same process.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let renewed = loop {
        std::thread::sleep(Duration::from_secs(5));
        let now = served_certificate(ACME_VM, &pebble_root);
        assert_eq!(now.code, Some(0), "{now:#?}");
        if start_date(&now) != first_start {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never renewed: {now:#?}"
        );
    };
    println!("renewed: {} -> {}", first_start, start_date(&renewed));
    let pid_after = host(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "vmctl-https.service",
    ])
    .ok()
    .stdout;
    assert_eq!(pid, pid_after, "the proxy restarted");
    host(&["vmctl", "rm", ACME_VM]).ok();
}
