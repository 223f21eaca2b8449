//! What the agent does with one connection: read the request, serve it,
//! close. Generic over the stream so the same code serves vsock in a guest
//! and a Unix socket in tests.

use crate::protocol::{
    read_frame, write_frame, Control, ExecRequest, Frame, Hello, PtySize, Stats, MAX_PAYLOAD,
};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc;

/// This agent's `hello`.
pub fn hello() -> Hello {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let uptime_secs = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split('.').next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    Hello {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release,
        boot_id,
        uptime_secs,
    }
}

/// Serves one connection: one request, then close.
pub async fn serve_connection<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let writer_task = tokio::spawn(write_frames(writer, rx));
    match read_frame(&mut reader).await {
        Ok(Some(Frame::Control(Control::Exec(req)))) => exec(req, reader, &tx).await,
        Ok(Some(Frame::Control(Control::Push { path, mode }))) => {
            let reply = match push(&path, mode, &mut reader).await {
                Ok(()) => Control::Done,
                Err(e) => Control::Error {
                    message: format!("cannot write {path}: {e}"),
                },
            };
            let _ = tx.send(Frame::Control(reply)).await;
        }
        Ok(Some(Frame::Control(Control::Pull { path }))) => {
            if let Err(e) = pull(&path, &tx).await {
                send_error(&tx, format!("cannot read {path}: {e}")).await;
            }
        }
        Ok(Some(Frame::Control(Control::GetStats))) => {
            let reply = match stats() {
                Ok(s) => Control::Stats(s),
                Err(e) => Control::Error {
                    message: format!("cannot read /proc: {e}"),
                },
            };
            let _ = tx.send(Frame::Control(reply)).await;
        }
        Ok(Some(Frame::Control(Control::Health))) => {
            let _ = tx.send(Frame::Control(Control::Hello(hello()))).await;
        }
        Ok(Some(Frame::Control(Control::Shutdown { reboot }))) => {
            let verb = if reboot { "reboot" } else { "poweroff" };
            if crate::init::under_init() {
                // No systemd: PID 1 is this agent's init mode.
                let reply = match crate::init::request_shutdown(reboot) {
                    Ok(()) => Control::Exit {
                        code: Some(0),
                        signal: None,
                    },
                    Err(e) => Control::Error {
                        message: format!("cannot signal init to {verb}: {e}"),
                    },
                };
                let _ = tx.send(Frame::Control(reply)).await;
                drop(tx);
                let _ = writer_task.await;
                return;
            }
            let status = tokio::process::Command::new("systemctl")
                .arg(verb)
                .status()
                .await;
            let reply = match status {
                Ok(s) => Control::Exit {
                    code: s.code(),
                    signal: None,
                },
                Err(e) => Control::Error {
                    message: format!("cannot run systemctl {verb}: {e}"),
                },
            };
            let _ = tx.send(Frame::Control(reply)).await;
        }
        Ok(Some(other)) => send_error(&tx, format!("expected a request, got {other:?}")).await,
        Ok(None) => {}
        Err(e) => send_error(&tx, e.to_string()).await,
    }
    drop(tx);
    let _ = writer_task.await;
}

/// Whether a vsock peer may use the agent: only the host (CID 2). Anything
/// else is a process in this guest reaching the agent through
/// `vsock_loopback` (CID 1, or the guest's own CID) or another VM, and
/// would otherwise run commands here as root.
pub fn peer_allowed(cid: u32) -> bool {
    cid == crate::HOST_CID
}

/// Receives a file into a fresh temporary sibling of `path`, then renames
/// it into place so readers never see half a file; names planted by guest
/// users are never followed (see [`crate::files`]). The host is trusted with
/// every permission bit, setuid included.
async fn push<R: AsyncRead + Unpin>(path: &str, mode: u32, input: &mut R) -> std::io::Result<()> {
    let target = std::path::Path::new(path);
    if !target.is_absolute() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path must be absolute",
        ));
    }
    let mut file = crate::files::NewFile::create(target, "vmctl-push")?;
    loop {
        match read_frame(input).await {
            Ok(Some(Frame::Stdin(data))) => file.file().write_all(&data).await?,
            Ok(Some(Frame::StdinEof)) => break,
            Ok(other) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("expected file data, got {other:?}"),
                ))
            }
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
    file.commit(mode & 0o7777).await
}

