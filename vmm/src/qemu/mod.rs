//! QEMU driver: builds the command line ([`argv`]), starts QEMU paused
//! (`-S`), and controls it over QMP ([`qmp`]).
//!
//! Start-up sequence:
//! 1. Validate the config, resolve acceleration ([`crate::Accel::resolve`]).
//! 2. With vsock: start `vhost-device-vsock --guest-cid N --socket VHOST
//!    --uds-path HOST.sock --tx-buffer-size 16384` (see
//!    [`VSOCK_TX_BUFFER_SIZE`]) and wait for its vhost-user socket.
//! 3. Start QEMU with `-S` and `-qmp unix:...,server=on,wait=off`.
//! 4. Connect QMP and do the capabilities handshake.
//! 5. [`Vmm::boot`] sends `cont`.

pub mod argv;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::mpsc;

use crate::error::{io_err, Result};
use crate::process;
use crate::sandbox::{self, Access};
use crate::{VmConfig, VmState, Vmm};
pub use argv::{qemu_args, qemu_args_with_cache, DiskCache, QemuPaths};
pub use qmp::{Qmp, QmpEvent, QmpStatus};

/// How long QEMU and the vsock helper get to create their sockets.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The host's receive buffer per vsock connection, which caps every packet
/// a guest sends to the host at this many bytes.
///
/// vhost-device-vsock (0.3.0, the newest release) reads a guest→host packet
/// only when its data sits in one descriptor (`virtio-vsock`'s
/// `VsockPacket::from_tx_virtq_chain`); otherwise it drops the packet and
/// never returns the descriptor (`process_tx_queue`, "error reading TX
/// packet"), so the stream loses data and then stalls. Linux guests since
/// 6.12.x stable build packets over ~32 KiB from page fragments, one
/// descriptor each, and the default buffer (64 KiB) lets them send 64 KiB
/// packets. At 16 KiB every packet is one linear buffer: one descriptor.
/// It must be a power of two (the helper's ring buffer indexes with `%`
/// on wrapping `u32` counters).
pub const VSOCK_TX_BUFFER_SIZE: u32 = 16 * 1024;

// Linux allocates a TX packet (44-byte header + data) as one linear buffer
// up to SKB_WITH_OVERHEAD(32 KiB), 32 KiB less ~320 bytes of
// skb_shared_info; above that it splits the data into fragments.
const _: () =
    assert!(VSOCK_TX_BUFFER_SIZE.is_power_of_two() && VSOCK_TX_BUFFER_SIZE + 44 <= 32 * 1024 - 512);

/// The `vhost-device-vsock` arguments for guest `cid`: QEMU connects to
/// `vhost_user`, host programs to the hybrid-vsock socket `uds`.
fn vsock_helper_args(cid: u32, vhost_user: &Path, uds: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--guest-cid".into(),
        cid.to_string().into(),
        "--socket".into(),
        vhost_user.into(),
        "--uds-path".into(),
        uds.into(),
        "--tx-buffer-size".into(),
        VSOCK_TX_BUFFER_SIZE.to_string().into(),
    ]
}

/// Programs the QEMU driver runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBinaries {
    /// QEMU system emulator (default `qemu-system-x86_64`, found on `PATH`).
    pub qemu: PathBuf,
    /// vhost-user vsock backend (default `vhost-device-vsock`).
    pub vhost_device_vsock: PathBuf,
}

impl Default for QemuBinaries {
    fn default() -> Self {
        QemuBinaries {
            qemu: "qemu-system-x86_64".into(),
            vhost_device_vsock: "vhost-device-vsock".into(),
        }
    }
}

/// A VM run by QEMU.
#[derive(Debug)]
pub struct QemuVm {
    child: Child,
    vsock_helper: Option<Child>,
    qmp: Qmp,
    events: Option<mpsc::Receiver<QmpEvent>>,
}

/// Writes each SMBIOS OEM string to the file QEMU reads it from
/// ([`QemuPaths::oem_string_file`]), readable by root alone, and by the
/// VMM's identity when it has one.
fn write_oem_strings(config: &VmConfig) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for (index, oem) in config.oem_strings().iter().enumerate() {
        let path = QemuPaths::oem_string_file(config, index);
        process::remove_stale(&path)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(oem.as_bytes()))
            .map_err(io_err(format!("writing {}", path.display())))?;
        if let Some(id) = config.identity {
            sandbox::grant(&path, id.uid, Access::Read)
                .map_err(io_err(format!("opening {} to the VMM", path.display())))?;
        }
    }
    Ok(())
}

