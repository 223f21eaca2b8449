//! The command line of vmctld.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vmctl_api::names::VARLINK_SOCKET_PATH;

/// The vmctl daemon: serves the io.vmctl.Manager varlink API and
/// org.vmctl.Manager1 on the system bus over one service layer.
///
/// Normally started by systemd (vmctld.socket / vmctld.service, Type=notify);
/// when socket-activated the listening socket comes from systemd and
/// --varlink-address is ignored.
#[derive(Debug, Parser)]
#[command(name = "vmctld", version)]
pub struct Cli {
    /// Bind the varlink socket at PATH when not socket-activated.
    #[arg(long, value_name = "PATH", default_value = VARLINK_SOCKET_PATH)]
    pub varlink_address: PathBuf,

    /// Do not connect to D-Bus at all (serve varlink only).
    #[arg(long)]
    pub no_dbus: bool,

    /// Connect to the D-Bus bus at ADDRESS instead of the system bus.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "no_dbus")]
    pub dbus_address: Option<String>,

    /// Keep state in DIR [default: $STATE_DIRECTORY or /var/lib/vmctl].
    #[arg(long, value_name = "DIR")]
    pub state_directory: Option<PathBuf>,

    /// Publish runtime files (NSS names, SSH known hosts) in DIR
    /// [default: /run/vmctl].
    #[arg(long, value_name = "DIR")]
    pub runtime_directory: Option<PathBuf>,

    /// Read the configuration from FILE (section [Network]: IPv4Subnet=,
    /// IPv6Subnet=) [default: /etc/vmctl/vmctl.conf].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Write the bridge's subnet drop-in for systemd-networkd into DIR
    /// [default: /run/systemd/network/vmctl-vmbr0.network.d when the
    /// runtime directory is /run/vmctl, else none].
    #[arg(long, value_name = "DIR")]
    pub networkd_dropin_dir: Option<PathBuf>,

    /// Close a varlink connection that completes no message for SECS
    /// seconds (tests shorten it; see `varlink_server::IDLE_TIMEOUT`).
    #[arg(long, value_name = "SECS", hide = true, default_value_t = crate::varlink_server::IDLE_TIMEOUT.as_secs_f64(), value_parser = parse_secs)]
    pub varlink_idle_timeout: f64,

    /// A maintenance command instead of running the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Maintenance commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the man page to OUT/man/vmctld.8 (used by the installer).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Writes `out/man/vmctld.8`.
pub fn generate_docs(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;

    let dir = out.join("man");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .section("8")
        .render(&mut page)?;
    let path = dir.join("vmctld.8");
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
