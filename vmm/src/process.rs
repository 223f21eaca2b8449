//! Child-process plumbing shared by the drivers.
//!
//! Every child (QEMU, `vhost-device-vsock`, cloud-hypervisor) is started by
//! [`spawn`], which
//! - forks on one dedicated thread that lives as long as the process, and
//!   sets `PR_SET_PDEATHSIG(SIGKILL)` in the child, so a launcher killed by
//!   SIGKILL outside systemd never leaves a VMM behind (`kill_on_drop` only
//!   covers an orderly drop);
//! - pipes the child's stderr through a forwarding thread that copies every
//!   line to our stderr (the unit's journal) and keeps the last lines, so
//!   [`Error::ExitedEarly`] can say *why* the VMM died. Each line is cut at
//!   [`LINE_MAX`] bytes and escaped ([`escape_log_text`]): a child's output
//!   never starts a journal line of its own, nor grows our memory.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::{io_err, Error, Result};
use crate::sandbox::{self, Identity};

/// Longest line forwarded from a child's stderr; the rest of it is dropped.
pub const LINE_MAX: usize = 4096;

/// Appended to a line cut at its limit.
pub const TRUNCATED: &str = "…[truncated]";

/// `bytes` as one line of log text: printable ASCII as it is, a backslash
/// doubled, every other byte (control characters including tabs, escape
/// sequences, newlines, non-ASCII) as `\xNN`. The result never contains a
/// line break or a terminal control character, so text from a child or a
/// guest cannot start a log line of its own or recolour a terminal.
pub fn escape_log_text(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// Reads one line (without its `\n`) into `line`, keeping at most `max`
/// bytes of it and discarding the rest. Returns `None` at EOF, else whether
/// the line was cut.
fn read_line_capped(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<bool>> {
    line.clear();
    let mut cut = false;
    let mut read_any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(read_any.then_some(cut));
        }
        read_any = true;
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max.saturating_sub(line.len());
        cut |= chunk.len() > room;
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(cut));
        }
    }
}

/// Lines of a child's stderr kept for [`Error::ExitedEarly`].
const TAIL_LINES: usize = 10;
/// Longest line kept in the tail (longer ones are cut).
const TAIL_LINE_MAX: usize = 1000;
/// How long to wait, after the child exited, for its last stderr bytes.
const TAIL_DRAIN: Duration = Duration::from_secs(1);

/// First executable named `name` on `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The last lines a child wrote to stderr (everything is also forwarded to
/// our own stderr as it arrives).
#[derive(Debug, Clone)]
pub(crate) struct StderrTail(Arc<TailInner>);

#[derive(Debug, Default)]
struct TailInner {
    lines: Mutex<VecDeque<String>>,
    /// Set by the forwarding thread at EOF (the child and every copy of the
    /// pipe's write end are gone).
    done: AtomicBool,
}

impl StderrTail {
    /// Start the thread copying `pipe` to our stderr. A plain thread, not a
    /// tokio task: it must keep draining the pipe for as long as the child
    /// lives, whatever happens to the runtime (a child writing to a pipe
    /// nobody reads blocks, or dies of EPIPE).
    fn forward(pipe: io::PipeReader, program: &str) -> io::Result<StderrTail> {
        let tail = StderrTail(Arc::default());
        let inner = tail.0.clone();
        std::thread::Builder::new()
            .name(format!("{program}-stderr"))
            .spawn(move || {
                let mut pipe = io::BufReader::new(pipe);
                let mut line = Vec::new();
                while let Ok(Some(cut)) = read_line_capped(&mut pipe, &mut line, LINE_MAX) {
                    let mut text = escape_log_text(&line);
                    if cut {
                        text.push_str(TRUNCATED);
                    }
                    let _ = writeln!(io::stderr(), "{text}");
                    let text = text.trim_end();
                    if text.is_empty() {
                        continue;
                    }
                    let text: String = text.chars().take(TAIL_LINE_MAX).collect();
                    let mut lines = inner.lines.lock().expect("stderr tail lock");
                    if lines.len() == TAIL_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(text);
                }
                inner.done.store(true, Ordering::Release);
            })?;
        Ok(tail)
    }

