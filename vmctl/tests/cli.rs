//! The real vmctl binary against a real vmctld on a temporary socket.

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

const VMCTL: &str = env!("CARGO_BIN_EXE_vmctl");

/// The vmctld binary: the sibling of vmctl in the target directory (built
/// by `cargo test --workspace` or `cargo test -p vmctld -p vmctl`); if it is
/// missing, it is built into a separate target directory so that this test
/// never waits on the lock of the running cargo.
fn vmctld_binary() -> PathBuf {
    let sibling = Path::new(VMCTL).with_file_name("vmctld");
    if sibling.exists() {
        return sibling;
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vmctl-tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "vmctld",
            "--bin",
            "vmctld",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cannot run cargo to build vmctld");
    assert!(status.success(), "building vmctld failed");
    target.join("debug/vmctld")
}

/// A vmctld serving a socket in a temp dir, killed when dropped.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("io.vmctl.Manager");
        let mut child = Command::new(vmctld_binary())
            .arg("--no-dbus")
            .arg("--varlink-address")
            .arg(&socket)
            .arg("--state-directory")
            .arg(dir.path().join("state"))
            // Never the machine's /run/vmctl.
            .arg("--runtime-directory")
            .arg(dir.path().join("run"))
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("vmctld exited early: {status}");
            }
            assert!(Instant::now() < deadline, "vmctld did not listen in time");
            thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, dir, socket }
    }

    fn vmctl(&self, args: &[&str]) -> Output {
        Command::new(VMCTL)
            .args(args)
            .env("VMCTL_ADDRESS", &self.socket)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "vmctl failed: {out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn list_json_is_empty_array() {
    let d = Daemon::start();
    assert_eq!(stdout(&d.vmctl(&["list", "--json"])), "[]\n");
}

#[test]
fn list_prints_header() {
    let d = Daemon::start();
    assert_eq!(
        stdout(&d.vmctl(&["list"])),
        "NAME  STATE  OWNER  VCPUS  MEMORY  IPV4  IPV6  MAC\n"
    );
}

#[test]
fn list_shows_vms() {
    let d = Daemon::start();
    let vms = d.dir.path().join("state/vms");
    std::fs::create_dir_all(&vms).unwrap();
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(d.dir.path()).unwrap().uid();
    std::fs::write(
        vms.join("blog.json"),
        format!(
            r#"{{"name":"blog","id":"0123456789abcdef0123456789abcdef","owner_uid":{uid},"vcpus":2,"memory_bytes":2147483648,"disk_bytes":10737418240,"image":"default","vmm":"qemu","cid":3}}"#
        ),
    )
    .unwrap();
    let table = stdout(&d.vmctl(&["list"]));
    let line = table.lines().nth(1).expect("a VM row");
    let cells: Vec<&str> = line.split_whitespace().collect();
    // The owner by user name, as the user database says.
    let id = std::process::Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .unwrap();
    let owner = String::from_utf8(id.stdout).unwrap();
    assert_eq!(
        cells,
        ["blog", "unknown", owner.trim(), "2", "2G", "-", "-", "-"]
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&d.vmctl(&["list", "--json"]))).unwrap();
    assert_eq!(json[0]["name"], "blog");
    assert_eq!(json[0]["ipv4"], serde_json::Value::Null);
}

#[test]
fn version_shows_both() {
    let d = Daemon::start();
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        stdout(&d.vmctl(&["version"])),
        format!("vmctl {v}\nvmctld {v} (interface version 1)\n")
    );
}

#[test]
fn address_flag_overrides_env() {
    let d = Daemon::start();
    let out = Command::new(VMCTL)
        .arg("--address")
        .arg(&d.socket)
        .args(["list", "--json"])
        .env("VMCTL_ADDRESS", "/nonexistent/socket")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "[]\n");
}

#[test]
fn unreachable_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let out = Command::new(VMCTL)
        .arg("--address")
        .arg(&socket)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot connect to vmctld at {}", socket.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(
        stderr.contains("systemctl status vmctld.socket"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn daemon_errors_are_printed_by_name_in_words() {
    let d = Daemon::start();
    // A state directory whose vms/ is a file makes List fail internally.
    std::fs::create_dir_all(d.dir.path().join("state")).unwrap();
    std::fs::write(d.dir.path().join("state/vms"), "not a directory").unwrap();
    let out = d.vmctl(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("vmctl: error: internal error in vmctld: cannot read "),
        "{stderr}"
    );
    assert!(
        stderr.contains("(io.vmctl.Manager.InternalError)"),
        "{stderr}"
    );
}

#[test]
fn generate_docs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VMCTL)
        .args(["generate-docs", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for file in [
        "man/vmctl.1",
        "man/vmctl-list.1",
        "man/vmctl-version.1",
        "completions/vmctl.bash",
        "completions/_vmctl",
        "completions/vmctl.fish",
    ] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(!text.is_empty(), "{file} is empty");
    }
    assert!(!dir.path().join("man/vmctl-generate-docs.1").exists());
    assert!(!dir.path().join("man/vmctl-help.1").exists());
    let help = Command::new(VMCTL).arg("--help").output().unwrap();
    assert!(!String::from_utf8(help.stdout)
        .unwrap()
        .contains("generate-docs"));
}

#[test]
fn cp_max_size_defaults_to_4g_and_bad_sizes_are_refused() {
    let help = Command::new(VMCTL).args(["cp", "--help"]).output().unwrap();
    assert!(stdout(&help).contains("[default: 4G]"), "{}", stdout(&help));
    let bad = Command::new(VMCTL)
        .args(["cp", "--max-size", "lots", "vm:/a", "b"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("invalid --max-size size \"lots\""), "{err}");
}

#[test]
fn bad_ssh_key_file_is_a_clear_error_and_creates_nothing() {
    let d = Daemon::start();
    let missing = d.dir.path().join("missing.pub");
    let private = d.dir.path().join("id_ed25519");
    std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n").unwrap();
    for (file, expected) in [
        (&missing, "cannot read the file"),
        (&private, "line 1: unknown key type"),
    ] {
        let out = d.vmctl(&["create", "blog", "--ssh-key", file.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("--ssh-key {}", file.display())),
            "{err}"
        );
        assert!(err.contains(expected), "{err}");
    }
    assert_eq!(stdout(&d.vmctl(&["list", "--json"])), "[]\n");
    assert!(!d.dir.path().join("state/vms").exists());
}

#[test]
fn create_help_names_ssh_key_and_network() {
    let out = Command::new(VMCTL)
        .args(["create", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--ssh-key <FILE>"), "{text}");
    assert!(text.contains("--network <MODE>"), "{text}");
}
