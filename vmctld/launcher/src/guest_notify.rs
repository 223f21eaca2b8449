//! Steps 4, 5 and 7: guest systemd's own sd_notify messages.
//!
//! systemd (PID 1 in the guest, ≥ 254; stream sockets ≥ 256) reads the
//! system credential `vmm.notify_socket` and sends its supervisor
//! sd_notify messages there: `READY=1` once boot is complete, `STATUS=`,
//! `X_SYSTEMD_UNIT_ACTIVE=`/`_INACTIVE=` per target, and as its last words
//! `X_SYSTEMD_SHUTDOWN=` and `EXIT_STATUS=` (see systemd(1), "Readiness
//! Protocol"; 257 was not seen sending `STOPPING=1`, which is handled all
//! the same). The launcher passes `vsock-stream:2:1026`; with hybrid vsock
//! each guest connection to host port 1026 arrives on the Unix socket
//! `<vsock socket>_1026`. sd_notify over a stream socket connects, writes
//! one message (newline-separated `KEY=VALUE` lines) and closes, so a
//! message is everything one connection sends before EOF.
//!
//! A guest whose systemd is too old never connects: nothing changes then,
//! readiness still comes from the guest agent's hello.
//!
//! Anything in the guest can connect to that port, so the messages are
//! untrusted: each connection has its own task, at most [`MAX_MESSAGE`]
//! bytes and [`DEADLINE`] in all; at most [`MAX_CONNECTIONS`] are read at
//! once (more are closed at once). Nothing from a message reaches the
//! unit's `STATUS=` (a guest `READY=1` sets the launcher's own
//! [`WAITING_FOR_AGENT`]), and what is logged is escaped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info};
use vmctl_vmm::{escape_log_text, Credential};

use crate::guest_port;
use crate::ratelimit::GuestWarnings;

/// The host vsock port guest systemd reports to.
pub const NOTIFY_PORT: u32 = 1026;

/// The host's vsock CID (`VMADDR_CID_HOST`).
const HOST_CID: u32 = 2;

/// A message is a few hundred bytes; anything beyond this is cut off.
pub const MAX_MESSAGE: u64 = 4096;

/// How long one connection may take in all.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Connections read at the same time.
pub const MAX_CONNECTIONS: usize = 16;

/// A message is complete at EOF, or after this long without more bytes.
/// Guest systemd 257 over vhost-device-vsock sends one write and then
/// waits for the host to close (no EOF reaches the Unix socket), and PID 1
/// is blocked meanwhile: keep this short, every message costs it.
const IDLE_END: Duration = Duration::from_millis(50);

/// The STATUS= the unit shows while guest systemd is up but the agent is
/// not (exec needs the agent, so the unit is not ready yet).
pub const WAITING_FOR_AGENT: &str = "Guest systemd is up; waiting for the guest agent";

/// The credential that makes guest systemd report to [`NOTIFY_PORT`].
pub fn credential() -> Credential {
    Credential {
        name: "vmm.notify_socket".into(),
        value: format!("vsock-stream:{HOST_CID}:{NOTIFY_PORT}"),
        binary: false,
    }
}

/// One sd_notify message from guest systemd: the fields the launcher acts
/// on, and the rest as they came.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    /// `READY=1`: the guest finished booting.
    pub ready: bool,
    /// `STOPPING=1`: the guest is shutting down.
    pub stopping: bool,
    /// `STATUS=`: a free-form status line.
    pub status: Option<String>,
    /// `X_SYSTEMD_SHUTDOWN=`: `poweroff`, `reboot`, `halt` or `kexec`.
    pub shutdown: Option<String>,
    /// `EXIT_STATUS=`: the exit status the guest shuts down with.
    pub exit_status: Option<String>,
    /// Every `KEY=VALUE` line, in order (also the ones above).
    pub fields: Vec<(String, String)>,
}

impl Message {
    /// Parses newline-separated `KEY=VALUE` lines; empty lines, lines
    /// without `=` and invalid UTF-8 are skipped, the last of a repeated
    /// key wins.
    pub fn parse(bytes: &[u8]) -> Message {
        let text = String::from_utf8_lossy(bytes);
        let mut msg = Message::default();
        for line in text.split('\n') {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if key.is_empty() || key.contains('\u{fffd}') {
                continue;
            }
            match key {
                "READY" => msg.ready = value == "1",
                "STOPPING" => msg.stopping = value == "1",
                "STATUS" => msg.status = Some(value.to_owned()),
                "X_SYSTEMD_SHUTDOWN" => msg.shutdown = Some(value.to_owned()),
                "EXIT_STATUS" => msg.exit_status = Some(value.to_owned()),
                _ => {}
            }
            msg.fields.push((key.to_owned(), value.to_owned()));
        }
        msg
    }

    /// Whether the message is about the guest going down.
    pub fn is_shutdown(&self) -> bool {
        self.stopping || self.shutdown.is_some() || self.exit_status.is_some()
    }

