//! The host side: reach a guest's agent through the VMM's hybrid-vsock Unix
//! socket and run commands in the guest.
//!
//! One implementation serves both VMMs: cloud-hypervisor and
//! vhost-device-vsock (QEMU) expose the same socket protocol: connect,
//! write `CONNECT <port>\n`, read `OK <port>\n`, then the stream is the
//! guest connection.

use crate::files::NewFile;
use crate::protocol::{
    read_frame, write_frame, Control, ExecRequest, Frame, Hello, ProtocolError, Stats, MAX_PAYLOAD,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VM's vsock socket could not be connected to.
    #[error("cannot connect to {path}: {source} (is the VM running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The VMM refused or did not understand `CONNECT`.
    #[error("{path}: the VMM answered {answer:?} to CONNECT {port} (is the guest agent running?)")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// What the VMM said.
        answer: String,
    },
    /// No answer in time.
    #[error("{path}: no answer to CONNECT {port} within {timeout:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// How long we waited.
        timeout: Duration,
    },
    /// The agent broke the protocol or the connection.
    #[error("guest agent: {0}")]
    Protocol(#[from] ProtocolError),
    /// The agent reported an error.
    #[error("guest agent: {0}")]
    Agent(String),
    /// A pulled file could not be written on this host.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The local target.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A pulled file is bigger than allowed.
    #[error("the file has at least {size} bytes, over the limit of {max_size} bytes")]
    TooLarge {
        /// Its size as announced, or the bytes received so far.
        size: u64,
        /// The limit.
        max_size: u64,
    },
}

/// How a command in the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + the signal number.
    pub fn as_shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// The host end of a VMM's hybrid-vsock Unix socket.
pub struct HybridVsock;

impl HybridVsock {
    /// How long [`HybridVsock::connect`] waits for the VMM's answer.
    pub const TIMEOUT: Duration = Duration::from_secs(10);

    /// Connects to guest `port` through the VMM socket `unix_path`
    /// (`CONNECT <port>\n` / `OK <n>\n`), waiting at most [`Self::TIMEOUT`].
    pub async fn connect(unix_path: &Path, port: u32) -> Result<UnixStream, ClientError> {
        connect_hybrid_vsock(unix_path, port, Self::TIMEOUT).await
    }
}

/// Connects to guest `port` through the hybrid-vsock socket at `path`.
pub async fn connect_hybrid_vsock(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ClientError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let handshake = async {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await?;
        // Read the answer byte by byte: whatever follows the newline already
        // belongs to the guest connection.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            if stream.read(&mut byte).await? == 0 {
                break;
            }
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&line).into_owned())
    };
    let answer = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(source)) => {
            return Err(ClientError::Connect {
                path: path.to_owned(),
                source,
            })
        }
        Err(_) => {
            return Err(ClientError::Timeout {
                path: path.to_owned(),
                port,
                timeout,
            })
        }
    };
    if answer.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(ClientError::Refused {
            path: path.to_owned(),
            port,
            answer,
        })
    }
}

/// The default limit on the size of a file pulled out of a guest.
pub const DEFAULT_MAX_PULL_SIZE: u64 = 4 << 30;

/// A connection to the agent carrying one request.
pub struct AgentClient<S> {
    stream: S,
}