/// Sends a file as `file`, `stdout` chunks, `done`.
async fn pull(path: &str, tx: &mpsc::Sender<Frame>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = tokio::fs::File::open(path).await?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let info = Control::File {
        mode: meta.permissions().mode() & 0o7777,
        size: meta.len(),
    };
    if tx.send(Frame::Control(info)).await.is_err() {
        return Ok(());
    }
    let mut buf = vec![0u8; MAX_PAYLOAD.min(256 * 1024)];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if tx.send(Frame::Stdout(buf[..n].to_vec())).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx.send(Frame::Control(Control::Done)).await;
    Ok(())
}

/// Memory, load and uptime from `/proc`.
pub fn stats() -> std::io::Result<Stats> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|k| k * 1024)
            .unwrap_or(0)
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg")?;
    let mut load = [0.0; 3];
    for (slot, field) in load.iter_mut().zip(loadavg.split_whitespace()) {
        *slot = field.parse().unwrap_or(0.0);
    }
    Ok(Stats {
        mem_total_bytes: kib("MemTotal"),
        mem_available_bytes: kib("MemAvailable"),
        load,
        uptime_secs: hello().uptime_secs,
    })
}

async fn send_error(tx: &mpsc::Sender<Frame>, message: String) {
    tracing::warn!("request failed: {message}");
    let _ = tx.send(Frame::Control(Control::Error { message })).await;
}

