//! The listening sockets and the connections on them: TLS (with a
//! certificate ordered on first use when ACME is configured), HTTP/1.1 and
//! HTTP/2 with their limits, and the connection caps.

use std::{
    convert::Infallible,
    net::SocketAddr,
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{server::Acceptor, ServerConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::LazyConfigAcceptor;

use crate::{
    acme::Issuer,
    config::Config,
    config::TlsSource,
    limits::{ConnLimiter, Permit},
    proxy::{ConnInfo, Proxy},
    tls::{Cert, CertStore},
};

/// The name systemd gives the HTTPS socket (`FileDescriptorName=`).
pub const HTTPS_FD_NAME: &str = "https";
/// The name of the plain HTTP socket.
pub const HTTP_FD_NAME: &str = "http";

/// How long ordering a certificate may hold a first connection.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

/// HTTP/2 streams a client may reset before the proxy has accepted them
/// (the "rapid reset" attack, CVE-2023-44487) before the connection is
/// closed.
const MAX_PENDING_RESETS: usize = 20;

/// The two listening sockets.
#[derive(Debug)]
pub struct Listeners {
    /// Port 443.
    pub https: std::net::TcpListener,
    /// Port 80 (redirects and ACME challenges), if configured.
    pub http: Option<std::net::TcpListener>,
}

impl Listeners {
    /// The sockets passed by systemd, told apart by their names; `None`
    /// when the process was not socket-activated.
    pub fn from_systemd() -> anyhow::Result<Option<Self>> {
        let fds = sd_notify::listen_fds_with_names(true)
            .context("invalid socket activation environment")?;
        if fds.len() == 0 {
            return Ok(None);
        }
        let (mut https, mut http) = (None, None);
        for (fd, name) in fds {
            // SAFETY: systemd passed this descriptor to this process
            // (LISTEN_PID matched) and nothing else in the process owns
            // it; it is taken exactly once here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let listener = std::net::TcpListener::from(owned);
            listener
                .local_addr()
                .with_context(|| format!("socket {name:?} from systemd is not a TCP socket"))?;
            match name.as_str() {
                HTTPS_FD_NAME => https = Some(listener),
                HTTP_FD_NAME => http = Some(listener),
                other => bail!(
                    "systemd passed a socket named {other:?}; vmctl-https.socket names its \
                     sockets with FileDescriptorName={HTTPS_FD_NAME} or {HTTP_FD_NAME}"
                ),
            }
        }
        let https =
            https.context("no socket named \"https\" from systemd (FileDescriptorName=https)")?;
        Ok(Some(Self { https, http }))
    }

    /// Binds the given addresses (running without systemd).
    pub fn bind(https: SocketAddr, http: Option<SocketAddr>) -> anyhow::Result<Self> {
        let bind = |a: SocketAddr| {
            std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a}"))
        };
        Ok(Self {
            https: bind(https)?,
            http: http.map(bind).transpose()?,
        })
    }
}

/// Everything the connections share.
pub struct Server {
    /// The request logic.
    pub proxy: Arc<Proxy>,
    /// TLS settings (certificates by SNI).
    pub tls: Arc<ServerConfig>,
    /// The certificates `tls` serves.
    pub certs: Arc<CertStore>,
    /// Orders certificates on first use (ACME only).
    pub issuer: Option<Arc<Issuer>>,
    /// Connection caps.
    pub limiter: Arc<ConnLimiter>,
    /// Limits from the configuration.
    pub config: Config,
}

impl Server {
    /// Serves both listeners until the process ends: this task accepts,
    /// one worker thread per core serves the connections.
    pub async fn run(self: Arc<Self>, listeners: Listeners) -> anyhow::Result<()> {
        let workers = Arc::new(Workers::start(&self)?);
        let https = to_tokio(listeners.https)?;
        let http = listeners.http.map(to_tokio).transpose()?;
        let plain = http.map(|l| tokio::spawn(self.clone().accept_loop(l, false, workers.clone())));
        self.accept_loop(https, true, workers).await;
        if let Some(plain) = plain {
            plain.abort();
        }
        Ok(())
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tls: bool, workers: Arc<Workers>) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait for some to be freed.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(permit) = self.limiter.admit(peer.ip()) else {
                tracing::debug!("{peer}: over the connection cap, closed");
                continue;
            };
            match tcp.into_std() {
                Ok(tcp) => workers.hand_over(Accepted {
                    tcp,
                    peer,
                    tls,
                    permit,
                }),
                Err(e) => tracing::warn!("{peer}: {e}"),
            }
        }
    }

    /// Reads the configured certificate and key files again and serves
    /// them from the next handshake on (`systemctl reload vmctl-https`,
    /// SIGHUP); `false` with ACME, whose certificates renew themselves. A
    /// pair that does not load is an error and the old one stays.
    pub fn reload_certificate(&self) -> anyhow::Result<bool> {
        let TlsSource::Files { certificate, key } = &self.config.tls else {
            return Ok(false);
        };
        self.certs
            .replace_fixed(Cert::from_files(certificate, key)?);
        Ok(true)
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .max_buf_size(self.config.max_header_bytes.max(8192));
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(1024)
            .max_header_list_size(self.config.max_header_bytes as u32)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        b
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        tls: bool,
        _permit: Permit,
    ) -> anyhow::Result<()> {
        tcp.set_nodelay(true)?;
        if !tls {
            let info = ConnInfo {
                peer,
                sni_name: None,
                tls: false,
            };
            return self.serve(TokioIo::new(tcp), info).await;
        }
        let timeout = self.config.header_timeout;
        let start =
            tokio::time::timeout(timeout, LazyConfigAcceptor::new(Acceptor::default(), tcp))
                .await
                .context("TLS ClientHello timed out")?
                .context("TLS ClientHello")?;
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let sni_name = sni.as_deref().and_then(|s| self.proxy.vm_name(s));
        if let (Some(issuer), Some(host), Some(name)) = (&self.issuer, &sni, &sni_name) {
            // Only for names vmctld knows: a stranger's SNI must not make
            // the proxy order certificates.
            if self.proxy.is_known(name).await {
                match tokio::time::timeout(ISSUE_TIMEOUT, issuer.ensure(host)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("{e:#}"),
                    Err(_) => tracing::warn!("ordering a certificate for {host} timed out"),
                }
            }
        }
        let stream = tokio::time::timeout(timeout, start.into_stream(self.tls.clone()))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let info = ConnInfo {
            peer,
            sni_name,
            tls: true,
        };
        self.serve(TokioIo::new(stream), info).await
    }

    async fn serve<I>(&self, io: TokioIo<I>, info: ConnInfo) -> anyhow::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
        });
        self.builder()
            .serve_connection_with_upgrades(io, service)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// A connection accepted and admitted, on its way to a worker.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
    permit: Permit,
}

