//! Serving the varlink socket to untrusted local users.
//!
//! The socket is world-connectable (authorisation is per call), so every
//! local user can connect, hold connections open, send half a message and
//! stop, or send a message without end. The server bounds all of it:
//!
//! - **Connection caps** ([`Caps`]): per uid and in total, with a share
//!   only root may use, so root is always answered. A connection over a cap
//!   is accepted and closed at once, which keeps the listen backlog moving
//!   (a connection left in the backlog would queue root's behind it).
//! - **Idle timeout**: a connection that does not complete a message within
//!   [`Limits::idle_timeout`] of being accepted or of its last reply is
//!   closed (half messages, silent clients).
//! - **Message size**: a message longer than [`Limits::max_message`] bytes
//!   (NUL terminator not counted) closes the connection; nothing beyond
//!   that is read or buffered.
//! - **Write deadline**: a client that does not take its reply within
//!   [`Limits::write_timeout`] is dropped.
//! - **Descriptors** sent by a client (`SCM_RIGHTS`) are closed as soon as
//!   the call they came with is answered, and at once for any method but
//!   `ImportImage` (which reads the image files the client opened, at most
//!   [`crate::image_import::MAX_FDS`]): a client must not be able to fill
//!   vmctld's descriptor table with them. Descriptors vmctld sends
//!   (`OpenGuest`, see [`crate::guest_access`]) are capped per connection
//!   at [`Limits::max_fds`]; vmctld closes its copy once sent.
//! - **`accept()` errors** such as `EMFILE`, `ENFILE` or `ECONNABORTED` are
//!   transient: logged (rate-limited), a short pause, and serving goes on.
//!
//! # Why not zlink's `Server`
//!
//! zlink (0.8) frames messages well and is used for that here
//! ([`zlink::Connection`]: reading calls, writing replies). Its `Server`,
//! however, cannot be made safe for hostile peers from the outside: it
//! serves every connection from one loop and awaits each reply's write in
//! that loop, so a client that never reads its replies stalls everybody; an
//! error from `accept()` (`EMFILE`) ends `Server::run` and so the daemon;
//! and its only size limit is a fixed 100 MB buffer per connection. So the
//! accept loop and the per-connection loop below are written by hand, with
//! one task per connection: a slow, idle or huge connection only ever holds
//! up itself.
//!
//! zlink's reader is used; its writer is not: it serialises a large reply
//! over and over ([`send_message`] says why), so replies are written
//! through the socket's write half directly.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use tokio::{
    net::{UnixListener, UnixStream},
    time::{timeout, Instant},
};
use vmctl_api::ErrorReply;
use zlink::{
    connection::{
        socket::{ReadHalf, ReadResult, Socket, WriteHalf},
        ReadConnection,
    },
    tokio::unix,
    Connection, Reply,
};

pub use crate::admission::{Admission, Caps, Refusal};
use crate::{
    varlink::{Answer, RawCall, VarlinkService},
    Caller, ManagerError,
};

/// The largest message a client may send, in bytes: 64 KiB.
///
/// Calls are small (the largest, `Create`, is a few hundred bytes). The
/// limit also bounds memory: a connection's read buffer grows to at most
/// about twice this, so 512 connections hold at most 64 MiB, well under
/// `MemoryMax=` in `vmctld.service`. Documented in the IDL.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long a connection may go without completing a message: 30 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client has to take a reply: 10 s.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after `accept()` failed for lack of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often, at most, a repeated warning is logged.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The bounds the server enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connection caps.
    pub caps: Caps,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// See [`MAX_MESSAGE_BYTES`].
    pub max_message: usize,
    /// How many descriptors one connection may be handed; see
    /// [`crate::guest_access::MAX_FDS_PER_CONNECTION`].
    pub max_fds: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            caps: Caps::DEFAULT,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_message: MAX_MESSAGE_BYTES,
            max_fds: crate::guest_access::MAX_FDS_PER_CONNECTION,
        }
    }
}

