//! `vmctl console NAME`: attach to a running VM's serial console, which the
//! launcher of `vm@NAME.service` serves on `/run/vmctl/vm/NAME/console`
//! (every client sees the guest's output; input goes to the guest).
//! Ctrl-] detaches, as in telnet and `machinectl login`.
//!
//! The socket is root's: vmctld opens it for whoever may manage the VM and
//! hands over the connected descriptor (`OpenGuest`, channel `console`),
//! as for `vmctl exec` (see [`crate::exec`]).

use std::{io::IsTerminal, path::Path};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmctl_api::spec::Layout;

use crate::{client, exec::RawMode};

/// The byte Ctrl-] sends.
const DETACH: u8 = 0x1d;

/// Attaches this terminal to VM `name`'s serial console until Ctrl-] or
/// until the VM stops.
pub async fn console(address: &Path, name: &str) -> anyhow::Result<u8> {
    vmctl_api::validate_vm_name(name)?;
    let stream = if crate::exec::direct_path() {
        let socket = Layout::default().console_socket(name);
        tokio::net::UnixStream::connect(&socket)
            .await
            .with_context(|| console_error(name, &socket))?
    } else {
        client::connect(address)
            .await?
            .open_guest(name, "console")
            .await?
    };
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let _raw = if interactive {
        eprintln!("Connected to the console of VM {name}. Press Ctrl-] to detach.\r");
        Some(RawMode::enable(&stdin)?)
    } else {
        None
    };
    let (mut from_vm, mut to_vm) = stream.into_split();
    let mut output = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from_vm.read(&mut buf).await {
            if n == 0 || out.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let _ = out.flush().await;
        }
    });
    let mut input = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            // The VM stopped: the launcher closed the console.
            _ = &mut output => break,
            n = input.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 && interactive {
                    break;
                }
                if n == 0 {
                    // Piped input ended: keep showing the console.
                    let _ = (&mut output).await;
                    break;
                }
                let data = &buf[..n];
                let (send, detach) = match data.iter().position(|b| *b == DETACH) {
                    Some(at) if interactive => (&data[..at], true),
                    _ => (data, false),
                };
                if to_vm.write_all(send).await.is_err() || detach {
                    break;
                }
            }
        }
    }
    if interactive {
        eprintln!("\r\nDetached from the console of VM {name}.\r");
    }
    Ok(0)
}

fn console_error(name: &str, socket: &Path) -> String {
    format!(
        "cannot attach to the console of VM {name} at {}; is it running? (systemctl status vm@{name})",
        socket.display()
    )
}