/// One thread per core, each with its own single-threaded runtime, taking
/// connections in turn. A connection, its requests and the keepalive
/// connections to VMs they use (see [`crate::proxy`]) stay on one thread:
/// no work stealing and no cross-thread wake-ups per request, the way
/// nginx's worker processes run. `cargo xtask bench --https` measured
/// tokio's work-stealing runtime at 2 workers doing markedly worse here
/// (see https-proxy/README.md).
struct Workers {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts one worker per available core; they end when `Workers` is
    /// dropped (their queues close).
    fn start(server: &Arc<Server>) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let queues = (0..cores)
            .map(|i| Self::spawn(server.clone(), i))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    fn spawn(server: Arc<Server>, i: usize) -> anyhow::Result<mpsc::UnboundedSender<Accepted>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Accepted>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("worker runtime")?;
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(a) = rx.recv().await {
                        let server = server.clone();
                        tokio::spawn(async move {
                            let peer = a.peer;
                            let result = match TcpStream::from_std(a.tcp) {
                                Ok(tcp) => server.connection(tcp, peer, a.tls, a.permit).await,
                                Err(e) => Err(e.into()),
                            };
                            if let Err(e) = result {
                                tracing::debug!("{peer}: {e:#}");
                            }
                        });
                    }
                })
            })
            .context("worker thread")?;
        Ok(tx)
    }

    /// Gives `a` to the next worker in turn.
    fn hand_over(&self, a: Accepted) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        if self.queues[i].send(a).is_err() {
            tracing::error!("worker {i} has ended; a connection was dropped");
        }
    }
}

fn to_tokio(l: std::net::TcpListener) -> anyhow::Result<TcpListener> {
    l.set_nonblocking(true)?;
    Ok(TcpListener::from_std(l)?)
}