impl AgentClient<UnixStream> {
    /// Reaches the agent of the VM whose hybrid-vsock socket is `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = HybridVsock::connect(path, crate::AGENT_PORT).await?;
        Ok(AgentClient { stream })
    }

    /// Reaches an agent listening directly on a Unix socket (tests).
    pub async fn over_unix(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Ok(AgentClient { stream })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentClient<S> {
    /// Wraps an already connected stream.
    pub fn new(stream: S) -> Self {
        AgentClient { stream }
    }

    /// Asks the agent who it is.
    pub async fn hello(mut self) -> Result<Hello, ClientError> {
        write_frame(&mut self.stream, &Frame::Control(Control::Health))
            .await
            .map_err(ProtocolError::Io)?;
        match read_frame(&mut self.stream).await? {
            Some(Frame::Control(Control::Hello(h))) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Reports the guest's memory, load and uptime.
    pub async fn stats(mut self) -> Result<Stats, ClientError> {
        write_frame(&mut self.stream, &Frame::Control(Control::GetStats))
            .await
            .map_err(ProtocolError::Io)?;
        match read_frame(&mut self.stream).await? {
            Some(Frame::Control(Control::Stats(s))) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Writes everything `data` yields to the absolute guest `path` with
    /// permission bits `mode`; the file is replaced atomically.
    pub async fn push<R: AsyncRead + Unpin>(
        mut self,
        path: &str,
        mode: u32,
        mut data: R,
    ) -> Result<(), ClientError> {
        let request = Frame::Control(Control::Push {
            path: path.to_owned(),
            mode,
        });
        let sent = async {
            write_frame(&mut self.stream, &request).await?;
            let mut buf = vec![0u8; MAX_PAYLOAD.min(256 * 1024)];
            loop {
                let n = data.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                write_frame(&mut self.stream, &Frame::Stdin(buf[..n].to_vec())).await?;
            }
            write_frame(&mut self.stream, &Frame::StdinEof).await
        }
        .await;
        // If the agent gave up early its error explains more than our
        // failed write: read it first.
        match read_frame(&mut self.stream).await {
            Ok(Some(Frame::Control(Control::Done))) if sent.is_ok() => Ok(()),
            Ok(Some(Frame::Control(Control::Error { message }))) => {
                Err(ClientError::Agent(message))
            }
            other => match sent {
                Err(e) => Err(ProtocolError::Io(e).into()),
                Ok(()) => Err(unexpected(other?)),
            },
        }
    }

    /// Copies the guest file at `path` into `out`; returns its permission
    /// bits as the guest reports them (mask them before use). A file over
    /// `max_size` bytes is refused with [`ClientError::TooLarge`], whether
    /// the guest announces it or only sends it: the guest's word on the size
    /// is not trusted.
    pub async fn pull<W: AsyncWrite + Unpin>(
        mut self,
        path: &str,
        mut out: W,
        max_size: u64,
    ) -> Result<u32, ClientError> {
        let request = Frame::Control(Control::Pull {
            path: path.to_owned(),
        });
        write_frame(&mut self.stream, &request)
            .await
            .map_err(ProtocolError::Io)?;
        let mode = match read_frame(&mut self.stream).await? {
            Some(Frame::Control(Control::File { size, .. })) if size > max_size => {
                return Err(ClientError::TooLarge { size, max_size })
            }
            Some(Frame::Control(Control::File { mode, .. })) => mode,
            other => return Err(unexpected(other)),
        };
        let mut received: u64 = 0;
        loop {
            match read_frame(&mut self.stream).await? {
                Some(Frame::Stdout(d)) => {
                    received = received.saturating_add(d.len() as u64);
                    if received > max_size {
                        return Err(ClientError::TooLarge {
                            size: received,
                            max_size,
                        });
                    }
                    write_out(&mut out, &d).await?
                }
                Some(Frame::Control(Control::Done)) => return Ok(mode),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Copies the guest file at `path` to the local file `target`, safely
    /// for a root caller writing anywhere: through [`NewFile`] (no planted
    /// name is followed, the file is private until complete, nothing is
    /// left behind on failure), at most `max_size` bytes, with the guest's
    /// permission bits masked to `0o777` (a guest never hands out setuid,
    /// setgid or sticky bits). Returns the mode set.
    pub async fn pull_to_file(
        self,
        path: &str,
        target: &Path,
        max_size: u64,
    ) -> Result<u32, ClientError> {
        let write_error = |source| ClientError::Write {
            path: target.to_owned(),
            source,
        };
        let mut file = NewFile::create(target, "vmctl-cp").map_err(write_error)?;
        let mode = self.pull(path, file.file(), max_size).await? & 0o777;
        file.commit(mode).await.map_err(write_error)?;
        Ok(mode)
    }

    /// Powers the guest off (or reboots it).
    pub async fn shutdown(mut self, reboot: bool) -> Result<(), ClientError> {
        write_frame(
            &mut self.stream,
            &Frame::Control(Control::Shutdown { reboot }),
        )
        .await
        .map_err(ProtocolError::Io)?;
        match read_frame(&mut self.stream).await? {
            Some(Frame::Control(Control::Exit { code: Some(0), .. })) | None => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Runs `req` in the guest, streaming `stdin` to it and its output to
    /// `stdout` and `stderr` until it ends. `control` may deliver resize and
    /// kill requests while it runs.
    pub async fn exec<I, O, E>(
        self,
        req: ExecRequest,
        mut stdin: I,
        mut stdout: O,
        mut stderr: E,
        mut control: Option<tokio::sync::mpsc::Receiver<Control>>,
    ) -> Result<ExitStatus, ClientError>
    where
        I: AsyncRead + Unpin,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(self.stream);
        write_frame(&mut wr, &Frame::Control(Control::Exec(req)))
            .await
            .map_err(ProtocolError::Io)?;
        match read_frame(&mut rd).await? {
            Some(Frame::Control(Control::Started { .. })) => {}
            other => return Err(unexpected(other)),
        }
        // Frames are read by their own task: reading one is not cancel-safe,
        // and the loop below waits on three things at once.
        let (frames_tx, mut frames) = tokio::sync::mpsc::channel(64);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut rd).await;
                let last = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        });
        let mut input_open = true;
        let mut buf = vec![0u8; 32 * 1024];
        let result = loop {
            tokio::select! {
                frame = frames.recv() => match frame.unwrap_or(Ok(None)) {
                    Ok(Some(Frame::Stdout(d))) => {
                        if let Err(e) = write_out(&mut stdout, &d).await { break Err(e) }
                    }
                    Ok(Some(Frame::Stderr(d))) => {
                        if let Err(e) = write_out(&mut stderr, &d).await { break Err(e) }
                    }
                    Ok(Some(Frame::Control(Control::Exit { code: Some(c), .. }))) => break Ok(ExitStatus::Code(c)),
                    Ok(Some(Frame::Control(Control::Exit { signal: Some(s), .. }))) => break Ok(ExitStatus::Signal(s)),
                    Ok(other) => break Err(unexpected(other)),
                    Err(e) => break Err(e.into()),
                },
                n = stdin.read(&mut buf), if input_open => {
                    let frame = match n {
                        Ok(0) | Err(_) => { input_open = false; Frame::StdinEof }
                        Ok(n) => Frame::Stdin(buf[..n].to_vec()),
                    };
                    // The command may exit without reading its input: a
                    // closed connection is then reported by the read side.
                    let _ = write_frame(&mut wr, &frame).await;
                },
                msg = recv(&mut control) => match msg {
                    Some(msg) => { let _ = write_frame(&mut wr, &Frame::Control(msg)).await; }
                    None => control = None,
                },
            }
        };
        reader.abort();
        result
    }
}

async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<(), ClientError> {
    w.write_all(data).await.map_err(ProtocolError::Io)?;
    w.flush().await.map_err(ProtocolError::Io)?;
    Ok(())
}

async fn recv(control: &mut Option<tokio::sync::mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn unexpected(frame: Option<Frame>) -> ClientError {
    match frame {
        Some(Frame::Control(Control::Error { message })) => ClientError::Agent(message),
        None => ClientError::Agent("the agent closed the connection".into()),
        Some(other) => ClientError::Agent(format!("unexpected frame {other:?}")),
    }
}

/// Accepts one connection on a listener where guest connections to host
/// port [`crate::HELLO_PORT`] arrive (`<vsock socket>_1025`) and reads a
/// checked hello from it: at most [`crate::hello::MAX_HELLO_FRAME`] bytes,
/// within `deadline`, every field validated ([`crate::hello::check`]).
///
/// This serves one connection at a time; a listener that must not be held
/// up by a silent peer hands each accepted stream to its own task and
/// calls [`crate::hello::read_hello`] there (as the launcher does).
pub async fn accept_hello(
    listener: &tokio::net::UnixListener,
    deadline: Duration,
) -> Result<crate::hello::CheckedHello, crate::hello::HelloError> {
    let (mut stream, _) = listener.accept().await?;
    crate::hello::read_hello(&mut stream, deadline).await
}
