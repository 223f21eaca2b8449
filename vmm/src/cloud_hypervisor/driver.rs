//! [`ChVm`]: the cloud-hypervisor process plus its API client.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

use super::api::{ChApi, ChVmConfig, ChVmState};
use crate::error::{io_err, Error, Result};
use crate::process;
use crate::{VmConfig, VmState, Vmm};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A VM run by cloud-hypervisor.
#[derive(Debug)]
pub struct ChVm {
    child: Child,
    api: ChApi,
}

impl ChVm {
    /// [`Vmm::spawn`] with an explicit cloud-hypervisor program path.
    pub async fn spawn_with(config: &VmConfig, program: &std::path::Path) -> Result<ChVm> {
        config.validate()?;
        std::fs::create_dir_all(&config.runtime_dir).map_err(io_err(format!(
            "creating runtime directory {}",
            config.runtime_dir.display()
        )))?;
        crate::sandbox::prepare_files(config)?;
        let socket = api_socket(config);
        process::remove_stale(&socket)?;
        if let Some(vsock) = &config.vsock {
            process::remove_stale(&vsock.socket)?;
        }
        let mut arg = std::ffi::OsString::from("path=");
        arg.push(&socket);
        let (mut child, stderr) =
            process::spawn(program, &["--api-socket".into(), arg], config.identity)?;
        // Stop waiting as soon as cloud-hypervisor exits (it may create the
        // socket and still die), and say why.
        let api = process::while_running(&mut child, &stderr, super::BINARY, async {
            process::socket_appears(super::BINARY, &socket, STARTUP_TIMEOUT).await?;
            let api = ChApi::new(socket.clone());
            let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
            let ping = loop {
                match api.ping().await {
                    Ok(ping) => break ping,
                    Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            super::api::check_version(&ping).map_err(Error::UnsupportedVersion)?;
            api.create(&ChVmConfig::from_config(config)).await?;
            Ok(api)
        })
        .await?;
        Ok(ChVm { child, api })
    }

    /// The API client, for calls the trait does not cover.
    pub fn api(&self) -> &ChApi {
        &self.api
    }

    /// Process id of cloud-hypervisor, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The API socket inside the runtime directory.
pub fn api_socket(config: &VmConfig) -> PathBuf {
    config.runtime_dir.join("ch-api.sock")
}

/// Map `VmInfo.state` to [`VmState`] (`BreakPoint` and unknown states
/// become [`VmState::Other`] with the wire name).
pub fn state_from_ch(state: &ChVmState) -> VmState {
    match state {
        ChVmState::Created => VmState::Created,
        ChVmState::Running => VmState::Running,
        ChVmState::Paused => VmState::Paused,
        ChVmState::Shutdown => VmState::Shutdown,
        other @ (ChVmState::BreakPoint | ChVmState::Other(_)) => {
            VmState::Other(other.as_str().to_owned())
        }
    }
}

impl Vmm for ChVm {
    async fn spawn(config: &VmConfig) -> Result<Self> {
        ChVm::spawn_with(config, std::path::Path::new(super::BINARY)).await
    }
    async fn boot(&mut self) -> Result<()> {
        self.api.put("vm.boot").await
    }
    async fn pause(&mut self) -> Result<()> {
        self.api.put("vm.pause").await
    }
    async fn resume(&mut self) -> Result<()> {
        self.api.put("vm.resume").await
    }
    async fn power_button(&mut self) -> Result<()> {
        self.api.put("vm.power-button").await
    }
    async fn shutdown(&mut self) -> Result<()> {
        // vm.shutdown fails when the VM was never booted; vmm.shutdown still ends the process.
        let _ = self.api.put("vm.shutdown").await;
        match self.api.put("vmm.shutdown").await {
            // The VMM may exit before it finishes answering.
            Ok(()) | Err(Error::HttpProtocol { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
    async fn kill(&mut self) -> Result<()> {
        process::kill(&mut self.child).await
    }
    async fn info(&mut self) -> Result<VmState> {
        Ok(state_from_ch(&self.api.info().await?.state))
    }
    async fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .await
            .map_err(io_err("waiting for cloud-hypervisor"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ch_states() {
        let ch = |s: &str| state_from_ch(&ChVmState::from(s.to_owned()));
        assert_eq!(ch("Created"), VmState::Created);
        assert_eq!(ch("Running"), VmState::Running);
        assert_eq!(ch("Paused"), VmState::Paused);
        assert_eq!(ch("Shutdown"), VmState::Shutdown);
        assert_eq!(ch("BreakPoint"), VmState::Other("BreakPoint".into()));
        assert_eq!(ch("Hibernating"), VmState::Other("Hibernating".into()));
    }
}
