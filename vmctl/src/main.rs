//! vmctl: the command-line client of vmctld (speaks varlink).

mod admin;
mod cli;
mod client;
mod console;
mod docs;
mod exec;
mod keys;
mod output;
mod polkit_agent;
mod users;
mod volume;
mod watch;
mod web;

use std::process::ExitCode;

use clap::Parser;
use serde_json::{json, Value};
use vmctl_api::{names::VARLINK_INTERFACE, CreateParams, DetailsReply, GetVersionReply, ListReply};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime: the agent inherits a descriptor (see there).
    let _agent = polkit_agent::wanted(cli.ask_password, cli.no_ask_password)
        .then(start_agent)
        .flatten();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(run(cli));
    // exec may leave a blocking stdin read behind: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

/// Prints the error the way people read it: `vmctl: error: ...`, with the
/// causes and hints on their own lines, and exits with 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("vmctl: error: {e:#}");
    ExitCode::FAILURE
}

fn method(name: &str) -> String {
    format!("{VARLINK_INTERFACE}.{name}")
}

/// Runs the command; returns the exit code.
/// Starts `pkttyagent` (see [`polkit_agent::wanted`]); without it polkit
/// cannot prompt, so calls do not ask to.
fn start_agent() -> Option<polkit_agent::Agent> {
    match polkit_agent::Agent::start() {
        Ok(agent) => {
            client::allow_interactive_authentication();
            Some(agent)
        }
        Err(e) => {
            eprintln!("vmctl: warning: no password prompt: cannot start pkttyagent: {e}");
            None
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Version => {
            println!("vmctl {}", env!("CARGO_PKG_VERSION"));
            let mut client = client::connect(&cli.address).await?;
            let v: GetVersionReply = client.call(&method("GetVersion"), None).await?;
            println!(
                "vmctld {} (interface version {})",
                v.version, v.interface_version
            );
        }
        Command::List {
            json,
            all,
            watch: true,
        } => watch::run(&cli.address, all, json).await?,
        Command::List { json, all, .. } => {
            let mut client = client::connect(&cli.address).await?;
            let params = all.then(|| json!({ "all": true }));
            let reply: ListReply = client.call(&method("List"), params).await?;
            if json {
                println!("{}", output::vm_json(&reply.vms));
            } else {
                print!("{}", output::vm_table(&reply.vms));
            }
        }
        Command::Create {
            name,
            image,
            cpus,
            memory,
            disk,
            vmm,
            ssh_keys,
            network,
            data,
            data_volume,
            ephemeral,
            json,
        } => {
            let keys = if ssh_keys.is_empty() {
                keys::default_keys()
            } else {
                keys::read_key_files(&ssh_keys)?
            };
            let params = CreateParams {
                name,
                image,
                vcpus: cpus,
                memory_bytes: memory,
                disk_bytes: disk,
                vmm,
                network,
                ssh_authorized_keys: Some(keys),
                data_bytes: data,
                data_volume,
                ephemeral: ephemeral.then_some(true),
            };
            let mut client = client::connect(&cli.address).await?;
            let reply: DetailsReply = client
                .call(&method("Create"), Some(serde_json::to_value(&params)?))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply.vm)?);
            } else {
                print!("{}", output::created(&reply.vm));
            }
        }
        Command::Start { name } => name_call(&cli.address, "Start", name).await?,
        Command::Stop { name } => name_call(&cli.address, "Stop", name).await?,
        Command::Restart { name } => name_call(&cli.address, "Restart", name).await?,
        Command::Rm { name, delete_data } => {
            let mut client = client::connect(&cli.address).await?;
            let params = vmctl_api::types::RemoveParams {
                name,
                delete_data: delete_data.then_some(true),
            };
            let _: Value = client
                .call(&method("Remove"), Some(serde_json::to_value(&params)?))
                .await?;
        }
        Command::Rebuild { name, image } => {
            let mut client = client::connect(&cli.address).await?;
            let _: Value = client
                .call(
                    &method("Rebuild"),
                    Some(serde_json::json!({ "name": name, "image": image })),
                )
                .await?;
        }
        Command::ResizeDisk { name, disk, size } => {
            let mut client = client::connect(&cli.address).await?;
            let params = vmctl_api::types::ResizeDiskParams {
                name,
                disk,
                size_bytes: size,
            };
            let _: Value = client
                .call(&method("ResizeDisk"), Some(serde_json::to_value(&params)?))
                .await?;
        }
        Command::Image { action } => match action {
            cli::ImageCommand::List { json } => volume::list_images(&cli.address, json).await?,
            cli::ImageCommand::Rm { name } => name_call(&cli.address, "RemoveImage", name).await?,
            cli::ImageCommand::Import {
                name,
                file,
                kernel,
                initrd,
            } => {
                volume::import_image(
                    &cli.address,
                    &name,
                    &file,
                    kernel.as_deref(),
                    initrd.as_deref(),
                )
                .await?
            }
        },
        Command::Volume { action } => match action {
            cli::VolumeCommand::List { json } => volume::list(&cli.address, json).await?,
            cli::VolumeCommand::Rm { name } => volume::remove(&cli.address, &name).await?,
        },
        Command::Pool {
            action: cli::PoolCommand::Status { json },
        } => volume::pool_status(&cli.address, json).await?,
        Command::Describe { name, json } => {
            let mut client = client::connect(&cli.address).await?;
            let reply: DetailsReply = client
                .call(&method("Describe"), Some(json!({ "name": name })))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply.vm)?);
            } else {
                print!("{}", output::details(&reply.vm));
            }
        }
        Command::Exec { name, command } => {
            return exec::exec(&cli.address, &name, command).await;
        }
        Command::Shell { name } => return exec::shell(&cli.address, &name).await,
        Command::Console { name } => return console::console(&cli.address, &name).await,
        Command::Cp { from, to, max_size } => {
            exec::copy(&cli.address, &from, &to, max_size).await?
        }
        Command::Publish {
            name,
            port,
            public,
            private,
        } => web::publish(&cli.address, &name, port, web::visibility(public, private)?).await?,
        Command::Share { name, user } => web::share(&cli.address, &name, &user, true).await?,
        Command::Unshare { name, user } => web::share(&cli.address, &name, &user, false).await?,
        Command::Login { name } => web::login(&cli.address, &name).await?,
        Command::SshKey { action } => keys::ssh_key(&cli.address, action).await?,
        Command::Quota { action } => match action {
            cli::QuotaCommand::Show { user, json } => {
                admin::show(&cli.address, user.as_deref(), json).await?
            }
            cli::QuotaCommand::Set {
                user,
                vms,
                vcpus,
                memory,
                disk,
                json,
            } => {
                let limits = admin::QuotaLimits {
                    vms,
                    vcpus,
                    memory,
                    disk,
                };
                admin::set(&cli.address, &user, &limits, json).await?
            }
        },
        Command::Doctor { repair, json } => return admin::doctor(&cli.address, repair, json).await,
        Command::GenerateDocs { out } => docs::generate(&out)?,
    }
    Ok(0)
}

/// Calls a method that takes only the VM name and replies nothing. It may
/// take minutes (a boot under TCG): there is no timeout.
async fn name_call(address: &std::path::Path, name_of: &str, name: String) -> anyhow::Result<()> {
    let mut client = client::connect(address).await?;
    let _: Value = client
        .call(&method(name_of), Some(json!({ "name": name })))
        .await?;
    Ok(())
}