impl QemuVm {
    /// [`Vmm::spawn`] with explicit program paths.
    pub async fn spawn_with(config: &VmConfig, bins: &QemuBinaries) -> Result<QemuVm> {
        config.validate()?;
        let accel = config.accel.resolve();
        let paths = QemuPaths::for_config(config);
        std::fs::create_dir_all(&config.runtime_dir).map_err(io_err(format!(
            "creating runtime directory {}",
            config.runtime_dir.display()
        )))?;
        process::remove_stale(&paths.qmp)?;
        sandbox::prepare_files(config)?;
        write_oem_strings(config)?;

        let vsock_helper = match &config.vsock {
            None => None,
            Some(vsock) => {
                process::remove_stale(&paths.vhost_vsock)?;
                process::remove_stale(&vsock.socket)?;
                let args = vsock_helper_args(vsock.cid, &paths.vhost_vsock, &vsock.socket);
                let (mut helper, helper_stderr) =
                    process::spawn(&bins.vhost_device_vsock, &args, config.identity)?;
                let program = "vhost-device-vsock";
                process::while_running(
                    &mut helper,
                    &helper_stderr,
                    program,
                    process::socket_appears(program, &paths.vhost_vsock, STARTUP_TIMEOUT),
                )
                .await?;
                Some(helper)
            }
        };

        let tap_fds: Vec<i32> = config.net.iter().filter_map(|n| n.fd).collect();
        let (mut child, stderr) = process::spawn_keeping(
            &bins.qemu,
            &qemu_args(config, accel, &paths),
            &tap_fds,
            config.identity,
        )?;
        // QEMU creates the QMP socket while parsing its options, before it
        // loads the kernel and disks: it can die after that (bad kernel,
        // unreadable disk). Stop waiting as soon as it does, and say why.
        let (qmp, events) = process::while_running(&mut child, &stderr, "qemu", async {
            process::socket_appears("qemu", &paths.qmp, STARTUP_TIMEOUT).await?;
            Qmp::connect_with_retry(&paths.qmp, STARTUP_TIMEOUT).await
        })
        .await?;
        Ok(QemuVm {
            child,
            vsock_helper,
            qmp,
            events: Some(events),
        })
    }

    /// The QMP session, for commands the trait does not cover.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// Take the QMP event stream (`SHUTDOWN`, `POWERDOWN`, `STOP`, `RESUME`, ...).
    /// Returns `None` after the first call. The queue is bounded
    /// ([`qmp::EVENT_QUEUE`]): events that find it full are dropped.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<QmpEvent>> {
        self.events.take()
    }

    /// Process id of QEMU (for machined registration), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop_helper(&mut self) -> Result<()> {
        if let Some(helper) = &mut self.vsock_helper {
            process::kill(helper).await?;
        }
        Ok(())
    }
}

/// Map a QMP run state to [`VmState`].
pub fn state_from_qmp(status: &str) -> VmState {
    match status {
        "prelaunch" => VmState::Created,
        "running" => VmState::Running,
        "paused" => VmState::Paused,
        "shutdown" => VmState::Shutdown,
        other => VmState::Other(other.to_owned()),
    }
}

impl Vmm for QemuVm {
    async fn spawn(config: &VmConfig) -> Result<Self> {
        QemuVm::spawn_with(config, &QemuBinaries::default()).await
    }
    async fn boot(&mut self) -> Result<()> {
        self.qmp.cont().await
    }
    async fn pause(&mut self) -> Result<()> {
        self.qmp.stop().await
    }
    async fn resume(&mut self) -> Result<()> {
        self.qmp.cont().await
    }
    async fn power_button(&mut self) -> Result<()> {
        self.qmp.system_powerdown().await
    }
    async fn shutdown(&mut self) -> Result<()> {
        self.qmp.quit().await
    }
    async fn kill(&mut self) -> Result<()> {
        process::kill(&mut self.child).await?;
        self.stop_helper().await
    }
    async fn info(&mut self) -> Result<VmState> {
        Ok(state_from_qmp(&self.qmp.query_status().await?.status))
    }
    async fn wait(&mut self) -> Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .await
            .map_err(io_err("waiting for qemu"))?;
        self.stop_helper().await?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_states() {
        assert_eq!(state_from_qmp("prelaunch"), VmState::Created);
        assert_eq!(state_from_qmp("running"), VmState::Running);
        assert_eq!(state_from_qmp("paused"), VmState::Paused);
        assert_eq!(state_from_qmp("shutdown"), VmState::Shutdown);
        assert_eq!(
            state_from_qmp("inmigrate"),
            VmState::Other("inmigrate".into())
        );
    }

    #[test]
    fn vsock_helper_caps_guest_packets() {
        let args = vsock_helper_args(7, Path::new("/run/v/vhost.sock"), Path::new("/run/v/vsock"));
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--guest-cid",
                "7",
                "--socket",
                "/run/v/vhost.sock",
                "--uds-path",
                "/run/v/vsock",
                "--tx-buffer-size",
                "16384",
            ]
        );
    }
}
