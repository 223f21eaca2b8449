//! The vmctld binary: parse the command line, set up logging, run.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use vmctld::{
    cli::{Cli, Command},
    daemon::{self, Options},
    dbus::BusChoice,
    logging,
    varlink_server::Limits,
    Registry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenerateDocs { out }) = &cli.command {
        return match vmctld::cli::generate_docs(out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmctld: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    logging::init();
    let options = Options {
        varlink_address: cli.varlink_address,
        bus: match (cli.no_dbus, cli.dbus_address) {
            (true, _) => None,
            (false, Some(address)) => Some(BusChoice::Address(address)),
            (false, None) => Some(BusChoice::System),
        },
        state_dir: cli
            .state_directory
            .unwrap_or_else(Registry::default_state_dir),
        // Only the real daemon (default runtime directory) touches
        // networkd's configuration; test daemons never do.
        networkd_dropin_dir: cli.networkd_dropin_dir.or_else(|| {
            cli.runtime_directory
                .is_none()
                .then(|| vmctld::bridge::DEFAULT_DROPIN_DIR.into())
        }),
        runtime_dir: cli
            .runtime_directory
            .unwrap_or_else(|| vmctl_api::spec::Layout::default().runtime_dir),
        config_path: cli
            .config
            .unwrap_or_else(vmctld::addresses::default_config_path),
        varlink_limits: Limits {
            idle_timeout: Duration::from_secs_f64(cli.varlink_idle_timeout),
            ..Limits::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
