//! Certificates from a real ACME server: Debian's Pebble and its DNS stub
//! (`pebble-challtestsrv`, every name is 127.0.0.1) on loopback, the
//! proxy answering HTTP-01 on its plain port. The first TLS connection to
//! a known VM name gets a certificate Pebble issued; Pebble's 60-second
//! certificates are renewed in the background and the new one is served
//! by the same server. vmctld is a table here. Skipped, loudly, where
//! Pebble is not installed (`cargo xtask deps` installs it).

use std::{
    collections::HashMap,
    future::Future,
    net::Ipv4Addr,
    path::Path,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use vmctl_https::{
    config::Config,
    gateway::{GatewayError, Login},
    proxy::Vmctld,
    route::Route,
    server::Listeners,
};

struct Table(HashMap<String, Route>);

impl Vmctld for Table {
    fn resolve_route<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Route>, GatewayError>> + Send + 'a>> {
        Box::pin(async move { Ok(self.0.get(name).cloned()) })
    }
    fn redeem_login_token<'a>(
        &'a self,
        _token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Login>, GatewayError>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }
}

/// Kills its child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The validity of the leaf certificate the proxy serves for `host`.
async fn served_not_before(port: u16, host: &str, root: &[u8]) -> x509_parser::time::ASN1Time {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(host.to_string().try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake verified against Pebble's root");
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let issuer = cert.issuer().to_string();
    assert!(issuer.contains("Pebble"), "issued by {issuer}");
    cert.validity().not_before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_on_first_use_and_renewal_needs_no_restart() {
    if !Path::new("/usr/bin/pebble").exists() {
        eprintln!("SKIPPED: /usr/bin/pebble is missing (Debian package pebble; cargo xtask deps)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA for Pebble's own HTTPS (its directory on 127.0.0.1).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Names differ from the leaf's: a leaf whose issuer is its own subject
    // is taken for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vmctl test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("pebble-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(d.join("pebble-key.pem"), key.serialize_pem()).unwrap();

    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let https_port = listeners.https.local_addr().unwrap().port();
    let http_port = listeners
        .http
        .as_ref()
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (acme_port, mgmt_port, dns_port, dns_mgmt) =
        (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        d.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}",
            "managementListenAddress": "127.0.0.1:{mgmt_port}",
            "certificate": "{d}/pebble-cert.pem", "privateKey": "{d}/pebble-key.pem",
            "httpPort": {http_port}, "tlsPort": {https_port}, "ocspResponderURL": "",
            "externalAccountBindingRequired": false, "certificateValidityPeriod": 60}}}}"#,
            d = d.display()
        ),
    )
    .unwrap();
    let _dns = Reaped(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _pebble = Reaped(
        Command::new("pebble")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .arg("-config")
            .arg(d.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let text = format!(
        "[HTTPS]\nDomain=vm.test\nAcmeDirectory=https://127.0.0.1:{acme_port}/dir\n\
         AcmeRootCA={}/ca.pem\nAcmeRenewCheckSec=2\n",
        d.display()
    );
    let config = Config::parse(&text, Path::new("https.conf")).unwrap();
    let route = Route {
        name: "site".into(),
        ipv4: Some(Ipv4Addr::LOCALHOST),
        port: 9,
        owner_uid: 1000,
        shared_uids: Vec::new(),
        public: false,
        state: "running".into(),
    };
    let table = Table([("site".to_string(), route)].into_iter().collect());
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    let server = vmctl_https::build_with(config, &state, Arc::new(table)).unwrap();
    tokio::spawn(vmctl_https::run(server, listeners));

    // Pebble's root (made at its start) signs what it issues.
    let deadline = Instant::now() + Duration::from_secs(20);
    let root = loop {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(d.join("ca.pem"))
            .arg(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
            .output()
            .unwrap();
        if out.status.success() && out.stdout.starts_with(b"-----BEGIN") {
            break out.stdout;
        }
        assert!(Instant::now() < deadline, "Pebble did not come up: {out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let first = served_not_before(https_port, "site.vm.test", &root).await;
    for f in ["site.vm.test.crt", "site.vm.test.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("certs").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // A name vmctld does not know gets no order (and so no certificate).
    let unknown = tokio::net::TcpStream::connect(("127.0.0.1", https_port))
        .await
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let insecure = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(insecure))
        .connect("stranger.vm.test".try_into().unwrap(), unknown)
        .await;
    assert!(refused.is_err());
    assert!(!state.join("certs/stranger.vm.test.crt").exists());

    // Renewal in the last third of 60 s, from the same running server.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = served_not_before(https_port, "site.vm.test", &root).await;
        if now != first {
            println!("renewed: not before {first} -> {now}");
            break;
        }
        assert!(Instant::now() < deadline, "never renewed");
    }
}
