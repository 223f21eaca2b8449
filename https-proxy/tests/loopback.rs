//! The proxy on loopback with real TLS, real HTTP/1.1 and HTTP/2 clients
//! (curl, and the h2 crate for a rapid-reset burst) and a real backend
//! (hyper, echoing the headers it got). vmctld is a table here (the e2e
//! test `tests/tests/https_proxy.rs` uses the real one); everything the
//! proxy decides from its answers is checked: the access matrix, the
//! error pages, the headers, and that bad clients stay bounded while
//! another client keeps getting answers.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    pin::Pin,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use vmctl_https::{
    config::Config,
    gateway::{GatewayError, Login},
    proxy::Vmctld,
    route::Route,
    server::Listeners,
};

/// vmctld as a table.
struct Table {
    routes: HashMap<String, Route>,
    tokens: Mutex<HashMap<String, Login>>,
}

impl Vmctld for Table {
    fn resolve_route<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Route>, GatewayError>> + Send + 'a>> {
        Box::pin(async move { Ok(self.routes.get(name).cloned()) })
    }
    fn redeem_login_token<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Login>, GatewayError>> + Send + 'a>> {
        Box::pin(async move { Ok(self.tokens.lock().unwrap().remove(token)) })
    }
}

/// A backend answering every request with its method, path and headers.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    if req.headers().contains_key(hyper::header::UPGRADE) {
                        // Switch protocols, then echo raw bytes back.
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let io = TokioIo::new(upgrade.await.unwrap());
                            let (mut r, mut w) = tokio::io::split(io);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                        let resp = Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .body(Full::new(bytes::Bytes::new()))
                            .unwrap();
                        return Ok::<_, Infallible>(resp);
                    }
                    let mut body = format!("{} {}\n", req.method(), req.uri());
                    for (name, value) in req.headers() {
                        body.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn route(name: &str, port: u16, owner_uid: u32, public: bool, state: &str) -> (String, Route) {
    (
        name.to_string(),
        Route {
            name: name.to_string(),
            ipv4: Some(Ipv4Addr::LOCALHOST),
            port,
            owner_uid,
            shared_uids: Vec::new(),
            public,
            state: state.to_string(),
        },
    )
}

struct Proxy {
    https: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// curl against the proxy: every `*.vm.test` name on its ports;
    /// `-D -` puts the head before the body.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-D", "-", "--cacert"])
            .arg(self.dir.path().join("cert.pem"));
        for name in ["priv", "pub", "stopped", "dead", "nope", "shared"] {
            cmd.arg("--resolve")
                .arg(format!("{name}.vm.test:443:{}", self.https.ip()))
                .arg("--connect-to")
                .arg(format!(
                    "{name}.vm.test:443:127.0.0.1:{}",
                    self.https.port()
                ))
                .arg("--connect-to")
                .arg(format!("{name}.vm.test:80:127.0.0.1:{}", self.http.port()));
        }
        let out = cmd.args(args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status: {text}"));
        (code, text)
    }
}

async fn start(extra: &str) -> Proxy {
    let backend = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["*.vm.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let text = format!(
        "[HTTPS]\nDomain=vm.test\nCertificateFile={}/cert.pem\nKeyFile={}/key.pem\n{extra}",
        dir.path().display(),
        dir.path().display()
    );
    let config = Config::parse(&text, Path::new("https.conf")).unwrap();
    // A port nothing listens on: bound, then closed.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let table = Table {
        routes: [
            route("priv", backend.port(), 1000, false, "running"),
            route("pub", backend.port(), 1000, true, "running"),
            route("stopped", backend.port(), 1000, false, "stopped"),
            route("dead", dead_port, 1000, true, "running"),
            {
                let (name, mut shared) = route("shared", backend.port(), 1000, false, "running");
                shared.shared_uids = vec![1001];
                (name, shared)
            },
        ]
        .into_iter()
        .collect(),
        tokens: Mutex::new(
            [("a11ce0", 1000, "alice"), ("b0b0", 1001, "bob")]
                .into_iter()
                .map(|(t, uid, user)| {
                    (
                        t.to_string(),
                        Login {
                            uid,
                            user: user.to_string(),
                        },
                    )
                })
                .collect(),
        ),
    };
    let server = vmctl_https::build_with(config, dir.path(), Arc::new(table)).unwrap();
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let https = listeners.https.local_addr().unwrap();
    let http = listeners.http.as_ref().unwrap().local_addr().unwrap();
    tokio::spawn(vmctl_https::run(server, listeners));
    Proxy { https, http, dir }
}

