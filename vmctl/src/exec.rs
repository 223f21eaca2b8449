//! `vmctl exec`, `vmctl shell` and `vmctl cp`: run commands in a running VM
//! and copy files through its guest agent.
//!
//! The agent is behind the VM's hybrid-vsock socket
//! (`/run/vmctl/vm/NAME/vsock`, `CONNECT 1024`), which only root may open.
//! So vmctl asks vmctld (`OpenGuest`), which checks that the caller may
//! manage the VM, connects, and hands back the connected socket; vmctl then
//! speaks the agent protocol on it directly, exactly as over the socket
//! itself. Root goes the same way: one path, the same checks and errors
//! for everybody, and measured as fast as opening the socket directly
//! (`cargo xtask bench`, "exec" rows). `VMCTL_GUEST_PATH=direct` makes
//! root open the socket itself instead, the path before vmctld handed out
//! descriptors; the benchmark compares the two with it.

use std::{io::IsTerminal, os::fd::AsFd, path::Path};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::mpsc;
use vmctl_api::{names::VARLINK_INTERFACE, spec::Layout, DetailsReply};
use vmctl_guest::{
    client::{AgentClient, ClientError, ExitStatus},
    protocol::{Control, ExecRequest, PtySize},
};

use crate::client;

/// The guest's login shell of root, as a login shell (the agent runs argv
/// directly, so the lookup needs a tiny guest-side script).
const LOGIN_SHELL: &str = r#"s=$(getent passwd root | cut -d: -f7); exec "${s:-/bin/sh}" -l"#;

/// Runs `command` in VM `name` with this process's stdin, stdout and
/// stderr; returns its exit code (128 + signal if a signal killed it).
pub async fn exec(address: &Path, name: &str, command: Vec<String>) -> anyhow::Result<u8> {
    let agent = connect(address, name).await?;
    let request = ExecRequest {
        argv: command,
        ..Default::default()
    };
    let status = agent
        .exec(
            request,
            tokio::io::stdin(),
            tokio::io::stdout(),
            tokio::io::stderr(),
            None,
        )
        .await
        .context("exec failed")?;
    Ok(exit_code(status))
}

/// Opens root's login shell in VM `name` on a pseudo-terminal: the local
/// terminal in raw mode, window size changes forwarded.
pub async fn shell(address: &Path, name: &str) -> anyhow::Result<u8> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("vmctl shell needs a terminal; use vmctl exec {name} -- COMMAND instead");
    }
    let agent = connect(address, name).await?;
    let term = std::env::var("TERM").unwrap_or_else(|_| "vt220".into());
    let request = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), LOGIN_SHELL.into()],
        env: vec![("TERM".into(), term)],
        pty: Some(window_size()),
        ..Default::default()
    };
    let (control_tx, control_rx) = mpsc::channel(8);
    let resizer = tokio::spawn(forward_resizes(control_tx));
    let status = {
        let _raw = RawMode::enable(&stdin)?;
        agent
            .exec(
                request,
                tokio::io::stdin(),
                tokio::io::stdout(),
                tokio::io::stderr(),
                Some(control_rx),
            )
            .await
    };
    resizer.abort();
    Ok(exit_code(status.context("shell failed")?))
}

/// One side of `vmctl cp`: a local path, or `VM:/path` in a VM.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// A file on this host.
    Local(std::path::PathBuf),
    /// An absolute path in a VM.
    Guest {
        /// The VM.
        vm: String,
        /// The absolute path in the guest.
        path: String,
    },
}

impl CopyEnd {
    /// Parses `VM:/path` (a valid VM name, a colon, an absolute path) or a
    /// local path (anything else; `./a:b` names a local file).
    pub fn parse(text: &str) -> CopyEnd {
        if let Some((vm, path)) = text.split_once(':') {
            if vmctl_api::validate_vm_name(vm).is_ok() && path.starts_with('/') {
                return CopyEnd::Guest {
                    vm: vm.to_owned(),
                    path: path.to_owned(),
                };
            }
        }
        CopyEnd::Local(text.into())
    }
}

