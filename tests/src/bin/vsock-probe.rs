//! `vsock-probe`: the attacker's tool the end-to-end tests run inside guests.
//!
//! ```text
//! vsock-probe --cid C --port P [--send FILE|-] [--hold SECS] [--read]
//! ```
//!
//! Connects an `AF_VSOCK` stream to `C:P`, writes the bytes of `FILE` (or of
//! standard input for `-`), then keeps the connection open for `SECS`
//! seconds without sending anything, then (with `--read`) prints what the
//! peer sends until it closes, as text with non-printable bytes shown as
//! `\xNN`. Exit 0 on success; exit 1 with a message naming the cause when the
//! connect is refused or the connection is reset; exit 2 on bad usage.
//!
//! It uses only `libc` so that one build from the host runs in any glibc
//! guest at least as new as the build host's.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    cid: u32,
    port: u32,
    send: Option<String>,
    hold: Option<u64>,
    read: bool,
}

const USAGE: &str = "usage: vsock-probe --cid C --port P [--send FILE|-] [--hold SECS] [--read]";

fn parse_args() -> Result<Args, String> {
    let mut cid = None;
    let mut port = None;
    let mut send = None;
    let mut hold = None;
    let mut read = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--cid" => cid = Some(number(&value("--cid")?)?),
            "--port" => port = Some(number(&value("--port")?)?),
            "--send" => send = Some(value("--send")?),
            "--hold" => hold = Some(number(&value("--hold")?)?),
            "--read" => read = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        cid: u32::try_from(cid.ok_or("--cid is required")?).map_err(|e| e.to_string())?,
        port: u32::try_from(port.ok_or("--port is required")?).map_err(|e| e.to_string())?,
        send,
        hold,
        read,
    })
}

fn number(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// Connects an `AF_VSOCK` stream socket to `cid:port`.
fn connect(cid: u32, port: u32) -> std::io::Result<std::fs::File> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm and its size is passed with it.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(fd))
}

fn run(args: &Args) -> Result<(), String> {
    let target = format!("vsock {}:{}", args.cid, args.port);
    let mut stream =
        connect(args.cid, args.port).map_err(|e| format!("connect to {target}: {e}"))?;
    eprintln!("vsock-probe: connected to {target}");
    if let Some(source) = &args.send {
        let bytes = if source == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading standard input: {e}"))?;
            buf
        } else {
            std::fs::read(source).map_err(|e| format!("reading {source}: {e}"))?
        };
        stream
            .write_all(&bytes)
            .map_err(|e| format!("sending to {target}: {e}"))?;
        eprintln!("vsock-probe: sent {} bytes", bytes.len());
    }
    if let Some(secs) = args.hold {
        eprintln!("vsock-probe: holding the connection for {secs} s");
        std::thread::sleep(Duration::from_secs(secs));
    }
    if args.read {
        let mut received = Vec::new();
        stream
            .read_to_end(&mut received)
            .map_err(|e| format!("reading from {target}: {e}"))?;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(escape(&received).as_bytes());
        let _ = out.flush();
        eprintln!("vsock-probe: read {} bytes", received.len());
    }
    Ok(())
}

/// Printable ASCII and newlines as they are, every other byte as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b == b'\n' || (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vsock-probe: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