async fn write_frames<W: AsyncWrite>(writer: W, mut rx: mpsc::Receiver<Frame>) {
    let mut writer = Box::pin(writer);
    while let Some(frame) = rx.recv().await {
        if write_frame(&mut writer, &frame).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// Forwards everything `reader` yields as frames made by `wrap`.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    tx: mpsc::Sender<Frame>,
    wrap: fn(Vec<u8>) -> Frame,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn exec<S: AsyncRead>(req: ExecRequest, mut input: ReadHalf<S>, tx: &mpsc::Sender<Frame>) {
    let Some(program) = req.argv.first() else {
        return send_error(tx, "exec needs a program: argv is empty".into()).await;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&req.argv[1..])
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(req.cwd.as_deref().unwrap_or("/"))
        .kill_on_drop(true);
    if let Some(uid) = req.uid {
        cmd.uid(uid);
    }
    if let Some(gid) = req.gid.or(req.uid) {
        cmd.gid(gid);
    }
    let terminal = match req.pty {
        Some(size) => match pty::attach(&mut cmd, size) {
            Ok(master) => Some(master),
            Err(e) => return send_error(tx, format!("cannot allocate a terminal: {e}")).await,
        },
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    let spawned = cmd.spawn();
    // The command holds our copies of the terminal's slave side: close them,
    // or the master never sees the session end.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return send_error(tx, format!("cannot run {program:?}: {e}")).await,
    };
    let pid = child.id().unwrap_or(0);
    let _ = tx.send(Frame::Control(Control::Started { pid })).await;

    // Output pumps; the exit message waits until they have drained.
    let mut pumps = Vec::new();
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(64);
    let master_fd = terminal.as_ref().map(|m| m.as_raw_fd());
    match terminal {
        Some(master) => {
            let (read, write) = pty::split(master);
            pumps.push(tokio::spawn(pump(read, tx.clone(), Frame::Stdout)));
            tokio::spawn(async move {
                let mut write = write;
                while let Some(Some(data)) = stdin_rx.recv().await {
                    if write.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
        }
        None => {
            let out = child.stdout.take().expect("stdout is piped");
            let err = child.stderr.take().expect("stderr is piped");
            pumps.push(tokio::spawn(pump(out, tx.clone(), Frame::Stdout)));
            pumps.push(tokio::spawn(pump(err, tx.clone(), Frame::Stderr)));
            let mut stdin = child.stdin.take().expect("stdin is piped");
            tokio::spawn(async move {
                while let Some(Some(data)) = stdin_rx.recv().await {
                    if stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
                // Dropping stdin closes the pipe: the command sees EOF.
            });
        }
    }

    let mut reading = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            frame = read_frame(&mut input), if reading => match frame {
                Ok(Some(Frame::Stdin(data))) => { let _ = stdin_tx.send(Some(data)).await; }
                Ok(Some(Frame::StdinEof)) => { let _ = stdin_tx.send(None).await; }
                Ok(Some(Frame::Control(Control::Kill { signal }))) => signal_child(pid, signal),
                Ok(Some(Frame::Control(Control::Resize(size)))) => {
                    if let Some(fd) = master_fd {
                        pty::resize(fd, size);
                    }
                }
                Ok(Some(other)) => tracing::warn!("ignoring unexpected frame during exec: {other:?}"),
                // The host went away: the command goes with it.
                Ok(None) | Err(_) => {
                    reading = false;
                    signal_child(pid, libc::SIGHUP);
                }
            },
        }
    };
    drop(stdin_tx);
    for p in pumps {
        let _ = p.await;
    }
    let reply = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Control::Exit {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(e) => Control::Error {
            message: format!("cannot wait for {program:?}: {e}"),
        },
    };
    let _ = tx.send(Frame::Control(reply)).await;
}

fn signal_child(pid: u32, signal: i32) {
    let Ok(signal) = nix::sys::signal::Signal::try_from(signal) else {
        tracing::warn!("ignoring invalid signal number {signal}");
        return;
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Pseudo-terminals for interactive sessions.
mod pty {
    use super::PtySize;
    use nix::pty::{openpty, Winsize};
    use std::os::fd::{OwnedFd, RawFd};
    use std::process::Stdio;

    fn winsize(size: PtySize) -> Winsize {
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }

    nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

    /// Opens a terminal of `size`, makes it `cmd`'s controlling terminal
    /// and standard streams, and returns its master side.
    pub fn attach(cmd: &mut tokio::process::Command, size: PtySize) -> nix::Result<OwnedFd> {
        let pty = openpty(Some(&winsize(size)), None)?;
        let slave = pty.slave;
        cmd.stdin(Stdio::from(
            slave.try_clone().map_err(|_| nix::Error::EBADF)?,
        ))
        .stdout(Stdio::from(
            slave.try_clone().map_err(|_| nix::Error::EBADF)?,
        ))
        .stderr(Stdio::from(slave));
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (setsid, ioctl).
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(pty.master)
    }

    /// Splits the master side into an async reader and writer.
    pub fn split(master: OwnedFd) -> (tokio::fs::File, tokio::fs::File) {
        let write = master.try_clone().expect("dup of the pty master");
        (
            tokio::fs::File::from_std(std::fs::File::from(master)),
            tokio::fs::File::from_std(std::fs::File::from(write)),
        )
    }

    /// Tells the terminal its new size (the kernel signals the foreground
    /// process group with SIGWINCH).
    pub fn resize(master: RawFd, size: PtySize) {
        let ws = winsize(size);
        // SAFETY: `master` is an open pty master owned by the session and
        // `ws` is a valid winsize that outlives the call.
        let _ = unsafe { set_winsize(master, &ws) };
    }
}

#[cfg(test)]
mod tests {
    use super::peer_allowed;

    #[test]
    fn only_the_host_may_connect() {
        let table = [
            (libc::VMADDR_CID_ANY, false),
            (libc::VMADDR_CID_HYPERVISOR, false),
            (libc::VMADDR_CID_LOCAL, false),
            (libc::VMADDR_CID_HOST, true),
            // This guest's own CID, or another VM's.
            (3, false),
            (4, false),
            (1234, false),
            (u32::MAX - 1, false),
        ];
        for (cid, allowed) in table {
            assert_eq!(peer_allowed(cid), allowed, "CID {cid}");
        }
    }
}
