//! `varlink-flood`: a hostile local client of a varlink socket, run by the
//! end-to-end tests as an unprivileged user in the dev host.
//!
//! ```text
//! varlink-flood idle SOCKET N HOLD_SECS     # N connections that send nothing
//! varlink-flood half SOCKET N HOLD_SECS     # N connections with half a message each
//! varlink-flood endless SOCKET BYTES        # one message of BYTES without a terminator
//! varlink-flood message SOCKET KIND         # one malformed or boundary message
//! ```
//!
//! `idle` and `half` connect N times (a connect the server closes at once
//! still counts as connected), keep every connection for HOLD_SECS seconds
//! and print `connected C open O`: O is how many the server had not closed
//! by then. `endless` writes spaces until BYTES are sent or the server
//! closes, and prints `sent B ended E` (E: `complete` or the write error).
//! `message` sends one message of KIND (see [`message_bytes`]), reads
//! until the server closes (10 s at most) and prints `replied N ended E
//! REPLY` (E: `closed`, `timeout` or the error; REPLY: the first reply).
//! Exit 0 unless the arguments are bad (2) or the socket cannot be reached
//! at all (1).

use std::{
    io::{ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    process::ExitCode,
    thread,
    time::Duration,
};

const USAGE: &str = "usage: varlink-flood idle|half SOCKET N HOLD_SECS | endless SOCKET BYTES \
                     | message SOCKET garbage|notcall|badmethod|atlimit|overlimit";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [mode @ ("idle" | "half"), socket, n, hold] => match (n.parse(), hold.parse()) {
            (Ok(n), Ok(hold)) => flood(socket, mode == "half", n, hold),
            _ => return usage(),
        },
        ["message", socket, kind] => match message_bytes(kind) {
            Some(bytes) => message(socket, &bytes),
            None => return usage(),
        },
        ["endless", socket, bytes] => match bytes.parse() {
            Ok(bytes) => endless(socket, bytes),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("varlink-flood: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// Raises the soft descriptor limit to the hard one, for many connections.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a stack value; no other effect.
    unsafe {
        let mut rlim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) == 0 {
            rlim.rlim_cur = rlim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rlim);
        }
    }
}

fn flood(socket: &str, half: bool, n: usize, hold: u64) -> std::io::Result<()> {
    raise_nofile();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        match UnixStream::connect(socket) {
            Ok(mut s) => {
                if half {
                    // The server may have closed it already: not an error.
                    let _ = s.write_all(b"{\"method\":\"io.vmctl.Manager.Li");
                }
                conns.push(s);
            }
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                eprintln!("varlink-flood: connect {i}: {e}");
                break;
            }
        }
    }
    thread::sleep(Duration::from_secs(hold));
    let open = conns.iter().filter(|s| is_open(s)).count();
    println!("connected {} open {open}", conns.len());
    Ok(())
}

/// Whether the server still holds `s` open: a read would block.
fn is_open(mut s: &UnixStream) -> bool {
    s.set_nonblocking(true).is_ok()
        && matches!(s.read(&mut [0u8; 64]), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

fn endless(socket: &str, bytes: u64) -> std::io::Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0u64;
    let ended = loop {
        if sent >= bytes {
            break "complete".to_string();
        }
        match s.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) => break e.kind().to_string(),
        }
    };
    println!("sent {sent} ended {ended}");
    Ok(())
}

/// The size limit of one message (vmctld's `MAX_MESSAGE_BYTES`).
const LIMIT: usize = 64 * 1024;

/// One message of `kind`, NUL-terminated:
/// - `garbage`: bytes that are not JSON at all;
/// - `notcall`: JSON that is not a call (`method` is a number);
/// - `badmethod`: a well-formed call of a method that does not exist;
/// - `atlimit`: a `GetVersion` call padded to exactly the limit;
/// - `overlimit`: the same, one byte over the limit.
fn message_bytes(kind: &str) -> Option<Vec<u8>> {
    let padded = |len: usize| {
        let call = br#"{"method":"io.vmctl.Manager.GetVersion"}"#;
        let mut m = call[..call.len() - 1].to_vec();
        m.resize(len - 1, b' ');
        m.push(b'}');
        m
    };
    let mut bytes = match kind {
        "garbage" => (0..4096u32).map(|i| (i * 7919 % 251) as u8 | 1).collect(),
        "notcall" => br#"{"method": 5, "parameters": [1, 2]}"#.to_vec(),
        "badmethod" => br#"{"method":"io.vmctl.Manager.Nope"}"#.to_vec(),
        "atlimit" => padded(LIMIT),
        "overlimit" => padded(LIMIT + 1),
        _ => return None,
    };
    bytes.push(0);
    Some(bytes)
}

fn message(socket: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    // A server that closes early makes the write fail: that is an answer.
    let wrote = s.write_all(bytes);
    // Nothing more comes: the server answers and then sees the end.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut replies = Vec::new();
    let ended = match s.read_to_end(&mut replies) {
        Ok(_) => "closed".to_string(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            "timeout".to_string()
        }
        Err(e) => e.kind().to_string(),
    };
    let ended = match wrote {
        Err(e) if ended == "closed" => format!("closed (write: {})", e.kind()),
        _ => ended,
    };
    let first = replies.split(|b| *b == 0).next().unwrap_or_default();
    println!(
        "replied {} ended {ended} {}",
        replies.len(),
        String::from_utf8_lossy(first)
    );
    Ok(())
}