    /// The kept lines, once the child's stderr reached EOF (or after
    /// [`TAIL_DRAIN`], whatever arrived by then).
    async fn text(&self) -> String {
        let deadline = tokio::time::Instant::now() + TAIL_DRAIN;
        while !self.0.done.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lines = self.0.lines.lock().expect("stderr tail lock");
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Start `program args` directly (no shell). stdin is closed, stdout is
/// inherited, stderr is forwarded line by line to ours (so both land in the
/// unit's journal) and its tail kept. The child is killed if its handle is
/// dropped, and by the kernel if this process dies. With `identity` it runs
/// as that user with no capabilities ([`sandbox::drop_privileges`]).
pub(crate) fn spawn(
    program: &Path,
    args: &[OsString],
    identity: Option<Identity>,
) -> Result<(Child, StderrTail)> {
    spawn_keeping(program, args, &[], identity)
}

/// [`spawn`], and the child inherits our descriptors `keep_fds` at the same
/// numbers (every other descriptor of ours is close-on-exec, as Rust opens
/// them). The caller keeps them open until the spawn returns.
pub(crate) fn spawn_keeping(
    program: &Path,
    args: &[OsString],
    keep_fds: &[i32],
    identity: Option<Identity>,
) -> Result<(Child, StderrTail)> {
    let spawn_err = |source: io::Error| Error::Spawn {
        program: program.display().to_string(),
        source,
    };
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|e| spawn_err(io::Error::other(e)))?;
    let (reader, writer) = io::pipe().map_err(spawn_err)?;
    let name = program
        .file_name()
        .map_or_else(|| "child".into(), |n| n.to_string_lossy());
    let tail = StderrTail::forward(reader, &name).map_err(spawn_err)?;

    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stderr(writer)
        .kill_on_drop(true);
    let parent = std::process::id();
    let keep_fds = keep_fds.to_vec();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called. It makes raw system calls
    // only (prctl, setgroups, setresgid, setresuid, umask, getppid, fcntl),
    // reads the vector allocated before the fork, and builds io::Error
    // values from plain integers (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(id) = identity {
                sandbox::drop_privileges(id)?;
            }
            // After the uid change, which clears the parent-death signal.
            die_with_parent(parent)?;
            keep_open_across_exec(&keep_fds)
        });
    }
    // The command (holding our copy of the pipe's write end) is dropped on
    // the spawner thread right after the fork, so the forwarding thread sees
    // EOF once the child is gone.
    let child = on_spawner_thread(move || {
        let _entered = runtime.enter(); // tokio registers the child with this runtime
        cmd.spawn()
    })
    .map_err(spawn_err)?;
    Ok((child, tail))
}

/// In the forked child: ask for SIGKILL when the parent *thread* exits, and
/// close the race with a parent that died before the prctl.
fn die_with_parent(parent: u32) -> io::Result<()> {
    use std::ffi::{c_int, c_ulong};
    unsafe extern "C" {
        fn prctl(option: c_int, ...) -> c_int;
        fn getppid() -> c_int;
    }
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;
    const ESRCH: i32 = 3;
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) reads no memory of ours;
    // getppid cannot fail.
    unsafe {
        if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
        if getppid() as u32 != parent {
            return Err(io::Error::from_raw_os_error(ESRCH));
        }
    }
    Ok(())
}

/// In the forked child: clear `FD_CLOEXEC` on `fds` so the program inherits them.
fn keep_open_across_exec(fds: &[i32]) -> io::Result<()> {
    use std::ffi::c_int;
    unsafe extern "C" {
        fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    }
    const F_SETFD: c_int = 2;
    for &fd in fds {
        // SAFETY: F_SETFD with flags 0 only changes the descriptor's flags.
        if unsafe { fcntl(fd, F_SETFD, 0 as c_int) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

type Job = Box<dyn FnOnce() + Send>;

/// Run `f` on the spawner thread and wait for its result.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process. Callers may run on threads that end early (tokio's blocking
/// pool retires idle threads after 10 s, a multi-thread runtime may be shut
/// down while the VM should live on): forking there would SIGKILL a healthy
/// VMM. So all children are forked by one thread that is started on first
/// use and never exits (its channel's sender lives in a static).
fn on_spawner_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    static SPAWNER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(f());
    });
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
        if spawner.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("vmctl-vmm-spawner".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })?;
            *spawner = Some(tx);
        }
        let tx = spawner.as_ref().expect("spawner set above");
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            // Cannot happen (the thread only ends with its channel), but
            // fail the spawn rather than forking on this thread.
            drop(job);
            *spawner = None;
            return Err(io::Error::other("the spawner thread is gone"));
        }
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the spawner thread is gone")))
}

