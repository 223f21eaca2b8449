//! Steps 4 and 7: the VMM processes (QEMU and its vhost-device-vsock
//! helper), the power button over QMP, and the serial console relay.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc};

use crate::plan::VmPlan;

/// Environment variable naming the `vhost-device-vsock` binary (else `PATH`).
pub const VHOST_VSOCK_ENV: &str = "VMCTL_VHOST_DEVICE_VSOCK";
/// Environment variable naming the QEMU binary (else `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "VMCTL_QEMU";

/// The running VMM and its helper; both are killed when this is dropped.
pub struct Running {
    /// QEMU.
    pub vmm: Child,
    helper: Child,
    qmp: PathBuf,
}

impl Running {
    /// Starts vhost-device-vsock, waits for its socket, starts QEMU, and
    /// relays the serial console to stderr and to clients of `console`.
    pub async fn start(plan: &VmPlan, console: &Path) -> Result<Running, String> {
        for stale in [
            plan.vhost_vsock_socket(),
            plan.vsock_socket.clone(),
            plan.qmp_socket(),
            console.to_path_buf(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let helper_bin =
            std::env::var_os(VHOST_VSOCK_ENV).unwrap_or_else(|| "vhost-device-vsock".into());
        let mut helper = Command::new(&helper_bin)
            .args(plan.vhost_vsock_args())
            .stdin(Stdio::null())
            // Own process group: a terminal's Ctrl-C reaches the launcher
            // only, which then powers the guest off.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e}; install vhost-device-vsock (cargo install vhost-device-vsock) or set {VHOST_VSOCK_ENV}",
                    Path::new(&helper_bin).display()
                )
            })?;
        let vhost = plan.vhost_vsock_socket();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !vhost.exists() {
            if let Some(status) = helper.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("vhost-device-vsock exited early: {status}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "vhost-device-vsock did not create {} within 10 s",
                    vhost.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let qemu_bin = std::env::var_os(QEMU_ENV).unwrap_or_else(|| "qemu-system-x86_64".into());
        let mut vmm = Command::new(&qemu_bin)
            .args(plan.qemu_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Own process group: a terminal's Ctrl-C reaches the launcher
            // only, which then powers the guest off.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e}; install QEMU (qemu-system-x86) or set {QEMU_ENV}",
                    Path::new(&qemu_bin).display()
                )
            })?;
        let stdin = vmm.stdin.take().expect("piped stdin");
        let stdout = vmm.stdout.take().expect("piped stdout");
        let listener = UnixListener::bind(console)
            .map_err(|e| format!("cannot listen on {}: {e}", console.display()))?;
        relay_console(stdout, stdin, listener);
        Ok(Running {
            vmm,
            helper,
            qmp: plan.qmp_socket(),
        })
    }

    /// The VMM's process ID (the machine's leader for machined).
    pub fn pid(&self) -> Option<u32> {
        self.vmm.id()
    }

    /// Presses the ACPI power button.
    pub async fn power_button(&self) -> Result<(), String> {
        tokio::time::timeout(
            Duration::from_secs(5),
            qmp_command(&self.qmp, "system_powerdown"),
        )
        .await
        .map_err(|_| format!("QMP {}: no answer within 5 s", self.qmp.display()))?
    }

    /// Kills QEMU and the helper and reaps both.
    pub async fn kill(&mut self) {
        let _ = self.vmm.kill().await;
        self.stop_helper().await;
    }

    /// Stops the helper once QEMU has gone.
    pub async fn stop_helper(&mut self) {
        let _ = self.helper.kill().await;
    }

    /// Waits for QEMU to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.vmm.wait().await
    }
}

/// Sends one QMP command and waits for its `return`.
async fn qmp_command(socket: &Path, command: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("QMP {}: {e}", socket.display());
    let stream = UnixStream::connect(socket).await.map_err(err)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // Greeting, then capabilities negotiation, then the command.
    for cmd in ["qmp_capabilities", command] {
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(err)?
                .ok_or_else(|| format!("QMP {}: connection closed", socket.display()))?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| format!("QMP {}: bad message {line:?}: {e}", socket.display()))?;
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {}: {e}", socket.display()));
            }
            if v.get("QMP").is_some() || v.get("return").is_some() {
                break;
            }
        }
        let msg = format!("{{\"execute\":\"{cmd}\"}}\n");
        write.write_all(msg.as_bytes()).await.map_err(err)?;
    }
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(err)?
            .ok_or_else(|| format!("QMP {}: connection closed", socket.display()))?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(e) = v.get("error") {
            return Err(format!("QMP {}: {command}: {e}", socket.display()));
        }
        if v.get("return").is_some() {
            return Ok(());
        }
    }
}

/// Copies the guest's serial output line by line to stderr (the journal)
/// and raw to every connected console client; client input goes to the
/// guest.
fn relay_console(
    mut from_guest: tokio::process::ChildStdout,
    mut to_guest: tokio::process::ChildStdin,
    listener: UnixListener,
) {
    let (out_tx, _) = broadcast::channel::<Vec<u8>>(256);
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(64);
    let out = out_tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut line = Vec::new();
        loop {
            let n = match from_guest.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = out.send(buf[..n].to_vec());
            for &b in &buf[..n] {
                match b {
                    b'\n' => {
                        eprintln!("console: {}", String::from_utf8_lossy(&line).trim_end());
                        line.clear();
                    }
                    b'\r' => {}
                    _ => line.push(b),
                }
            }
        }
        if !line.is_empty() {
            eprintln!("console: {}", String::from_utf8_lossy(&line));
        }
    });
    tokio::spawn(async move {
        while let Some(data) = in_rx.recv().await {
            if to_guest.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut rx = out_tx.subscribe();
            let in_tx = in_tx.clone();
            let (mut read, mut write) = stream.into_split();
            tokio::spawn(async move {
                loop {
                    let data = match rx.recv().await {
                        Ok(data) => data,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if write.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 || in_tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}