/// Accepts connections on `listener` and serves each with `service` in a
/// task of its own, within `limits`, until `accept()` fails in a way that
/// means the listener itself is broken.
pub async fn serve(
    listener: UnixListener,
    service: Arc<VarlinkService>,
    limits: Limits,
) -> io::Result<()> {
    let admission = Admission::new(limits.caps);
    let mut refused = Throttle::default();
    let mut failed = Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => match AcceptError::classify(&e) {
                AcceptError::Fatal => return Err(e),
                AcceptError::Exhausted => {
                    failed.warn(|n| tracing::warn!("varlink: accept failed ({e}){n}, retrying"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                AcceptError::PeerGone => {
                    tracing::debug!("varlink: accept: {e}");
                    continue;
                }
            },
        };
        let caller = match stream.peer_cred() {
            Ok(cred) => Caller::unix_peer(
                stream.as_fd(),
                cred.uid(),
                cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            ),
            Err(e) => {
                tracing::debug!("varlink: no peer credentials, closing: {e}");
                continue;
            }
        };
        match admission.admit(caller.uid) {
            Ok(permit) => {
                let service = service.clone();
                tokio::spawn(async move {
                    serve_connection(stream, caller, service, limits).await;
                    drop(permit);
                });
            }
            Err(refusal) => {
                let open = admission.open();
                refused.warn(|n| {
                    tracing::warn!(
                        "varlink: refused a connection from uid {} (pid {}): {refusal} \
                         ({open} open){n}",
                        caller.uid,
                        caller.pid
                    )
                });
                drop(stream);
            }
        }
    }
}

/// What an `accept()` error means for the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// The listener is unusable: stop serving.
    Fatal,
    /// Out of descriptors or memory: pause, then go on.
    Exhausted,
    /// That one connection failed (`ECONNABORTED`, `EINTR`, ...): go on.
    PeerGone,
}

impl AcceptError {
    fn classify(e: &io::Error) -> Self {
        use rustix::io::Errno;
        match Errno::from_io_error(e) {
            Some(Errno::BADF | Errno::INVAL | Errno::NOTSOCK | Errno::OPNOTSUPP | Errno::FAULT) => {
                Self::Fatal
            }
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => Self::Exhausted,
            // Unknown errors get the pause too, so that one that keeps
            // coming cannot make the loop spin.
            None => Self::Exhausted,
            Some(_) => Self::PeerGone,
        }
    }
}

/// Logs a repeated warning at most once per [`WARN_INTERVAL`], saying how
/// many were suppressed in between.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, log: impl FnOnce(&str)) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        let note = match self.suppressed {
            0 => String::new(),
            n => format!(" [{n} more like this since the last report]"),
        };
        log(&note);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Serves one connection: calls one after another, each answered before
/// the next is read, until the client closes or breaks a limit.
async fn serve_connection(
    stream: UnixStream,
    caller: Caller,
    service: Arc<VarlinkService>,
    limits: Limits,
) {
    let stream = match unix::Stream::try_from(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!("varlink: cannot set up a connection: {e}");
            return;
        }
    };
    let (mut read, write) = Connection::new(LimitedStream {
        inner: stream,
        max_message: limits.max_message,
    })
    .split();
    // Replies are written by [`send_message`], not by zlink's writer.
    let mut write = write.into_write_half();
    let uid = caller.uid;
    let mut handed = 0;
    loop {
        let (call, fds) = match timeout(limits.idle_timeout, read.receive_call::<RawCall>()).await {
            Ok(Ok(received)) => received,
            Ok(Err(zlink::Error::UnexpectedEof)) => return,
            Ok(Err(e)) => {
                tracing::debug!("varlink: closing a connection of uid {uid}: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(
                    "varlink: closing a connection of uid {uid}: no complete message in {:?}",
                    limits.idle_timeout
                );
                return;
            }
        };
        tracing::debug!(method = %call.method().method, uid, pid = caller.pid, "varlink call");
        let answer = if call.more() && !call.oneway() {
            drop(fds);
            service.answer_more(&caller, call.method()).await
        } else if !fds.is_empty() {
            service.answer_with_fds(&caller, call.method(), fds).await
        } else {
            service.answer(&caller, call.method()).await
        };
        if let Answer::Stream(replies) = answer {
            stream_replies(read, write, replies, uid, limits).await;
            return;
        }
        let (outcome, fds) = match answer {
            // Not run at all: no guest connection is made.
            Answer::WithFds(_) if handed >= limits.max_fds => {
                let error = ManagerError::QuotaExceeded {
                    resource: "descriptors per connection".into(),
                    limit: limits.max_fds as i64,
                    requested: handed as i64 + 1,
                };
                (Err(error.to_varlink()), Vec::new())
            }
            answer => answer.reply().await,
        };
        handed += fds.len();
        if call.oneway() {
            continue;
        }
        let send = async {
            match outcome {
                Ok(params) => {
                    let continues = call.more().then_some(false);
                    let reply = Reply::new(Some(params)).set_continues(continues);
                    send_message(&mut write, &reply, &fds).await
                }
                Err(error) => send_message(&mut write, &error, &fds).await,
            }
        };
        match timeout(limits.write_timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("varlink: cannot reply to uid {uid}: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("varlink: uid {uid} did not take its reply, closing");
                return;
            }
        }
        // vmctld offers no protocol upgrades: a client asking for one got
        // its reply and the connection ends, as zlink's server would do.
        if call.upgrade() {
            return;
        }
    }
}

