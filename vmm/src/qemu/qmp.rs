//! A small QMP (QEMU Machine Protocol) client over a Unix socket.
//!
//! The protocol, step by step:
//! 1. Connect to the socket given to `-qmp unix:PATH,server=on,wait=off`.
//! 2. QEMU sends a greeting line: `{"QMP": {"version": ..., "capabilities": [...]}}`.
//! 3. We send `{"execute": "qmp_capabilities", "id": 0}`; QEMU answers
//!    `{"return": {}, "id": 0}`. Until then only this command is accepted.
//! 4. From then on we send `{"execute": CMD, "arguments": {...}, "id": N}`,
//!    one JSON object per line. QEMU answers each with a line carrying the
//!    same `id` and either `"return"` or `"error": {"class", "desc"}`.
//! 5. In between, QEMU may send asynchronous events at any time:
//!    `{"event": "SHUTDOWN", "data": {...}, "timestamp": {...}}`.
//!
//! After the handshake a reader task owns the read half: it routes replies
//! to the waiting caller by `id` and forwards events on a bounded channel
//! ([`EVENT_QUEUE`]). A guest can make QEMU emit events (RTC changes, NIC
//! RX filter changes, watchdog...) as fast as it likes, and nobody may be
//! reading them: events that find the queue full are dropped and counted
//! ([`Qmp::dropped_events`]) instead of growing memory without limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// An asynchronous QMP event (`SHUTDOWN`, `POWERDOWN`, `STOP`, `RESUME`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `POWERDOWN`.
    pub event: String,
    /// Event data (`null` when absent).
    pub data: Value,
}

/// Result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QmpStatus {
    /// Whether vCPUs are running.
    pub running: bool,
    /// Run state: `prelaunch`, `running`, `paused`, `shutdown`, ...
    pub status: String,
}

/// Events kept for a slow (or absent) reader before new ones are dropped.
pub const EVENT_QUEUE: usize = 64;

type Reply = std::result::Result<Value, (String, String)>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A connected QMP session (after the capabilities handshake).
#[derive(Debug)]
pub struct Qmp {
    socket: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    dropped: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connect and perform the handshake. Events arrive on the returned receiver.
    pub async fn connect(socket: &Path) -> Result<(Qmp, mpsc::Receiver<QmpEvent>)> {
        let proto = |message: String| Error::QmpProtocol {
            socket: socket.to_owned(),
            message,
        };
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| proto(format!("cannot connect: {e}")))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();

        let greeting = read_json(&mut lines, socket).await?;
        if greeting.get("QMP").is_none() {
            return Err(proto(format!("expected QMP greeting, got {greeting}")));
        }
        write_line(
            &mut write,
            &json!({"execute": "qmp_capabilities", "id": 0}),
            socket,
        )
        .await?;
        loop {
            let msg = read_json(&mut lines, socket).await?;
            if msg.get("id") != Some(&json!(0)) {
                continue; // an early event; nothing listens yet
            }
            if let Some(err) = msg.get("error") {
                let (class, desc) = error_parts(err);
                return Err(Error::Qmp {
                    socket: socket.to_owned(),
                    command: "qmp_capabilities".into(),
                    class,
                    desc,
                });
            }
            break;
        }

        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let pending: Pending = Arc::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read_loop(lines, pending.clone(), tx, dropped.clone()));
        Ok((
            Qmp {
                socket: socket.to_owned(),
                writer: tokio::sync::Mutex::new(write),
                pending,
                next_id: AtomicU64::new(1),
                dropped,
                reader,
            },
            rx,
        ))
    }

    /// Connect, retrying until the socket accepts or `timeout` passes.
    pub async fn connect_with_retry(
        socket: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::Receiver<QmpEvent>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Qmp::connect(socket).await {
                Ok(ok) => return Ok(ok),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The socket this session talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// How many events were dropped because the event queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Execute `command` with optional `arguments`; returns the `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = write_line(&mut w, &msg, &self.socket).await {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(e);
            }
        }
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err((class, desc))) => Err(Error::Qmp {
                socket: self.socket.clone(),
                command: command.into(),
                class,
                desc,
            }),
            Err(_) => Err(Error::QmpProtocol {
                socket: self.socket.clone(),
                message: format!("connection closed before the reply to {command}"),
            }),
        }
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<QmpStatus> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v.clone()).map_err(|e| Error::QmpProtocol {
            socket: self.socket.clone(),
            message: format!("bad query-status reply {v}: {e}"),
        })
    }

    /// `cont`: start or resume vCPUs.
    pub async fn cont(&self) -> Result<()> {
        self.execute("cont", None).await.map(drop)
    }

    /// `stop`: pause vCPUs.
    pub async fn stop(&self) -> Result<()> {
        self.execute("stop", None).await.map(drop)
    }

    /// `system_powerdown`: press the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<()> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. A connection closed before the reply counts as success.
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", None).await {
            Ok(_) | Err(Error::QmpProtocol { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn read_loop(
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    pending: Pending,
    events: mpsc::Sender<QmpEvent>,
    dropped: Arc<AtomicU64>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(event) = msg.get("event").and_then(Value::as_str) {
            let event = QmpEvent {
                event: event.to_owned(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(event) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let Some(tx) = pending.lock().expect("pending lock").remove(&id) else {
                continue;
            };
            let reply = match msg.get("error") {
                Some(err) => Err(error_parts(err)),
                None => Ok(msg.get("return").cloned().unwrap_or(Value::Null)),
            };
            let _ = tx.send(reply);
        }
    }
    // EOF: dropping the senders wakes every waiter with "connection closed".
    pending.lock().expect("pending lock").clear();
}

fn error_parts(err: &Value) -> (String, String) {
    let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    (s("class"), s("desc"))
}

async fn read_json(lines: &mut Lines<BufReader<OwnedReadHalf>>, socket: &Path) -> Result<Value> {
    let proto = |message: String| Error::QmpProtocol {
        socket: socket.to_owned(),
        message,
    };
    let line = lines
        .next_line()
        .await
        .map_err(|e| proto(format!("read failed: {e}")))?
        .ok_or_else(|| proto("connection closed during handshake".into()))?;
    serde_json::from_str(&line).map_err(|e| proto(format!("invalid JSON {line:?}: {e}")))
}

async fn write_line(w: &mut OwnedWriteHalf, msg: &Value, socket: &Path) -> Result<()> {
    let mut buf = msg.to_string();
    buf.push('\n');
    w.write_all(buf.as_bytes())
        .await
        .map_err(|e| Error::QmpProtocol {
            socket: socket.to_owned(),
            message: format!("write failed: {e}"),
        })
}
