//! The real `vmctl-launch` binary outside systemd, against real QEMU (TCG
//! here) and vhost-device-vsock, with `NOTIFY_SOCKET` pointing at a datagram
//! socket this test reads.
//!
//! Guest-booting tests need a guest image directory
//! (`{root.raw,vmlinuz,initrd.img}`) in `VMCTL_TEST_IMAGE_DIR` (set by
//! `cargo xtask test`); they are skipped, loudly, without it. When the
//! image has no guest agent yet, `VMCTL_TEST_FAKE_HELLO=1` makes the test
//! send the agent's hello itself once the guest's login prompt appears.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NAME: &str = "t1";

struct Vm {
    dir: tempfile::TempDir,
    child: Child,
    notify: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Launcher stderr lines already taken from `stderr`.
    log: Vec<String>,
}

fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn vhost_device_vsock() -> Option<PathBuf> {
    // The launcher's own variable, or the one vmm's tests use.
    for var in ["VMCTL_VHOST_DEVICE_VSOCK", "VHOST_DEVICE_VSOCK"] {
        if let Some(p) = std::env::var_os(var) {
            return Some(p.into());
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock");
    if built.exists() {
        return Some(built);
    }
    // The full path from PATH: the test copies the binary to where the
    // VMM's uid can run it, and a bare name would be looked up by that uid
    // in PATH directories it may not enter (xtask puts the cached build,
    // under root's home, on PATH).
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("vhost-device-vsock"))
            .find(|candidate| candidate.is_file())
    })
}

/// What the test VM boots.
enum Boot<'a> {
    /// The image's kernel, initramfs and root disk.
    Image(&'a Path),
    /// The image's kernel alone and a blank disk: it never reaches userspace.
    KernelOnly(&'a Path),
    /// An empty kernel file.
    EmptyKernel,
}

/// Writes a spec, an image and a disk under a temp dir.
fn prepare(boot: Boot) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Run as root, the launcher starts the VMM as the VM's own uid, which
    // must pass through here to reach the disk and image (under systemd,
    // the unit's TemporaryFileSystem= makes the parents 0755).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    for sub in ["vms", "images/default", "disks/t1"] {
        std::fs::create_dir_all(state.join(sub)).unwrap();
    }
    std::fs::write(
        state.join("vms/t1.json"),
        r#"{"name":"t1","id":"0123456789abcdef0123456789abcdef","owner_uid":0,"vcpus":2,
            "memory_bytes":1073741824,"disk_bytes":0,"image":"default","cid":3}"#,
    )
    .unwrap();
    let img = state.join("images/default");
    let disk = state.join("disks/t1/root.raw");
    match boot {
        Boot::Image(src) => {
            std::fs::copy(src.join("vmlinuz"), img.join("vmlinuz")).unwrap();
            if src.join("initrd.img").exists() {
                std::fs::copy(src.join("initrd.img"), img.join("initrd.img")).unwrap();
            }
            let ok = Command::new("cp")
                .arg("--sparse=always")
                .arg(src.join("root.raw"))
                .arg(&disk)
                .status()
                .unwrap()
                .success();
            assert!(ok, "copying the root disk failed");
        }
        Boot::KernelOnly(src) => {
            std::fs::copy(src.join("vmlinuz"), img.join("vmlinuz")).unwrap();
            std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        }
        Boot::EmptyKernel => {
            std::fs::write(img.join("vmlinuz"), b"").unwrap();
            std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        }
    }
    dir
}