/// The body of a `curl -D -` answer.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_pages_and_headers() {
    let p = Arc::new(start("").await);
    let p2 = p.clone();
    blocking(move || {
        let p = p2;
        let (code, nope) = p.curl(&["https://nope.vm.test/"]);
        assert_eq!(code, 404, "{nope}");
        let (code, text) = p.curl(&["http://priv.vm.test/x?y=1"]);
        assert_eq!(code, 308, "{text}");
        assert!(
            text.contains("location: https://priv.vm.test/x?y=1"),
            "{text}"
        );
        let (code, _) = p.curl(&["http://priv.vm.test/.well-known/acme-challenge/unknown"]);
        assert_eq!(code, 404);
        // A private VM without a session: the page of a missing name (a
        // stranger cannot tell them apart), saying how an owner logs in.
        let (code, text) = p.curl(&["https://priv.vm.test/"]);
        assert_eq!(code, 404, "{text}");
        assert!(text.contains("vmctl login priv"), "{text}");
        assert_eq!(body(&text), body(&nope).replace("nope", "priv"));

        // alice opens her link: a page that asks first, unframeable, and
        // the token is not used up by opening it.
        let jar = p.dir.path().join("alice.jar");
        let jar = jar.to_str().unwrap();
        for _ in 0..2 {
            let (code, text) = p.curl(&["https://priv.vm.test/.vmctl/login?token=a11ce0"]);
            assert_eq!(code, 200, "{text}");
            assert!(!text.contains("set-cookie"), "{text}");
            assert!(text.contains("x-frame-options: DENY"), "{text}");
            assert!(text.contains("frame-ancestors 'none'"), "{text}");
            assert!(
                text.contains(r#"<form method="post" action="/.vmctl/login">"#)
                    && text.contains(r#"name="token" value="a11ce0""#),
                "{text}"
            );
        }
        let (code, text) = p.curl(&["https://priv.vm.test/.vmctl/login?token=%22%3E%3Cx"]);
        assert_eq!(code, 403, "{text}");
        // A form sent from another site (login CSRF) is refused and does
        // not use the token up.
        for header in ["Origin: https://evil.test", "Sec-Fetch-Site: cross-site"] {
            let (code, text) = p.curl(&[
                "-c",
                jar,
                "-H",
                header,
                "--data",
                "token=a11ce0",
                "https://priv.vm.test/.vmctl/login",
            ]);
            assert_eq!(code, 403, "{header}: {text}");
            assert!(text.contains("sent from another site"), "{text}");
        }
        // Confirmed from the page itself: the session; the token works once.
        let (code, text) = p.curl(&[
            "-c",
            jar,
            "-H",
            "Origin: https://priv.vm.test",
            "--data",
            "token=a11ce0",
            "https://priv.vm.test/.vmctl/login",
        ]);
        assert_eq!(code, 303, "{text}");
        assert!(text.contains("Domain=vm.test; Path=/; Max-Age="), "{text}");
        assert!(text.contains("HttpOnly; Secure; SameSite=Lax"), "{text}");
        let (code, _) = p.curl(&[
            "--data",
            "token=a11ce0",
            "https://priv.vm.test/.vmctl/login",
        ]);
        assert_eq!(code, 403);

        // Owner: through, told who, spoofed headers gone, over HTTP/2.
        let (code, text) = p.curl(&[
            "-b",
            jar,
            "-H",
            "X-VmCtl-User: root",
            "-H",
            "x-vmctl-uid: 0",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "Cookie: theme=dark",
            "https://priv.vm.test/p?q=1",
        ]);
        assert_eq!(code, 200, "{text}");
        assert!(text.starts_with("HTTP/2 200"), "{text}");
        assert!(text.contains("\nGET /p?q=1\n"), "{text}");
        assert!(text.contains("\nx-vmctl-user: alice\n"), "{text}");
        assert!(text.contains("\nx-vmctl-uid: 1000\n"), "{text}");
        assert!(text.contains("\nx-forwarded-for: 127.0.0.1\n"), "{text}");
        assert!(text.contains("\nx-forwarded-proto: https\n"), "{text}");
        assert!(
            text.contains("\nx-forwarded-host: priv.vm.test\n"),
            "{text}"
        );
        assert!(
            !text.contains("root") && !text.contains("6.6.6.6"),
            "{text}"
        );
        assert!(
            !text.contains("vmctl_session=v1"),
            "the VM saw the session: {text}"
        );
        assert!(text.contains("theme=dark"), "{text}");

        // Another user: the same 404 as a missing name.
        let bob = p.dir.path().join("bob.jar");
        let bob = bob.to_str().unwrap();
        let (code, _) = p.curl(&[
            "-c",
            bob,
            "--data",
            "token=b0b0",
            "https://priv.vm.test/.vmctl/login",
        ]);
        assert_eq!(code, 303);
        let (code, text) = p.curl(&["-b", bob, "https://priv.vm.test/"]);
        assert_eq!(code, 404, "{text}");
        assert_eq!(body(&text), body(&nope).replace("nope", "priv"));

        // A private VM shared with bob: bob is let in and named to it;
        // alice, its owner, still is.
        let (code, text) = p.curl(&["-b", bob, "https://shared.vm.test/"]);
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("\nx-vmctl-user: bob\n"), "{text}");
        let (code, _) = p.curl(&["-b", jar, "https://shared.vm.test/"]);
        assert_eq!(code, 200);

        // Public: anyone; with a session the VM is told who.
        let (code, text) = p.curl(&["https://pub.vm.test/"]);
        assert_eq!(code, 200, "{text}");
        assert!(!text.contains("x-vmctl-user"), "{text}");
        let (_, text) = p.curl(&["-b", bob, "https://pub.vm.test/"]);
        assert!(text.contains("\nx-vmctl-user: bob\n"), "{text}");

        // Stopped 503 naming the command, nobody listening 502.
        let (code, text) = p.curl(&["-b", jar, "https://stopped.vm.test/"]);
        assert_eq!(code, 503, "{text}");
        assert!(text.contains("vmctl start stopped"), "{text}");
        let (code, text) = p.curl(&["https://dead.vm.test/"]);
        assert_eq!(code, 502, "{text}");

        // A Host that is not the TLS name: 421.
        let (code, _) = p.curl(&[
            "--http1.1",
            "-H",
            "Host: pub.vm.test",
            "https://priv.vm.test/",
        ]);
        assert_eq!(code, 421);

        // Oversized headers: refused (431, or the connection closed while
        // curl still sends), never forwarded.
        let big = format!("X-Big: {}", "a".repeat(40_000));
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--http1.1",
                "-k",
                "-H",
                &big,
            ])
            .arg("--connect-to")
            .arg(format!("pub.vm.test:443:127.0.0.1:{}", p.https.port()))
            .arg("https://pub.vm.test/")
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            code == "431" || (!out.status.success() && code == "000"),
            "{out:?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_are_bounded() {
    let p = Arc::new(start("HeaderTimeoutSec=2\nMaxConnectionsPerIP=8\n").await);
    let p2 = p.clone();
    blocking(move || {
        let p = p2;
        // 20 connections from 127.0.0.1, each sending half a request head
        // and then nothing (slowloris), on both ports.
        let started = Instant::now();
        let mut slow = Vec::new();
        for i in 0..20 {
            let addr = if i % 2 == 0 { p.https } else { p.http };
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(if i % 2 == 0 {
                b"\x16\x03\x01\x02\x00"
            } else {
                b"GET / HTTP/1.1\r\nHost: pub.vm.test\r\n"
            });
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            slow.push(s);
        }
        // Another client (another address) is answered meanwhile.
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--interface",
                "127.0.0.2",
                "-k",
            ])
            .arg("--connect-to")
            .arg(format!("pub.vm.test:443:127.0.0.1:{}", p.https.port()))
            .arg("https://pub.vm.test/")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
        // Every slow connection is closed: 12 at once (over the cap of 8),
        // the others when the 2 s header timeout ends.
        let mut closed_at = Vec::new();
        for mut s in slow {
            let mut buf = [0u8; 512];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            closed_at.push(started.elapsed());
        }
        let waited = closed_at.iter().max().unwrap();
        println!("slow connections closed after {closed_at:?}");
        assert!(*waited < Duration::from_secs(10), "{closed_at:?}");
    });
}

