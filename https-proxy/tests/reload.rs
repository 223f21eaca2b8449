//! A user-provided certificate is replaced without a restart: the files
//! are rotated, the process gets SIGHUP (what `systemctl reload
//! vmctl-https` sends), and a new connection is served the new
//! certificate while a connection made before keeps working. A pair that
//! does not load leaves the old certificate in place. Its own test binary:
//! the SIGHUP goes to this whole process.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmctl_https::{
    config::Config,
    gateway::{GatewayError, Login},
    proxy::Vmctld,
    route::Route,
    server::Listeners,
};

/// vmctld knowing one public VM, `pub`, on `port`.
struct OneVm(u16);

impl Vmctld for OneVm {
    fn resolve_route<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Route>, GatewayError>> + Send + 'a>> {
        let route = (name == "pub").then(|| Route {
            name: name.to_string(),
            ipv4: Some(Ipv4Addr::LOCALHOST),
            port: self.0,
            owner_uid: 1000,
            shared_uids: Vec::new(),
            public: true,
            state: "running".into(),
        });
        Box::pin(async move { Ok(route) })
    }
    fn redeem_login_token<'a>(
        &'a self,
        _token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Login>, GatewayError>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }
}

/// A backend answering every request with `ok`.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A self-signed certificate for `*.vm.test` with common name `cn`.
fn certificate(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["*.vm.test".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A TLS connection to `pub.vm.test` at `addr` that accepts any
/// certificate and reports the one it was served.
async fn connect(
    addr: SocketAddr,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("pub.vm.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    (stream, leaf.into_owned())
}

/// One request on `stream`: the status line and body of the answer.
async fn get(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: pub.vm.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    format!(
        "{} {}",
        text.lines().next().unwrap_or(""),
        text.rsplit("\r\n").next().unwrap_or("")
    )
}

fn pem_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_rotated_files_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old_cert, old_key) = certificate("old");
    let write = |cert: &str, key: &str| {
        // Rotated the way tools do it: new files renamed into place.
        for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
            let tmp = dir.path().join(format!("{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        }
    };
    write(&old_cert, &old_key);
    let text = format!(
        "[HTTPS]\nDomain=vm.test\nCertificateFile={0}/cert.pem\nKeyFile={0}/key.pem\n",
        dir.path().display()
    );
    let config = Config::parse(&text, Path::new("https.conf")).unwrap();
    let backend = backend().await;
    let server =
        vmctl_https::build_with(config, dir.path(), Arc::new(OneVm(backend.port()))).unwrap();
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let https = listeners.https.local_addr().unwrap();
    tokio::spawn(vmctl_https::run(server, listeners));

    let (mut before, served) = connect(https).await;
    assert_eq!(served, pem_der(&old_cert));
    assert_eq!(get(&mut before).await, "HTTP/1.1 200 OK ok");

    // A key that does not belong to the certificate: refused, the old
    // pair stays.
    let (new_cert, new_key) = certificate("new");
    write(&new_cert, &old_key);
    hangup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, served) = connect(https).await;
    assert_eq!(
        served,
        pem_der(&old_cert),
        "a bad pair replaced the good one"
    );

    // The new pair: served to new connections within a moment.
    write(&new_cert, &new_key);
    hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = loop {
        let (stream, served) = connect(https).await;
        if served == pem_der(&new_cert) {
            break stream;
        }
        assert!(Instant::now() < deadline, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(get(&mut after).await, "HTTP/1.1 200 OK ok");
    // The connection made before the reload still works, with its
    // certificate.
    assert_eq!(
        before.get_ref().1.peer_certificates().unwrap()[0],
        pem_der(&old_cert)
    );
    assert_eq!(get(&mut before).await, "HTTP/1.1 200 OK ok");
}

/// Accepts any server certificate (the test reads which one it got).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
