//! Any bytes a local user can write to vmctld's varlink socket, sent to a
//! real varlink server of vmctld on a Unix socket (see README.md): the
//! server answers or closes within 10 s, only ever writes JSON replies,
//! never panics (a panic in any of its tasks aborts the process, which
//! libFuzzer reports), and keeps answering a fresh client.

#![no_main]

use std::{
    io::{ErrorKind, Read, Write},
    net::Shutdown,
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use vmctld::{varlink_server::Limits, Manager, Registry};

/// How long the server has to answer or close.
const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // libFuzzer's main, not Rust's, runs this process: writing to a
        // socket the server closed must be an error, not a SIGPIPE death.
        // SAFETY: setting a signal disposition to SIG_IGN has no other effect.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("io.vmctl.Manager");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let manager = Manager::new(Registry::new(dir.path().join("state")))
            .with_runtime_dir(dir.path().join("run"))
            .with_config(dir.path().join("vmctl.conf"));
        let limits = Limits {
            idle_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
        runtime.spawn(async move {
            let result = vmctld::varlink::serve(listener, Arc::new(manager), limits).await;
            panic!("the varlink server stopped: {result:?}");
        });
        Server {
            socket,
            _dir: dir,
            _runtime: runtime,
        }
    })
}

/// Sends `data`, half-closes, and returns everything the server sent back
/// until it closed.
fn exchange(data: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(&server().socket).expect("vmctld refused a connection");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    // The server may close first (a message over the limit): not an error.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut replies = Vec::new();
    match stream.read_to_end(&mut replies) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("no answer and no close within {DEADLINE:?}")
        }
        // Reset by the server: a close.
        Err(_) => {}
    }
    replies
}

fuzz_target!(|data: &[u8]| {
    let replies = exchange(data);
    for reply in replies.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let value: serde_json::Value = serde_json::from_slice(reply)
            .unwrap_or_else(|e| panic!("vmctld wrote a reply that is not JSON ({e}): {reply:?}"));
        assert!(value.is_object(), "{value}");
    }
    static RUNS: AtomicU64 = AtomicU64::new(0);
    if RUNS.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
        let answer = exchange(b"{\"method\":\"io.vmctl.Manager.GetVersion\"}\0");
        assert!(
            answer.windows(9).any(|w| w == b"\"version\""),
            "GetVersion not answered: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
});