/// A TLS client trusting the proxy's test certificate, with `alpn`.
async fn tls_client(
    p: &Proxy,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let cert = std::fs::read(p.dir.path().join("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&cert) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(p.https).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("pub.vm.test".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_bridged_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = start("").await;
    let mut tls = tls_client(&p, b"http/1.1").await;
    tls.write_all(
        b"GET /chat HTTP/1.1\r\nHost: pub.vm.test\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nX-VmCtl-User: root\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"ping"[..], &[0u8, 255, 1, 2][..], &vec![7u8; 100_000][..]] {
        tls.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_burst_is_cut_short() {
    let p = start("").await;
    let tls = tls_client(&p, b"h2").await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    let mut cut = None;
    for _ in 0..5000 {
        let req = http::Request::get("https://pub.vm.test/").body(()).unwrap();
        let ready = match client.ready().await {
            Ok(c) => c,
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        };
        client = ready;
        match client.send_request(req, false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        }
    }
    let conn_end = tokio::time::timeout(Duration::from_secs(10), conn).await;
    println!("rapid reset: {sent} streams sent and reset; cut: {cut:?}; connection: {conn_end:?}");
    // hyper (h2) closes a connection whose client resets streams faster
    // than they are served (GOAWAY ENHANCE_YOUR_CALM).
    assert!(
        cut.is_some() || matches!(conn_end, Ok(Ok(Err(_)))),
        "the burst of {sent} resets was never cut: {cut:?} {conn_end:?}"
    );
    // And the proxy answers another client right after.
    let (code, _) = blocking(move || p.curl(&["https://pub.vm.test/"]));
    assert_eq!(code, 200);
}
