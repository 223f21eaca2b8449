//! The command line of vmctl.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vmctl_api::names::{VARLINK_ADDRESS_ENV, VARLINK_SOCKET_PATH};

/// Manage the virtual machines of this host through vmctld.
#[derive(Debug, Parser)]
#[command(name = "vmctl", version, propagate_version = true)]
pub struct Cli {
    /// Talk to vmctld at this varlink socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = VARLINK_ADDRESS_ENV,
        default_value = VARLINK_SOCKET_PATH
    )]
    pub address: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the versions of vmctl and of the running vmctld.
    Version,
    /// List the VMs you may see.
    List {
        /// Print JSON (an array of VM objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory; creates DIR/man and DIR/completions.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
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