fn lines_of<R: std::io::Read + Send + 'static>(r: R, echo: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("launcher: {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn launch(dir: tempfile::TempDir, boot_timeout: u64, stop_timeout: u64) -> Vm {
    let notify_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let (tx, notify) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            eprintln!("notify: {msg:?}");
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmctl-launch"));
    cmd.arg(NAME)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .arg("--boot-timeout")
        .arg(boot_timeout.to_string())
        .arg("--stop-timeout")
        .arg(stop_timeout.to_string())
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(v) = vhost_device_vsock() {
        // Where the VMM's uid can run it (the build's copy may be in root's
        // home, mode 0700).
        let v = match v.parent() {
            Some(p) if !p.as_os_str().is_empty() => {
                let copy = dir.path().join("vhost-device-vsock");
                std::fs::copy(&v, &copy).unwrap();
                copy
            }
            _ => v,
        };
        cmd.env("VMCTL_VHOST_DEVICE_VSOCK", v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = lines_of(child.stderr.take().unwrap(), true);
    Vm {
        dir,
        child,
        notify,
        stderr,
        log: Vec::new(),
    }
}

/// A test that fails midway must not leave a VM running: SIGKILL the
/// launcher if it is still there; vmctl-vmm's PR_SET_PDEATHSIG takes QEMU
/// and vhost-device-vsock with it.
impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Vm {
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("vmctl-launch did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `READY=1`, sending a fake hello if asked to; returns all
    /// notify messages seen so far.
    fn wait_ready(&mut self, limit: Duration) -> Vec<String> {
        let fake = std::env::var_os("VMCTL_TEST_FAKE_HELLO").is_some();
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if fake {
                while let Ok(line) = self.stderr.try_recv() {
                    if line.contains("GNU/Linux") && line.ends_with("ttyS0") {
                        self.send_hello();
                    }
                    self.log.push(line);
                }
            }
            if let Ok(msg) = self.notify.recv_timeout(Duration::from_millis(200)) {
                let ready = msg.lines().any(|l| l == "READY=1");
                seen.push(msg);
                if ready {
                    return seen;
                }
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("vmctl-launch exited before READY=1: {s}; notify: {seen:?}");
            }
        }
        panic!("no READY=1 within {limit:?}; notify: {seen:?}");
    }

    /// Waits for a launcher stderr line containing `needle`.
    fn wait_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .stderr
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => self.log.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(_) => panic!("no launcher log line with {needle:?} within {limit:?}"),
            }
        }
    }

    fn send_hello(&self) {
        let path = self.dir.path().join("run/vm/t1/vsock_1025");
        let mut s = UnixStream::connect(path).unwrap();
        let payload = br#"{"type":"hello","version":"test","kernel_release":"fake","boot_id":"0123456789abcdef0123456789abcdef","uptime_secs":1}"#;
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(1);
        frame.extend_from_slice(payload);
        s.write_all(&frame).unwrap();
    }

    /// A client of the console socket gets the guest's serial output and
    /// its input reaches the guest: pressing Enter brings a login prompt.
    fn console_shows_login(&self) {
        let path = self.dir.path().join("run/vm/t1/console");
        let mut con = UnixStream::connect(path).unwrap();
        con.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            con.write_all(b"\r").unwrap();
            match std::io::Read::read(&mut con, &mut buf) {
                Ok(0) => panic!("console closed"),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("console: {e}"),
            }
            if String::from_utf8_lossy(&seen).contains("login:") {
                return;
            }
        }
        panic!(
            "no login prompt on the console: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }

    /// Processes whose command line mentions this test's directory.
    fn leftovers(&self) -> Vec<String> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&needle) {
                    found.push(cmdline);
                }
            }
        }
        found
    }

    /// The QEMU child of the launcher.
    fn qemu_pid(&self) -> i32 {
        self.child_pid("qemu-system")
    }

    /// The launcher's child whose command name starts with `comm`.
    fn child_pid(&self, comm: &str) -> i32 {
        // Children hang under the thread that forked them (vmctl-vmm forks
        // from a dedicated thread), so look at every thread's children.
        let pid = self.child.id();
        let mut children = String::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            children += &std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            children.push(' ');
        }
        let found = children.split_whitespace().find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|name| name.starts_with(comm))
        });
        found
            .unwrap_or_else(|| panic!("no {comm} child of the launcher"))
            .parse()
            .unwrap()
    }
}

fn image_dir() -> Option<PathBuf> {
    match std::env::var_os("VMCTL_TEST_IMAGE_DIR") {
        Some(d) => Some(d.into()),
        None => {
            eprintln!("SKIPPED: VMCTL_TEST_IMAGE_DIR is not set (run `cargo xtask test`, or point it at a directory with root.raw, vmlinuz, initrd.img)");
            None
        }
    }
}

fn tools_available() -> bool {
    let ok = qemu_available() && vhost_device_vsock().is_some();
    if !ok {
        eprintln!("SKIPPED: qemu-system-x86_64 or vhost-device-vsock is not installed");
    }
    ok
}

#[test]
fn missing_spec_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmctl-launch"))
        .arg("nope")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vms/nope.json") && err.contains("vmctl create nope"),
        "{err}"
    );
}

