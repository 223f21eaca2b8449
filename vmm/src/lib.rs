//! VMM drivers for vmctl: one trait ([`Vmm`]), two real drivers
//! ([`qemu::QemuVm`] over QMP, [`cloud_hypervisor::ChVm`] over its REST API).
//!
//! The per-VM launcher (run by `vm@NAME.service`) uses it like this:
//! ```no_run
//! # async fn f(cfg: vmctl_vmm::VmConfig) -> vmctl_vmm::Result<()> {
//! use vmctl_vmm::{Driver, Vmm};
//! let mut vm = Driver::auto().spawn(&cfg).await?; // VMM running, guest not yet
//! vm.boot().await?;                                 // guest starts
//! vm.power_button().await?;                         // ACPI power-off request
//! let status = vm.wait().await?;                    // VMM process exited
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod accel;
pub mod cloud_hypervisor;
pub mod config;
mod error;
mod process;
pub mod qemu;
pub mod sandbox;

use std::future::Future;
use std::process::ExitStatus;

pub use accel::{kvm_usable, Accel, ResolvedAccel};
pub use config::{ConfigError, Credential, Disk, Machine, Net, VmConfig, Vsock};
pub use error::{Error, Result};
pub use process::escape_log_text;
pub use sandbox::Identity;

/// The guest's state as the VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// VMM up, guest created but not booted (QEMU `prelaunch`, CH `Created`).
    Created,
    /// vCPUs running.
    Running,
    /// Paused by [`Vmm::pause`] (or another paused state).
    Paused,
    /// The guest shut down; the VMM may still be running.
    Shutdown,
    /// Any other state the VMM reports, verbatim.
    Other(String),
}

/// One VM driven through its VMM process.
///
/// A value is obtained from [`Vmm::spawn`], which starts the VMM child
/// process (and helpers) and leaves the guest created but not running. The
/// child is killed when the value is dropped, and by the kernel
/// (`PR_SET_PDEATHSIG(SIGKILL)`) if the launcher dies without dropping it
/// (SIGKILL), so a launcher crash never leaves an orphan VMM behind. The
/// VMM's stderr is forwarded line by line to the launcher's stderr; if the
/// VMM exits during [`Vmm::spawn`], the error is [`Error::ExitedEarly`] with
/// its last stderr lines.
pub trait Vmm: Sized + Send {
    /// Validate `config`, start the VMM process and wait until its control
    /// socket answers. The guest does not run yet.
    fn spawn(config: &VmConfig) -> impl Future<Output = Result<Self>> + Send;
    /// Start the guest.
    fn boot(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Pause the vCPUs.
    fn pause(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Resume paused vCPUs.
    fn resume(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Press the ACPI power button (graceful shutdown request to the guest).
    fn power_button(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Stop the guest at once and make the VMM exit (no guest cooperation).
    fn shutdown(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// SIGKILL the VMM and its helpers, and reap them.
    fn kill(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Ask the VMM for the guest's state.
    fn info(&mut self) -> impl Future<Output = Result<VmState>> + Send;
    /// Wait for the VMM process to exit; helpers are stopped afterwards.
    fn wait(&mut self) -> impl Future<Output = Result<ExitStatus>> + Send;
}

/// Which driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// QEMU (`qemu-system-x86_64`) via QMP.
    Qemu,
    /// cloud-hypervisor via its REST API.
    CloudHypervisor,
}

impl Driver {
    /// cloud-hypervisor when its binary is on `PATH` and KVM is usable, else QEMU.
    pub fn auto() -> Driver {
        if process::find_in_path(cloud_hypervisor::BINARY).is_some() && kvm_usable() {
            Driver::CloudHypervisor
        } else {
            Driver::Qemu
        }
    }

    /// Spawn `config` with this driver.
    pub async fn spawn(self, config: &VmConfig) -> Result<AnyVm> {
        Ok(match self {
            Driver::Qemu => AnyVm::Qemu(qemu::QemuVm::spawn(config).await?),
            Driver::CloudHypervisor => {
                AnyVm::CloudHypervisor(cloud_hypervisor::ChVm::spawn(config).await?)
            }
        })
    }
}

/// A VM run by either driver, chosen at run time.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value per launcher process: boxing buys nothing
pub enum AnyVm {
    /// Run by QEMU.
    Qemu(qemu::QemuVm),
    /// Run by cloud-hypervisor.
    CloudHypervisor(cloud_hypervisor::ChVm),
}

impl AnyVm {
    /// Process id of the VMM (QEMU or cloud-hypervisor; for machined
    /// registration), while it runs; `None` once it has been reaped.
    pub fn pid(&self) -> Option<u32> {
        match self {
            AnyVm::Qemu(vm) => vm.pid(),
            AnyVm::CloudHypervisor(vm) => vm.pid(),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $m:ident) => {
        match $self {
            AnyVm::Qemu(vm) => vm.$m().await,
            AnyVm::CloudHypervisor(vm) => vm.$m().await,
        }
    };
}

impl Vmm for AnyVm {
    async fn spawn(config: &VmConfig) -> Result<Self> {
        Driver::auto().spawn(config).await
    }
    async fn boot(&mut self) -> Result<()> {
        dispatch!(self, boot)
    }
    async fn pause(&mut self) -> Result<()> {
        dispatch!(self, pause)
    }
    async fn resume(&mut self) -> Result<()> {
        dispatch!(self, resume)
    }
    async fn power_button(&mut self) -> Result<()> {
        dispatch!(self, power_button)
    }
    async fn shutdown(&mut self) -> Result<()> {
        dispatch!(self, shutdown)
    }
    async fn kill(&mut self) -> Result<()> {
        dispatch!(self, kill)
    }
    async fn info(&mut self) -> Result<VmState> {
        dispatch!(self, info)
    }
    async fn wait(&mut self) -> Result<ExitStatus> {
        dispatch!(self, wait)
    }
}
