//! Steps 4 and 7: the running VMM (through vmctl-vmm) and the serial
//! console relay.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};
use vmctl_vmm::qemu::{QemuBinaries, QemuVm};
use vmctl_vmm::{AnyVm, Driver, VmConfig, Vmm};

use crate::boot_check::{self, Failure};
use crate::console::ConsoleLog;

/// Environment variable naming the `vhost-device-vsock` binary (else `PATH`).
pub const VHOST_VSOCK_ENV: &str = "VMCTL_VHOST_DEVICE_VSOCK";
/// Environment variable naming the QEMU binary (else `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "VMCTL_QEMU";

/// The running VM; the VMM and its helpers are killed when this is dropped.
pub struct Running {
    vm: AnyVm,
    failure: Failure,
}

impl Running {
    /// Spawns the VMM, attaches the console relay, and boots the guest.
    pub async fn start(
        config: &VmConfig,
        driver: Driver,
        console: &Path,
    ) -> Result<Running, String> {
        let vm = match driver {
            Driver::Qemu => {
                let defaults = QemuBinaries::default();
                let bins = QemuBinaries {
                    qemu: env_path(QEMU_ENV).unwrap_or(defaults.qemu),
                    vhost_device_vsock: env_path(VHOST_VSOCK_ENV)
                        .unwrap_or(defaults.vhost_device_vsock),
                };
                QemuVm::spawn_with(config, &bins).await.map(AnyVm::Qemu)
            }
            Driver::CloudHypervisor => driver.spawn(config).await,
        }
        .map_err(|e| format!("cannot start the VMM ({driver:?}): {e}"))?;
        let (failure_tx, failure) = watch::channel(None);
        let mut running = Running { vm, failure };
        if let Some(serial) = &config.serial_socket {
            let _ = std::fs::remove_file(console);
            let listener = UnixListener::bind(console)
                .map_err(|e| format!("cannot listen on {}: {e}", console.display()))?;
            let stream = connect_serial(serial).await?;
            relay_console(stream, listener, failure_tx);
        }
        running
            .vm
            .boot()
            .await
            .map_err(|e| format!("cannot boot the guest: {e}"))?;
        Ok(running)
    }

    /// The console's verdict on a boot that cannot succeed (see
    /// [`boot_check`]); pending while there is none.
    pub fn boot_failure(&self) -> Failure {
        self.failure.clone()
    }

    /// The VMM's process ID (the machine's leader for machined).
    pub fn pid(&self) -> Option<u32> {
        match &self.vm {
            AnyVm::Qemu(vm) => vm.pid(),
            AnyVm::CloudHypervisor(vm) => vm.pid(),
        }
    }

    /// Presses the ACPI power button.
    pub async fn power_button(&mut self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.vm.power_button()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the VMM did not answer within 5 s".into()),
        }
    }

    /// Kills the VMM and its helpers and reaps them.
    pub async fn kill(&mut self) {
        if let Err(e) = self.vm.kill().await {
            tracing::warn!("killing the VMM: {e}");
        }
    }

    /// Waits for the VMM to exit (helpers are stopped afterwards).
    pub async fn wait(&mut self) -> Result<ExitStatus, String> {
        self.vm.wait().await.map_err(|e| e.to_string())
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// The VMM creates its serial socket while it starts; give it a moment.
async fn connect_serial(serial: &Path) -> Result<UnixStream, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(serial).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "cannot connect to the serial console {}: {e}",
                    serial.display()
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Writes console log lines to stderr (the journal); a closed stderr is
/// ignored rather than fatal.
fn write_lines(lines: &mut Vec<String>) {
    let mut stderr = std::io::stderr().lock();
    for line in lines.drain(..) {
        let _ = writeln!(stderr, "{line}");
    }
}

/// Copies the guest's serial output line by line to stderr and raw to every
/// connected console client; client input goes to the guest.
fn relay_console(
    serial: UnixStream,
    listener: UnixListener,
    failure: watch::Sender<Option<String>>,
) {
    let (mut from_guest, mut to_guest) = serial.into_split();
    let (out_tx, _) = broadcast::channel::<Vec<u8>>(256);
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(64);
    let out = out_tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut log = ConsoleLog::new(Instant::now());
        let mut lines = Vec::new();
        // Reports lines the rate limit suppressed even if the guest then
        // stays silent.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let n = tokio::select! {
                read = from_guest.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = tick.tick() => {
                    log.tick(Instant::now(), &mut lines);
                    write_lines(&mut lines);
                    continue;
                }
            };
            let _ = out.send(buf[..n].to_vec());
            log.feed(&buf[..n], Instant::now(), &mut lines);
            if failure.borrow().is_none() {
                if let Some(reason) = lines.iter().find_map(|l| boot_check::diagnose(l)) {
                    failure.send_replace(Some(reason));
                }
            }
            write_lines(&mut lines);
        }
        log.finish(Instant::now(), &mut lines);
        write_lines(&mut lines);
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