/// The [`Error::ExitedEarly`] for `program`, with the tail of its stderr.
async fn exited_early(program: &str, status: ExitStatus, tail: &StderrTail) -> Error {
    Error::ExitedEarly {
        program: program.into(),
        status,
        stderr: tail.text().await,
    }
}

/// Run `fut` (a start-up step talking to `child`) unless `child` exits
/// first: then fail at once with [`Error::ExitedEarly`] instead of waiting
/// for `fut`'s own timeout. When `fut` fails and the child exits within a
/// moment, the exit is reported too (it is the real cause).
pub(crate) async fn while_running<T>(
    child: &mut Child,
    tail: &StderrTail,
    program: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let waited = tokio::select! {
        biased;
        r = fut => match r {
            Ok(v) => return Ok(v),
            Err(e) => match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
                Ok(waited) => waited,
                Err(_) => return Err(e),
            },
        },
        waited = child.wait() => waited,
    };
    let status = waited.map_err(io_err(format!("waiting for {program}")))?;
    Err(exited_early(program, status, tail).await)
}

/// Wait until `socket` exists (wrap in [`while_running`] to stop early
/// when its creator exits).
pub(crate) async fn socket_appears(program: &str, socket: &Path, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !socket.exists() {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{program} to create {}",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Remove a stale socket file left by a previous run.
pub(crate) fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing stale {}", path.display()))(e)),
    }
}

