//! Frames and control messages of the agent protocol (see `PROTOCOL.md`).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The connection failed or ended in the middle of a frame.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is 0 or over the limit.
    #[error("invalid frame length {0} (allowed: 1 to {max})", max = MAX_PAYLOAD + 1)]
    BadLength(u32),
    /// The kind byte is unknown.
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    /// A control payload is not a known message.
    #[error("invalid control message: {0}")]
    BadControl(String),
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A request to run a command in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory (default: `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// User to run as (default: root).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group to run as (default: the user's group, or root).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Run on a pseudo-terminal of this size.
    #[serde(default)]
    pub pty: Option<PtySize>,
}

/// What the guest says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's version.
    pub version: String,
    /// The guest kernel release (`uname -r`).
    pub kernel_release: String,
    /// The guest's boot ID.
    pub boot_id: String,
    /// Seconds since the guest booted.
    pub uptime_secs: u64,
}

/// Resource figures of the guest, read from `/proc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// `MemTotal` in bytes.
    pub mem_total_bytes: u64,
    /// `MemAvailable` in bytes.
    pub mem_available_bytes: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Seconds since the guest booted.
    pub uptime_secs: u64,
}

/// A control message (frame kind 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// The guest is up (agent → host).
    Hello(Hello),
    /// Ask for a `hello` (host → agent).
    Health,
    /// Run a command (host → agent).
    Exec(ExecRequest),
    /// The command runs with this PID (agent → host).
    Started {
        /// Guest PID of the command.
        pid: u32,
    },
    /// The terminal changed size (host → agent).
    Resize(PtySize),
    /// Send a signal to the command (host → agent).
    Kill {
        /// Signal number.
        signal: i32,
    },
    /// The command ended (agent → host).
    Exit {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal killed it.
        signal: Option<i32>,
    },
    /// Power the guest off or reboot it (host → agent).
    Shutdown {
        /// Reboot instead of powering off.
        reboot: bool,
    },
    /// Write a file (host → agent). Its content follows in `stdin` frames
    /// ended by `stdin-eof`; the agent answers `done` or `error`.
    Push {
        /// Absolute path in the guest; replaced atomically.
        path: String,
        /// Permission bits (e.g. `0o644`).
        mode: u32,
    },
    /// Read a file (host → agent). The agent answers `file`, the content in
    /// `stdout` frames, then `done` (or `error` at any point).
    Pull {
        /// Absolute path in the guest.
        path: String,
    },
    /// The file being pulled (agent → host).
    File {
        /// Permission bits.
        mode: u32,
        /// Size in bytes when the transfer started.
        size: u64,
    },
    /// A push or pull completed (agent → host).
    Done,
    /// Ask for resource figures (host → agent); answered with `stats`.
    GetStats,
    /// Resource figures of the guest (agent → host).
    Stats(Stats),
    /// The request failed (agent → host).
    Error {
        /// What went wrong.
        message: String,
    },
}

/// One frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A control message.
    Control(Control),
    /// Bytes for the command's standard input.
    Stdin(Vec<u8>),
    /// Bytes from the command's standard output (or its terminal).
    Stdout(Vec<u8>),
    /// Bytes from the command's standard error.
    Stderr(Vec<u8>),
    /// The host's standard input ended.
    StdinEof,
}

const KIND_CONTROL: u8 = 1;
const KIND_STDIN: u8 = 2;
const KIND_STDOUT: u8 = 3;
const KIND_STDERR: u8 = 4;
const KIND_STDIN_EOF: u8 = 5;

impl Frame {
    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<[u8]>) = match self {
            Frame::Control(c) => (
                KIND_CONTROL,
                serde_json::to_vec(c)
                    .expect("control messages always serialize")
                    .into(),
            ),
            Frame::Stdin(d) => (KIND_STDIN, d.as_slice().into()),
            Frame::Stdout(d) => (KIND_STDOUT, d.as_slice().into()),
            Frame::Stderr(d) => (KIND_STDERR, d.as_slice().into()),
            Frame::StdinEof => (KIND_STDIN_EOF, (&[][..]).into()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        out
    }

    fn decode(kind: u8, payload: Vec<u8>) -> Result<Frame, ProtocolError> {
        Ok(match kind {
            KIND_CONTROL => Frame::Control(decode_control(&payload)?),
            KIND_STDIN => Frame::Stdin(payload),
            KIND_STDOUT => Frame::Stdout(payload),
            KIND_STDERR => Frame::Stderr(payload),
            KIND_STDIN_EOF => Frame::StdinEof,
            other => return Err(ProtocolError::BadKind(other)),
        })
    }
}

/// Parses a control payload (the JSON of a kind-1 frame).
pub fn decode_control(payload: &[u8]) -> Result<Control, ProtocolError> {
    serde_json::from_slice(payload).map_err(|e| ProtocolError::BadControl(e.to_string()))
}

/// The number of bytes after a length prefix of `len`, if it is allowed.
/// Checked before anything is allocated: a peer cannot make us reserve
/// more than one frame's worth by claiming a huge length.
fn body_length(len: u32) -> Result<usize, ProtocolError> {
    match usize::try_from(len) {
        Ok(n) if (1..=MAX_PAYLOAD + 1).contains(&n) => Ok(n),
        _ => Err(ProtocolError::BadLength(len)),
    }
}