/// Copies one file into or out of a running VM (`vmctl cp`), keeping its
/// permission bits (out of a VM: only `0o777` of them). A file out of a VM
/// is written safely wherever the target is (see
/// [`AgentClient::pull_to_file`]) and refused over `max_size` bytes.
pub async fn copy(address: &Path, from: &str, to: &str, max_size: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match (CopyEnd::parse(from), CopyEnd::parse(to)) {
        (CopyEnd::Local(local), CopyEnd::Guest { vm, path }) => {
            let file = tokio::fs::File::open(&local)
                .await
                .with_context(|| format!("cannot read {}", local.display()))?;
            let mode = file.metadata().await?.permissions().mode() & 0o7777;
            connect(address, &vm)
                .await?
                .push(&path, mode, file)
                .await
                .with_context(|| format!("cannot copy {} to {vm}:{path}", local.display()))
        }
        (CopyEnd::Guest { vm, path }, CopyEnd::Local(local)) => {
            let pulled = connect(address, &vm)
                .await?
                .pull_to_file(&path, &local, max_size)
                .await;
            let what = || format!("cannot copy {vm}:{path} to {}", local.display());
            match pulled {
                Ok(_) => Ok(()),
                Err(e @ ClientError::TooLarge { .. }) => {
                    Err(anyhow::anyhow!("{e}; --max-size raises the limit")).with_context(what)
                }
                Err(e) => Err(e).with_context(what),
            }
        }
        _ => bail!(
            "vmctl cp copies between this host and a VM: one side must be VM:/absolute/path \
             and the other a local path (got {from:?} and {to:?})"
        ),
    }
}

/// Whether `VMCTL_GUEST_PATH=direct` asks for the root-only direct path.
pub(crate) fn direct_path() -> bool {
    std::env::var_os("VMCTL_GUEST_PATH").is_some_and(|v| v == "direct")
}

/// Reaches the agent of VM `name`: through vmctld, or directly when
/// [`direct_path`] says so.
async fn connect(
    address: &Path,
    name: &str,
) -> anyhow::Result<AgentClient<tokio::net::UnixStream>> {
    if direct_path() {
        return connect_direct(address, name).await;
    }
    let stream = client::connect(address)
        .await?
        .open_guest(name, "agent")
        .await?;
    Ok(AgentClient::new(stream))
}

/// Checks with vmctld that VM `name` exists and runs, then opens its
/// hybrid-vsock socket (root only).
async fn connect_direct(
    address: &Path,
    name: &str,
) -> anyhow::Result<AgentClient<tokio::net::UnixStream>> {
    let mut client = client::connect(address).await?;
    let reply: DetailsReply = client
        .call(
            &format!("{VARLINK_INTERFACE}.Describe"),
            Some(json!({ "name": name })),
        )
        .await?;
    let not_running = |state: &str| {
        anyhow::anyhow!(
            "VM {name} is not running (state: {state}); start it with systemctl start vm@{name}"
        )
    };
    let state = reply.vm.state.as_str();
    if !matches!(state, "running" | "unknown") {
        return Err(not_running(state));
    }
    let socket = Layout::default().vsock_socket(name);
    match AgentClient::connect(&socket).await {
        Ok(agent) => Ok(agent),
        Err(ClientError::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            bail!(
                "cannot open {}: {source}; VMCTL_GUEST_PATH=direct is for root only",
                socket.display()
            )
        }
        Err(ClientError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(not_running(state))
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach the guest agent of VM {name}")),
    }
}

/// The process exit code for how the command ended.
fn exit_code(status: ExitStatus) -> u8 {
    u8::try_from(status.as_shell_code().clamp(0, 255)).unwrap_or(255)
}

/// The size of the local terminal (80x24 when unknown).
fn window_size() -> PtySize {
    match rustix::termios::tcgetwinsize(std::io::stdout().as_fd()) {
        Ok(ws) if ws.ws_row > 0 && ws.ws_col > 0 => PtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        },
        _ => PtySize { rows: 24, cols: 80 },
    }
}

/// Sends the terminal's new size on every SIGWINCH.
async fn forward_resizes(control: mpsc::Sender<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if control.send(Control::Resize(window_size())).await.is_err() {
            return;
        }
    }
}

/// The terminal in raw mode until dropped.
pub(crate) struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    pub(crate) fn enable(stdin: &std::io::Stdin) -> anyhow::Result<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let saved = tcgetattr(stdin.as_fd()).context("cannot read the terminal settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

#[cfg(test)]
mod copy_tests {
    use super::CopyEnd;

    #[test]
    fn copy_ends() {
        assert_eq!(
            CopyEnd::parse("blog:/etc/hostname"),
            CopyEnd::Guest {
                vm: "blog".into(),
                path: "/etc/hostname".into()
            }
        );
        assert_eq!(CopyEnd::parse("./a:b"), CopyEnd::Local("./a:b".into()));
        assert_eq!(
            CopyEnd::parse("blog:rel"),
            CopyEnd::Local("blog:rel".into())
        );
        assert_eq!(CopyEnd::parse("../x:/y"), CopyEnd::Local("../x:/y".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::Code(7)), 7);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
        assert_eq!(exit_code(ExitStatus::Code(300)), 255);
    }
}