/// SIGKILL and reap `child`, ignoring "already exited".
pub(crate) async fn kill(child: &mut Child) -> Result<()> {
    match child.kill().await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(io_err("killing child")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::Instant;

    /// Set in the re-executed test binary that plays the launcher.
    const HELPER_ENV: &str = "VMCTL_VMM_PDEATHSIG_HELPER";
    const PID_TAG: &str = "VMCTL-VMM-CHILD-PID ";

    /// `/proc/PID` gone, or a zombie nobody reaps (a container's PID 1 may not).
    fn is_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    /// Not a test on its own: the "launcher" that
    /// `children_die_with_the_launcher_not_with_the_spawning_thread` runs.
    #[test]
    fn pdeathsig_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        // Spawn from a thread that exits right away: with a fork on this
        // thread, PDEATHSIG would kill the child when it ends.
        let child = std::thread::spawn(move || {
            let _entered = handle.enter();
            spawn(Path::new("sleep"), &["300".into()], None).map(|(child, _)| child)
        })
        .join()
        .unwrap()
        .unwrap();
        println!("{PID_TAG}{}", child.id().unwrap());
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(300));
        drop(child);
    }

    #[test]
    fn children_die_with_the_launcher_not_with_the_spawning_thread() {
        let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["process::tests::pdeathsig_helper", "--exact", "--nocapture"])
            .env(HELPER_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = io::BufReader::new(helper.stdout.take().unwrap()).lines();
        let pid: u32 = loop {
            let line = lines
                .next()
                .expect("helper ended without a child pid")
                .unwrap();
            if let Some(pid) = line.strip_prefix(PID_TAG) {
                break pid.trim().parse().unwrap();
            }
        };
        // The thread that spawned it is gone, the child must live on.
        std::thread::sleep(Duration::from_millis(300));
        assert!(!is_gone(pid), "child died with the spawning thread");
        // SIGKILL the "launcher": no destructor runs, only PDEATHSIG helps.
        helper.kill().unwrap();
        helper.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_gone(pid) {
            assert!(
                Instant::now() < deadline,
                "child {pid} survived its SIGKILLed parent"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn early_exit_is_noticed_at_once_with_the_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("never.sock");
        let script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i >&2; done; \
                      printf 'no newline at the end' >&2; exit 3";
        let (mut child, tail) =
            spawn(Path::new("sh"), &["-c".into(), script.into()], None).unwrap();
        let started = Instant::now();
        let err = while_running(
            &mut child,
            &tail,
            "sh",
            socket_appears("sh", &socket, Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        let Error::ExitedEarly {
            program,
            status,
            stderr,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(program, "sh");
        assert_eq!(status.code(), Some(3));
        let expected: Vec<String> = (4..=12)
            .map(|i| format!("line {i}"))
            .chain(["no newline at the end".to_owned()])
            .collect();
        assert_eq!(stderr, &expected.join("\n"));
        assert!(
            err.to_string()
                .starts_with("sh exited early with exit status: 3: line 4\nline 5"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_step_reports_the_exit_that_caused_it() {
        let (mut child, tail) = spawn(
            Path::new("sh"),
            &["-c".into(), "sleep 0.1; echo dying >&2; exit 1".into()],
            None,
        )
        .unwrap();
        let step = async { Err::<(), _>(Error::Timeout("something the child should do".into())) };
        let err = while_running(&mut child, &tail, "sh", step)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ExitedEarly { stderr, .. } if stderr == "dying"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_failing_step_with_a_live_child_keeps_its_error() {
        let (mut child, tail) = spawn(Path::new("sleep"), &["30".into()], None).unwrap();
        let step = async { Err::<(), _>(Error::Timeout("x".into())) };
        let err = while_running(&mut child, &tail, "sleep", step)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        kill(&mut child).await.unwrap();
    }

    #[test]
    fn log_text_is_escaped_onto_one_line() {
        assert_eq!(escape_log_text(b"plain text 42"), "plain text 42");
        assert_eq!(escape_log_text(b"a\tb"), "a\\x09b");
        assert_eq!(
            escape_log_text(b"a\nMAINPID=1\r\x1b[31mred\x7f\\"),
            "a\\x0aMAINPID=1\\x0d\\x1b[31mred\\x7f\\\\"
        );
        assert_eq!(escape_log_text("é".as_bytes()), "\\xc3\\xa9");
        for b in 0..=255u8 {
            let text = escape_log_text(&[b]);
            assert!(!text.chars().any(char::is_control), "{b}: {text:?}");
        }
    }

    #[test]
    fn lines_are_capped_and_the_rest_discarded() {
        let mut input = io::BufReader::with_capacity(7, &b"short\nthis one is long\nlast"[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line_capped(&mut input, &mut line, 8).unwrap(),
            Some(false)
        );
        assert_eq!(line, b"short");
        assert_eq!(
            read_line_capped(&mut input, &mut line, 8).unwrap(),
            Some(true)
        );
        assert_eq!(line, b"this one");
        assert_eq!(
            read_line_capped(&mut input, &mut line, 8).unwrap(),
            Some(false)
        );
        assert_eq!(line, b"last");
        assert_eq!(read_line_capped(&mut input, &mut line, 8).unwrap(), None);
    }

    /// The kept descriptor reaches the child at its number; an ordinary
    /// one (close-on-exec) does not.
    #[tokio::test]
    async fn kept_descriptors_are_inherited_and_only_those() {
        use std::os::fd::AsRawFd;
        let kept = std::fs::File::open("/dev/null").unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let probe = |fd: i32| -> Vec<OsString> {
            vec!["-c".into(), format!("test -e /proc/self/fd/{fd}").into()]
        };
        let sh = Path::new("/bin/sh");
        let fd = kept.as_raw_fd();
        let (mut child, _) = spawn_keeping(sh, &probe(fd), &[fd], None).unwrap();
        assert!(
            child.wait().await.unwrap().success(),
            "kept fd {fd} missing"
        );
        let fd = other.as_raw_fd();
        let (mut child, _) = spawn_keeping(sh, &probe(fd), &[kept.as_raw_fd()], None).unwrap();
        assert!(!child.wait().await.unwrap().success(), "fd {fd} leaked");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = spawn(Path::new("/nonexistent/vmm"), &[], None).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/vmm"), "{err}");
    }
}