/// Sends `replies` (`List` with `more`) with `continues: true` until the
/// client leaves, does not take a reply within the write timeout, or sends
/// anything (a watching client only listens); an error reply ends the
/// watch, and with it the connection.
async fn stream_replies(
    mut read: ReadConnection<LimitedRead>,
    mut write: RawWrite,
    mut replies: futures_util::stream::BoxStream<'static, Result<serde_json::Value, ErrorReply>>,
    uid: u32,
    limits: Limits,
) {
    use futures_util::StreamExt;
    loop {
        tokio::select! {
            _ = read.receive_call::<RawCall>() => {
                tracing::debug!("varlink: uid {uid} left or spoke during a watch, closing");
                return;
            }
            item = replies.next() => {
                let Some(item) = item else { return };
                let last = item.is_err();
                let send = async {
                    match item {
                        Ok(params) => {
                            let reply = Reply::new(Some(params)).set_continues(Some(true));
                            send_message(&mut write, &reply, &[] as &[OwnedFd]).await
                        }
                        Err(error) => send_message(&mut write, &error, &[] as &[OwnedFd]).await,
                    }
                };
                match timeout(limits.write_timeout, send).await {
                    Ok(Ok(())) if !last => {}
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        tracing::debug!("varlink: cannot send a watch reply to uid {uid}: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("varlink: uid {uid} did not take a watch reply, closing");
                        return;
                    }
                }
            }
        }
    }
}

/// The write half of a client's socket.
type RawWrite = <unix::Stream as Socket>::WriteHalf;

/// Writes `message` with its NUL terminator and `fds` (`SCM_RIGHTS`, with
/// the first byte). Serialised once with serde_json: zlink's writer (0.8)
/// grows its buffer 256 bytes at a time and serialises the whole message
/// again after each step, so a reply of 150 KB (`List` with 1000 VMs) cost
/// about a second and a half of CPU.
async fn send_message(
    write: &mut RawWrite,
    message: &impl serde::Serialize,
    fds: &[OwnedFd],
) -> zlink::Result<()> {
    let mut bytes = serde_json::to_vec(message).map_err(zlink::Error::Json)?;
    bytes.push(0);
    write.write(&bytes, fds, None).await
}

/// A client's socket with the message size limit on its read side.
#[derive(Debug)]
struct LimitedStream {
    inner: unix::Stream,
    max_message: usize,
}

impl Socket for LimitedStream {
    type ReadHalf = LimitedRead;
    type WriteHalf = <unix::Stream as Socket>::WriteHalf;

    const CAN_TRANSFER_FDS: bool = <unix::Stream as Socket>::CAN_TRANSFER_FDS;

    fn split(self) -> (Self::ReadHalf, Self::WriteHalf) {
        let (read, write) = self.inner.split();
        (
            LimitedRead {
                inner: read,
                max_message: self.max_message,
                partial: 0,
            },
            write,
        )
    }
}

/// The read half of a [`LimitedStream`]: counts the bytes of the message
/// under way (since the last NUL) and fails once they exceed the limit,
/// never reading more than one byte past it.
#[derive(Debug)]
struct LimitedRead {
    inner: <unix::Stream as Socket>::ReadHalf,
    max_message: usize,
    partial: usize,
}

impl ReadHalf for LimitedRead {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        let room = self.max_message.saturating_sub(self.partial) + 1;
        let len = buf.len().min(room);
        let mut result = self.inner.read(&mut buf[..len]).await?;
        // Descriptors go on only in numbers one call may take
        // (`ImportImage`'s files); more are closed here.
        let fds = result.take_fds();
        if !fds.is_empty() && fds.len() <= crate::image_import::MAX_FDS {
            result = result.set_fds(fds);
        }
        let n = result.bytes_read();
        self.partial = match buf[..n].iter().rposition(|b| *b == 0) {
            Some(nul) => n - nul - 1,
            None => self.partial + n,
        };
        if self.partial > self.max_message {
            return Err(zlink::Error::BufferOverflow);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors() {
        let e = |errno: rustix::io::Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        use rustix::io::Errno;
        assert_eq!(
            AcceptError::classify(&e(Errno::MFILE)),
            AcceptError::Exhausted
        );
        assert_eq!(
            AcceptError::classify(&e(Errno::NFILE)),
            AcceptError::Exhausted
        );
        assert_eq!(
            AcceptError::classify(&e(Errno::CONNABORTED)),
            AcceptError::PeerGone
        );
        assert_eq!(AcceptError::classify(&e(Errno::BADF)), AcceptError::Fatal);
    }

    #[test]
    fn throttle_suppresses_repeats() {
        let mut t = Throttle::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            t.warn(|n| logged.push(n.to_string()));
        }
        assert_eq!(logged, [""]);
        assert_eq!(t.suppressed, 4);
    }
}
