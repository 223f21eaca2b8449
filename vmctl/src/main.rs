//! vmctl: the command-line client of vmctld (speaks varlink).

mod cli;
mod client;
mod docs;
mod output;

use std::process::ExitCode;

use clap::Parser;
use vmctl_api::{names::VARLINK_INTERFACE, GetVersionReply, ListReply};

use cli::{Cli, Command};
use client::Client;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the error the way people read it: `vmctl: error: ...`, with the
/// causes and hints on their own lines, and exits with 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("vmctl: error: {e:#}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("vmctl {}", env!("CARGO_PKG_VERSION"));
            let mut client = Client::connect(&cli.address).await?;
            let v: GetVersionReply = client
                .call(&format!("{VARLINK_INTERFACE}.GetVersion"), None)
                .await?;
            println!(
                "vmctld {} (interface version {})",
                v.version, v.interface_version
            );
        }
        Command::List { json } => {
            let mut client = Client::connect(&cli.address).await?;
            let reply: ListReply = client
                .call(&format!("{VARLINK_INTERFACE}.List"), None)
                .await?;
            if json {
                println!("{}", output::vm_json(&reply.vms));
            } else {
                print!("{}", output::vm_table(&reply.vms));
            }
        }
        Command::GenerateDocs { out } => docs::generate(&out)?,
    }
    Ok(())
}