    /// A one-line summary of the shutdown fields, for the journal.
    fn describe_shutdown(&self) -> String {
        let mut parts = Vec::new();
        if self.stopping {
            parts.push("stopping".to_owned());
        }
        if let Some(kind) = &self.shutdown {
            parts.push(format!("shutdown: {kind}"));
        }
        if let Some(code) = &self.exit_status {
            parts.push(format!("exit status {code}"));
        }
        parts.join(", ")
    }
}

/// Who has reported ready, shared between the launcher's main flow and the
/// notify handler so that each STATUS= replaces only an older one: a guest
/// `READY=1` never overwrites `Running:`, and `Booting:` never overwrites
/// the guest's readiness.
#[derive(Debug, Clone, Default)]
pub struct AgentState(Arc<Mutex<Ready>>);

#[derive(Debug, Default)]
struct Ready {
    agent: bool,
    guest: bool,
    /// Guest systemd has sent at least one message (it speaks the
    /// protocol, so a missing READY=1 means it is still booting).
    reporting: bool,
}

impl AgentState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` (which reports the unit ready) and marks the agent ready,
    /// with no guest message handled in between.
    pub fn set_ready(&self, f: impl FnOnce()) {
        let mut ready = self.lock();
        f();
        ready.agent = true;
    }

    /// Runs `f` (which reports booting) unless guest systemd is already up.
    pub fn booting(&self, f: impl FnOnce()) {
        let ready = self.lock();
        if !ready.guest && !ready.agent {
            f();
        }
    }

    /// Whether guest systemd reports to the launcher but has not finished
    /// booting: logind may not watch the power button yet, so an ACPI
    /// press could be lost. A guest whose systemd never reports (older
    /// than 256) is not "booting" by this test.
    pub fn guest_still_booting(&self) -> bool {
        let ready = self.lock();
        ready.reporting && !ready.guest
    }

    fn guest_reporting(&self) {
        self.lock().reporting = true;
    }

    /// Marks guest systemd ready; runs `f` if the agent is not.
    fn guest_ready(&self, f: impl FnOnce()) {
        let mut ready = self.lock();
        ready.guest = true;
        if !ready.agent {
            f();
        }
    }
}

/// Accepts guest systemd's connections on `listener` for as long as the
/// launcher runs and acts on each message: `status` is called with the
/// STATUS= text for the unit when guest systemd is ready before the agent.
pub fn serve(listener: UnixListener, agent: AgentState, status: fn(&str)) {
    let warnings = GuestWarnings::new();
    let logged = warnings.clone();
    guest_port::serve(
        listener,
        "notify port",
        MAX_CONNECTIONS,
        warnings,
        move |stream, slot| {
            let agent = agent.clone();
            let warnings = logged.clone();
            async move {
                let result = read_message(stream).await;
                drop(slot);
                match result {
                    Ok(msg) => handle(&msg, &agent, status),
                    Err(e) => warnings.warn(|| format!("guest systemd notify connection: {e}")),
                }
            }
        },
    );
}

/// Reads one message: everything up to EOF, or up to [`IDLE_END`] of
/// silence after the first bytes, or what arrived by [`DEADLINE`].
async fn read_message(stream: UnixStream) -> std::io::Result<Message> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut stream = stream.take(MAX_MESSAGE);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let wait = if buf.is_empty() {
            deadline
        } else {
            deadline.min(tokio::time::Instant::now() + IDLE_END)
        };
        match tokio::time::timeout_at(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) if buf.is_empty() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no message within {} s", DEADLINE.as_secs()),
                ))
            }
            Err(_) => break,
        }
    }
    debug!("guest systemd notify message: {}", escape_log_text(&buf));
    Ok(Message::parse(&buf))
}

/// Logs `msg` and, for a `READY=1` before the agent's hello, updates the
/// unit's status through `status`.
fn handle(msg: &Message, agent: &AgentState, status: fn(&str)) {
    if let Some(text) = &msg.status {
        debug!("guest systemd: STATUS={}", escape_log_text(text.as_bytes()));
    }
    // X_SYSTEMD_* covers what 257 sends besides READY/STATUS/EXIT_STATUS:
    // HOSTNAME, MACHINE_ID, SIGNALS_LEVEL, UNIT_(IN)ACTIVE, SHUTDOWN.
    for (key, value) in &msg.fields {
        if key == "X_SYSTEMD_UNIT_ACTIVE" && value == "shutdown.target" {
            info!("guest systemd: shutting down (shutdown.target reached)");
        } else if key.starts_with("X_SYSTEMD_") {
            debug!(
                "guest systemd: {}={}",
                escape_log_text(key.as_bytes()),
                escape_log_text(value.as_bytes())
            );
        }
    }
    agent.guest_reporting();
    if msg.ready {
        info!("guest systemd reports READY=1 (boot complete)");
        agent.guest_ready(|| status(WAITING_FOR_AGENT));
    }
    if msg.is_shutdown() {
        info!(
            "guest systemd: {}",
            escape_log_text(msg.describe_shutdown().as_bytes())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn credential_is_systemds_vsock_stream_address() {
        let c = credential();
        assert_eq!(c.name, "vmm.notify_socket");
        assert_eq!(c.value, "vsock-stream:2:1026");
    }

    #[test]
    fn parses_ready_with_extension_fields() {
        let m = Message::parse(
            b"READY=1\nSTATUS=Startup finished in 1.2s.\nX_SYSTEMD_UNIT_ACTIVE=multi-user.target\n",
        );
        assert!(m.ready);
        assert!(!m.stopping);
        assert!(!m.is_shutdown());
        assert_eq!(m.status.as_deref(), Some("Startup finished in 1.2s."));
        assert_eq!(
            m.fields,
            [
                ("READY".into(), "1".into()),
                ("STATUS".into(), "Startup finished in 1.2s.".into()),
                ("X_SYSTEMD_UNIT_ACTIVE".into(), "multi-user.target".into()),
            ]
        );
    }

    #[test]
    fn parses_shutdown_messages() {
        let m = Message::parse(b"STOPPING=1\nX_SYSTEMD_SHUTDOWN=poweroff");
        assert!(m.stopping && m.is_shutdown());
        assert_eq!(m.shutdown.as_deref(), Some("poweroff"));
        assert_eq!(m.describe_shutdown(), "stopping, shutdown: poweroff");
        let m = Message::parse(b"EXIT_STATUS=0\n");
        assert!(!m.stopping && m.is_shutdown());
        assert_eq!(m.exit_status.as_deref(), Some("0"));
        assert_eq!(m.describe_shutdown(), "exit status 0");
    }

    #[test]
    fn skips_junk_and_keeps_values_with_equals() {
        let m = Message::parse(b"\n\nnoequals\n=x\nREADY=0\nSTATUS=a=b\r\n\xff\xfe=1\n");
        assert!(!m.ready, "READY=0 is not ready");
        assert_eq!(m.status.as_deref(), Some("a=b\r"));
        assert_eq!(m.fields.len(), 2, "{:?}", m.fields);
        assert_eq!(Message::parse(b""), Message::default());
    }

    static STATUS_CALLS: AtomicUsize = AtomicUsize::new(0);
    fn count_status(text: &str) {
        assert_eq!(text, WAITING_FOR_AGENT);
        STATUS_CALLS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn ready_before_the_agent_updates_the_status_once_only_then() {
        let agent = AgentState::default();
        let ready = Message::parse(b"READY=1\n");
        let mut booting = 0;
        agent.booting(|| booting += 1);
        handle(&Message::parse(b"STATUS=Booting\n"), &agent, count_status);
        assert_eq!(STATUS_CALLS.load(Ordering::SeqCst), 0);
        handle(&ready, &agent, count_status);
        assert_eq!(STATUS_CALLS.load(Ordering::SeqCst), 1);
        agent.booting(|| booting += 1);
        assert_eq!(booting, 1, "Booting: does not replace the guest's status");
        agent.set_ready(|| {});
        handle(&ready, &agent, count_status);
        assert_eq!(STATUS_CALLS.load(Ordering::SeqCst), 1, "Running: stays");
    }

    #[tokio::test]
    async fn one_message_per_stream_connection() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock_1026");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"READY=1\n").await.unwrap();
        client.write_all(b"STATUS=x\n").await.unwrap();
        drop(client);
        let m = read_message(server).await.unwrap();
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("x"));

        // A sender that waits for the host to close: the message ends
        // after a pause.
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"STOPPING=1\n").await.unwrap();
        let m = read_message(server).await.unwrap();
        assert!(m.stopping);
        drop(client);
    }

    /// A sender that trickles bytes forever, or sends without end, is cut
    /// off by the deadline and the size cap.
    #[tokio::test]
    async fn a_trickling_or_endless_sender_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock_1026");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let trickle = tokio::spawn(async move {
            while client.write_all(b"X").await.is_ok() {
                tokio::time::sleep(IDLE_END / 5).await;
            }
        });
        let reading = tokio::time::timeout(DEADLINE * 2, read_message(server)).await;
        assert!(reading.is_ok(), "still reading after twice the deadline");
        trickle.abort();

        let mut client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let endless = tokio::spawn(async move {
            let line = b"STATUS=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";
            while client.write_all(line).await.is_ok() {}
        });
        let m = tokio::time::timeout(DEADLINE * 2, read_message(server))
            .await
            .expect("the size cap ends the message")
            .unwrap();
        let total: usize = m.fields.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        // + 1: the cut last line has no newline, counted above.
        assert!(total as u64 <= MAX_MESSAGE + 1, "{total}");
        endless.abort();
    }

    #[test]
    fn logged_guest_text_is_escaped() {
        let m = Message::parse(b"X_SYSTEMD_SHUTDOWN=poweroff\x1b[2J\rforged\nEXIT_STATUS=0\x0b1\n");
        let line = escape_log_text(m.describe_shutdown().as_bytes());
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("poweroff\\x1b[2J\\x0dforged"), "{line}");
    }
}