#[test]
fn unbootable_kernel_fails_and_leaves_nothing_running() {
    if !tools_available() {
        return;
    }
    let mut vm = launch(prepare(Boot::EmptyKernel), 15, 5);
    let status = vm.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

#[test]
fn a_kernel_that_cannot_mount_root_fails_at_once_saying_why() {
    let Some(image) = image_dir() else { return };
    if !tools_available() {
        return;
    }
    // A blank disk: the kernel boots and panics on the root filesystem.
    // The launcher reads that from the console and fails long before its
    // 240 s boot timeout (the deadline below is "does not hang", not speed).
    let mut vm = launch(prepare(Boot::KernelOnly(&image)), 240, 5);
    let status = vm.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "{status}");
    // The launcher has exited: its stderr ends, and so does this loop.
    while let Ok(line) = vm.stderr.recv_timeout(Duration::from_secs(5)) {
        vm.log.push(line);
    }
    assert!(
        vm.log
            .iter()
            .any(|l| l.contains("cannot mount the root disk")),
        "the failure does not say why: {:?}",
        vm.log
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

/// The VMM process `pid` runs as the VM's identity (0x7F000000 + CID 3),
/// with no capabilities at all, no_new_privs and a seccomp filter.
fn assert_unprivileged(pid: i32, what: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let id = (0x7F00_0000u32 + 3).to_string();
    assert_eq!(field("Uid:"), [id.as_str(); 4], "{what}: {status}");
    assert_eq!(field("Gid:"), [id.as_str(); 4], "{what}: {status}");
    assert_eq!(field("Groups:"), Vec::<&str>::new(), "{what}");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(cap), ["0000000000000000"], "{what} {cap}");
    }
    assert_eq!(field("NoNewPrivs:"), ["1"], "{what}");
    if what == "qemu-system" {
        assert_eq!(field("Seccomp:"), ["2"], "QEMU runs with -sandbox on");
    }
}

#[test]
fn ready_then_sigterm_powers_off_cleanly() {
    let Some(image) = image_dir() else { return };
    if !tools_available() {
        return;
    }
    let mut vm = launch(prepare(Boot::Image(&image)), 240, 60);
    let seen = vm.wait_ready(Duration::from_secs(260));
    assert!(
        seen.iter()
            .any(|m| m.lines().any(|l| l == "STATUS=Running")),
        "{seen:?}"
    );
    vm.console_shows_login();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for comm in ["qemu-system", "vhost-device-vs"] {
            assert_unprivileged(vm.child_pid(comm), comm);
        }
    }
    // Guest systemd got `vmm.notify_socket` and reported boot completion on
    // host port 1026 (before or after the agent's hello).
    vm.wait_log("guest systemd reports READY=1", Duration::from_secs(180));
    let pid = Pid::from_raw(vm.child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    let status = vm.wait_exit(Duration::from_secs(75));
    assert_eq!(status.code(), Some(0), "{status}");
    // The guest's own view of the power-off reached the log.
    vm.wait_log("guest systemd: shutting down", Duration::from_secs(1));
    vm.wait_log("shutdown: poweroff", Duration::from_secs(1));
    let stopping: Vec<String> = vm.notify.try_iter().collect();
    assert!(
        stopping.iter().any(|m| m.contains("STOPPING=1")),
        "{stopping:?}"
    );
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

#[test]
fn killed_vmm_fails_the_launcher() {
    let Some(image) = image_dir() else { return };
    if !tools_available() {
        return;
    }
    let mut vm = launch(prepare(Boot::Image(&image)), 240, 60);
    vm.wait_ready(Duration::from_secs(260));
    kill(Pid::from_raw(vm.qemu_pid()), Signal::SIGKILL).unwrap();
    let status = vm.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "{status}");
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}

#[test]
fn boot_timeout_kills_the_vmm() {
    let Some(image) = image_dir() else { return };
    if !tools_available() {
        return;
    }
    // A guest that boots but whose hello never arrives: the test takes the
    // launcher's hello socket away as soon as it exists, so the agent's
    // connections find nobody. (A guest that cannot boot at all fails
    // early instead, from its console: see boot_check.rs.)
    let mut vm = launch(prepare(Boot::Image(&image)), 20, 5);
    let start = Instant::now();
    let hello = vm.dir.path().join("run/vm/t1/vsock_1025");
    let guest_notify = vm.dir.path().join("run/vm/t1/vsock_1026");
    while !(hello.exists() && guest_notify.exists()) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&hello).unwrap();
    // What guest systemd sends on port 1026 when it is up before the
    // agent; played by the test so the STATUS= check does not depend on
    // how fast this guest boots.
    UnixStream::connect(&guest_notify)
        .unwrap()
        .write_all(b"READY=1\nSTATUS=Ready.")
        .unwrap();
    let waiting = "STATUS=Guest systemd is up; waiting for the guest agent";
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains(waiting)) {
        match vm.notify.recv_timeout(Duration::from_secs(10)) {
            Ok(m) => seen.push(m),
            Err(e) => panic!("no {waiting:?}: {e}; notify: {seen:?}"),
        }
    }
    let status = vm.wait_exit(Duration::from_secs(90));
    while let Ok(m) = vm.notify.try_recv() {
        seen.push(m);
    }
    assert!(
        !seen.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "the unit is not ready without the agent: {seen:?}"
    );
    assert!(!status.success(), "{status}");
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm.leftovers(), Vec::<String>::new());
}