/// Decodes the frame at the start of `buf`: the frame and the number of
/// bytes it took, or `Ok(None)` if `buf` does not hold a whole frame yet.
/// The same rules as [`read_frame`], for callers holding bytes in memory.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = body_length(u32::from_be_bytes(*prefix))?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let frame = Frame::decode(body[0], body[1..].to_vec())?;
    Ok(Some((frame, 4 + len)))
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = body_length(u32::from_be_bytes(len))?;
    let kind = r.read_u8().await?;
    let mut payload = vec![0u8; len - 1];
    r.read_exact(&mut payload).await?;
    Frame::decode(kind, payload).map(Some)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(frame: Frame) -> Frame {
        let bytes = frame.encode();
        read_frame(&mut bytes.as_slice()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = [
            Frame::Control(Control::Exec(ExecRequest {
                argv: vec!["uname".into(), "-r".into()],
                env: vec![("A".into(), "b".into())],
                cwd: Some("/tmp".into()),
                uid: Some(1000),
                gid: None,
                pty: Some(PtySize { rows: 24, cols: 80 }),
            })),
            Frame::Control(Control::Exit {
                code: Some(7),
                signal: None,
            }),
            Frame::Control(Control::Health),
            Frame::Control(Control::Push {
                path: "/etc/motd".into(),
                mode: 0o640,
            }),
            Frame::Control(Control::Pull {
                path: "/etc/motd".into(),
            }),
            Frame::Control(Control::File {
                mode: 0o640,
                size: 12,
            }),
            Frame::Control(Control::Done),
            Frame::Control(Control::GetStats),
            Frame::Control(Control::Stats(Stats {
                mem_total_bytes: 1 << 30,
                mem_available_bytes: 1 << 29,
                load: [0.5, 0.25, 0.0],
                uptime_secs: 42,
            })),
            Frame::Control(Control::Resize(PtySize {
                rows: 50,
                cols: 132,
            })),
            Frame::Control(Control::Shutdown { reboot: true }),
            Frame::Stdin(b"hi\n".to_vec()),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(Vec::new()),
            Frame::StdinEof,
        ];
        for frame in frames {
            assert_eq!(round_trip(frame.clone()).await, frame);
        }
    }

    #[tokio::test]
    async fn decode_frame_agrees_with_read_frame() {
        let inputs: Vec<Vec<u8>> = vec![
            Frame::Stdout(b"hello".to_vec()).encode(),
            Frame::Control(Control::Health).encode(),
            Frame::StdinEof.encode(),
            vec![0, 0, 0, 1, 99],
            vec![0, 0, 0, 5, 1, b'{', b'n', b'o', b't'],
            vec![0, 0, 0, 0],
            vec![0xff, 0xff, 0xff, 0xff, 1],
        ];
        for bytes in inputs {
            let from_stream = read_frame(&mut bytes.as_slice()).await;
            let in_memory = decode_frame(&bytes);
            match (from_stream, in_memory) {
                (Ok(Some(a)), Ok(Some((b, used)))) => {
                    assert_eq!(a, b);
                    assert_eq!(used, bytes.len());
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{bytes:?}: {a:?} vs {b:?}"),
            }
        }
        // Incomplete input is not an error in memory: more may come.
        let whole = Frame::Stdin(vec![1; 100]).encode();
        for cut in [0, 3, 4, 5, 50, whole.len() - 1] {
            assert!(decode_frame(&whole[..cut]).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let text =
            String::from_utf8(Frame::Control(Control::Kill { signal: 9 }).encode()[5..].to_vec())
                .unwrap();
        assert_eq!(text, r#"{"type":"kill","signal":9}"#);
    }

    #[tokio::test]
    async fn oversized_and_empty_frames_are_rejected() {
        let mut big = ((MAX_PAYLOAD + 2) as u32).to_be_bytes().to_vec();
        big.push(KIND_STDOUT);
        assert!(matches!(
            read_frame(&mut big.as_slice()).await,
            Err(ProtocolError::BadLength(_))
        ));
        let zero = 0u32.to_be_bytes();
        assert!(matches!(
            read_frame(&mut zero.as_slice()).await,
            Err(ProtocolError::BadLength(0))
        ));
    }

    #[tokio::test]
    async fn truncated_garbage_and_unknown_kinds_are_errors() {
        let mut truncated = Frame::Stdout(b"hello".to_vec()).encode();
        truncated.truncate(7);
        assert!(matches!(
            read_frame(&mut truncated.as_slice()).await,
            Err(ProtocolError::Io(_))
        ));
        let unknown = [0, 0, 0, 1, 99];
        assert!(matches!(
            read_frame(&mut unknown.as_slice()).await,
            Err(ProtocolError::BadKind(99))
        ));
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.push(KIND_CONTROL);
        garbage.extend_from_slice(b"{not");
        assert!(matches!(
            read_frame(&mut garbage.as_slice()).await,
            Err(ProtocolError::BadControl(_))
        ));
        let empty: [u8; 0] = [];
        assert!(read_frame(&mut empty.as_slice()).await.unwrap().is_none());
    }
}
