//! `vmctl-guest-agent`: serves the vmctl agent protocol on vsock port 1024
//! inside a guest (see `PROTOCOL.md`), and says hello to the host when the
//! guest is up.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};
use vmctl_guest::protocol::{write_frame, Control, Frame};
use vmctl_guest::{agent, AGENT_PORT, HELLO_PORT, HOST_CID};

#[derive(Parser)]
#[command(version, about = "The vmctl guest agent")]
struct Args {
    /// Listen on this Unix socket instead of vsock (tests, debugging).
    #[arg(long, value_name = "PATH")]
    listen_unix: Option<PathBuf>,
    /// The vsock port to listen on.
    #[arg(long, default_value_t = AGENT_PORT)]
    port: u32,
    /// The host vsock port to say hello to; 0 disables the hello.
    #[arg(long, default_value_t = HELLO_PORT)]
    hello_port: u32,
}

fn main() -> Result<()> {
    // In an image without an init (an imported container), the kernel
    // starts the agent as /sbin/init: before any thread exists.
    if vmctl_guest::init::is_pid1() {
        vmctl_guest::init::run();
    }
    agent_main()
}

#[tokio::main]
async fn agent_main() -> Result<()> {
    let args = Args::parse();
    init_logging();
    if let Some(path) = &args.listen_unix {
        return serve_unix(path).await;
    }
    let listener = VsockListener::bind(VsockAddr::new(libc::VMADDR_CID_ANY, args.port))
        .inspect_err(report_if_no_vsock)
        .with_context(|| format!("cannot listen on vsock port {}", args.port))?;
    tracing::info!("listening on vsock port {}", args.port);
    ready();
    if args.hello_port != 0 {
        tokio::spawn(say_hello(args.hello_port));
    }
    loop {
        match listener.accept().await {
            Ok((stream, peer)) if agent::peer_allowed(peer.cid()) => {
                tokio::spawn(agent::serve_connection(stream));
            }
            Ok((stream, peer)) => {
                tracing::warn!(
                    "refused a connection from vsock CID {} port {}: only the host (CID {HOST_CID}) may use the agent",
                    peer.cid(),
                    peer.port()
                );
                drop(stream);
            }
            Err(e) => {
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves on a Unix socket (tests, debugging) that only this agent's own
/// user can connect to: the socket is created mode 0600, and a peer with
/// another uid is refused all the same.
async fn serve_unix(path: &std::path::Path) -> Result<()> {
    use nix::sys::stat::{umask, Mode};
    let _ = std::fs::remove_file(path);
    // Set the mode at creation: a chmod after bind would leave a window.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    umask(old);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    ready();
    loop {
        let (stream, _) = listener.accept().await?;
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me => {
                tokio::spawn(agent::serve_connection(stream));
            }
            Ok(cred) => tracing::warn!("refused a connection from uid {}", cred.uid()),
            Err(e) => tracing::warn!("refused a connection: no peer credentials: {e}"),
        }
    }
}

/// Logs to stderr; under systemd (`JOURNAL_STREAM` set) without timestamps
/// or colours, since the journal adds its own. `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

/// What the agent puts in the kernel log when the guest has no vsock: the
/// launcher reads the serial console until the hello and fails the start
/// at once on this line, instead of waiting out its boot timeout.
const NO_VSOCK: &str = "vmctl-guest-agent: no vsock to the host";

/// Logs [`NO_VSOCK`] to the kernel log at error level (shown on the
/// console even with `quiet`) when `err` says the kernel has no vsock
/// (`EAFNOSUPPORT`) or no transport to the host (`ENODEV`: no
/// virtio-vsock driver or device).
fn report_if_no_vsock(err: &std::io::Error) {
    use std::io::Write;
    if !matches!(err.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENODEV)) {
        return;
    }
    tracing::error!("{NO_VSOCK}: {err}");
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        // One write(2) is one kernel log record: format first.
        let _ = kmsg.write_all(format!("<3>{NO_VSOCK}: {err}\n").as_bytes());
    }
}

fn ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Tells the host the guest is up; retried briefly, since the host may be
/// slow to listen. Failure is logged, not fatal: the agent still serves.
async fn say_hello(port: u32) {
    let hello = Frame::Control(Control::Hello(agent::hello()));
    for attempt in 1..=30 {
        match VsockStream::connect(VsockAddr::new(HOST_CID, port)).await {
            Ok(mut stream) => match write_frame(&mut stream, &hello).await {
                Ok(()) => {
                    tracing::info!("said hello to the host (port {port})");
                    return;
                }
                Err(e) => tracing::warn!("hello to host port {port} failed: {e}"),
            },
            Err(e) if attempt == 30 => {
                tracing::warn!("cannot reach host vsock port {port}: {e}; giving up")
            }
            Err(e) if attempt == 1 => report_if_no_vsock(&e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
