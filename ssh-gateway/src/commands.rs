//! Command mode: `ssh -p 2222 HOST COMMAND...`. The words and errors are
//! those of the `vmctl` CLI; each command is one or two calls to
//! `io.vmctl.Manager` on behalf of the key's owner.

use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;
use vmctl_api::{client::ClientError, sizes::parse_size, ListReply, VmDetails};

use crate::vmctld::{Identity, Vmctld};

/// What a command printed and its exit status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status (0 success, 1 failure, 2 usage error).
    pub status: u32,
}

impl Output {
    fn ok(stdout: impl Into<String>) -> Self {
        Self {
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    fn error(message: impl std::fmt::Display) -> Self {
        Self {
            stderr: format!("error: {message}\n"),
            status: 1,
            ..Self::default()
        }
    }
}

/// The commands of the SSH gateway.
#[derive(Debug, Parser)]
#[command(
    name = "ssh -p 2222 HOST",
    no_binary_name = true,
    disable_version_flag = true,
    after_help = "Reach a VM of yours: ssh -p 2222 NAME@HOST (or NAME.vm@HOST).\n\
                  scp -P 2222, sftp -P 2222 and ssh -L work the same way."
)]
pub struct GatewayCli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands (the same words as `vmctl`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Define a new VM and start it.
    New {
        /// The VM's name: a hostname label (a-z, 0-9, -) [default: a
        /// generated vm-XXXXXX].
        #[arg(long)]
        name: Option<String>,
        /// The image to copy the root disk from [default: default].
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Number of virtual CPUs, 1 to 64 [default: 1].
        #[arg(long, value_name = "N")]
        cpus: Option<u32>,
        /// Guest memory (K/M/G suffixes) [default: 1G].
        #[arg(long, value_name = "SIZE", value_parser = memory_size)]
        memory: Option<u64>,
        /// Define it only; start it later with `start NAME`.
        #[arg(long)]
        no_start: bool,
    },
    /// List your VMs.
    #[command(visible_alias = "list")]
    Ls {
        /// Print JSON (an array of VM objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop and delete a VM (its data volume is kept).
    #[command(visible_alias = "remove")]
    Rm {
        /// The VM's name.
        name: String,
    },
    /// Start a VM; returns when the guest is up.
    Start {
        /// The VM's name.
        name: String,
    },
    /// Stop a VM (a clean guest power-off).
    Stop {
        /// The VM's name.
        name: String,
    },
    /// Restart a VM.
    Restart {
        /// The VM's name.
        name: String,
    },
    /// Your SSH public keys (the keys that open this gateway).
    #[command(subcommand)]
    SshKey(KeyCommand),
    /// Who the gateway takes you for.
    Whoami,
}

/// `ssh-key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Register one more public key: `ssh-key add ssh-ed25519 AAAA... comment`.
    Add {
        /// The public key line (TYPE BASE64 [COMMENT]).
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        key: Vec<String>,
    },
    /// List your registered keys.
    #[command(visible_alias = "ls")]
    List,
    /// Remove a key (TYPE BASE64, the comment is ignored).
    #[command(visible_alias = "remove")]
    Rm {
        /// The public key line.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        key: Vec<String>,
    },
}

fn memory_size(text: &str) -> Result<u64, String> {
    parse_size("memory", text).map_err(|e| e.to_string())
}

/// Parses a command line as the client sent it (`ssh HOST a b c` sends
/// `a b c`), split like a POSIX shell would, without running one.
pub fn parse(line: &str) -> Result<GatewayCli, Output> {
    let words = shell_words::split(line).map_err(|e| Output {
        stderr: format!("error: cannot split the command {line:?}: {e}\n{}", help()),
        status: 2,
        ..Output::default()
    })?;
    if words.is_empty() || words == ["help"] {
        return Err(Output {
            stdout: help(),
            status: if words.is_empty() { 2 } else { 0 },
            ..Output::default()
        });
    }
    GatewayCli::try_parse_from(&words).map_err(|e| {
        let mut text = e.render().to_string();
        if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
            text.push('\n');
            text.push_str(&help());
        }
        let status = if e.use_stderr() { 2 } else { 0 };
        if status == 0 {
            Output::ok(text)
        } else {
            Output {
                stderr: text,
                status,
                ..Output::default()
            }
        }
    })
}

/// The help text.
pub fn help() -> String {
    use clap::CommandFactory;
    GatewayCli::command().render_help().to_string()
}

/// Context of one command: who runs it and how the client reached us.
#[derive(Debug, Clone)]
pub struct Context {
    /// The key's owner.
    pub identity: Identity,
    /// The key the client authenticated with (`TYPE BASE64`).
    pub key: String,
    /// vmctld.
    pub vmctld: Vmctld,
}

/// Runs a parsed command.
pub async fn run(cli: GatewayCli, ctx: &Context) -> Output {
    match execute(cli.command, ctx).await {
        Ok(output) => output,
        Err(e) => Output::error(e),
    }
}

async fn execute(command: Command, ctx: &Context) -> Result<Output, ClientError> {
    let uid = ctx.identity.uid;
    let vmctld = &ctx.vmctld;
    let name_call = |member: &'static str, name: String| async move {
        vmctld
            .manager::<serde_json::Value>(uid, member, json!({ "name": name }))
            .await
    };
    Ok(match command {
        Command::New {
            name,
            image,
            cpus,
            memory,
            no_start,
        } => {
            let name = name.unwrap_or_else(generated_name);
            #[derive(Deserialize)]
            struct Reply {
                vm: VmDetails,
            }
            let reply: Reply = vmctld
                .manager(
                    uid,
                    "Create",
                    json!({
                        "name": name,
                        "image": image,
                        "vcpus": cpus,
                        "memory_bytes": memory,
                    }),
                )
                .await?;
            let mut out = created(&reply.vm);
            if !no_start {
                name_call("Start", name.clone()).await?;
                out.push_str(&format!("Started. Log in with: ssh -p 2222 {name}@HOST\n"));
            } else {
                out.push_str(&format!("Start it with: ssh -p 2222 HOST start {name}\n"));
            }
            Output::ok(out)
        }
        Command::Ls { json } => {
            let reply: ListReply = vmctld.manager(uid, "List", json!({})).await?;
            Output::ok(if json {
                vmctl_api::render::vm_json(&reply.vms) + "\n"
            } else {
                vmctl_api::render::vm_table(&reply.vms)
            })
        }
        Command::Rm { name } => {
            name_call("Remove", name.clone()).await?;
            Output::ok(format!("Removed VM {name}.\n"))
        }
        Command::Start { name } => {
            name_call("Start", name.clone()).await?;
            Output::ok(format!("Started VM {name}.\n"))
        }
        Command::Stop { name } => {
            name_call("Stop", name.clone()).await?;
            Output::ok(format!("Stopped VM {name}.\n"))
        }
        Command::Restart { name } => {
            name_call("Restart", name.clone()).await?;
            Output::ok(format!("Restarted VM {name}.\n"))
        }
        Command::SshKey(KeyCommand::Add { key }) => {
            let key = key.join(" ");
            vmctld
                .manager::<serde_json::Value>(uid, "AddSSHKey", json!({ "key": key }))
                .await?;
            Output::ok("Key added.\n")
        }
        Command::SshKey(KeyCommand::List) => {
            #[derive(Deserialize)]
            struct Reply {
                keys: Vec<String>,
            }
            let reply: Reply = vmctld.manager(uid, "ListSSHKeys", json!({})).await?;
            Output::ok(
                reply
                    .keys
                    .iter()
                    .map(|k| format!("{k}\n"))
                    .collect::<String>(),
            )
        }
        Command::SshKey(KeyCommand::Rm { key }) => {
            let key = key.join(" ");
            vmctld
                .manager::<serde_json::Value>(uid, "RemoveSSHKey", json!({ "key": key }))
                .await?;
            Output::ok("Key removed.\n")
        }
        Command::Whoami => Output::ok(format!(
            "{} (uid {})\nkey: {}\n",
            ctx.identity.user, ctx.identity.uid, ctx.key
        )),
    })
}

/// A fresh VM name when `new` has no `--name`: `vm-` and six hex digits.
fn generated_name() -> String {
    let n: u32 = rand::random();
    format!("vm-{:06x}", n & 0xff_ffff)
}

fn created(vm: &VmDetails) -> String {
    format!(
        "Created VM {}: {} vCPU{}, {} memory, {} disk from image {}.\n",
        vm.name,
        vm.vcpus,
        if vm.vcpus == 1 { "" } else { "s" },
        vmctl_api::sizes::format_size_short(vm.memory_bytes),
        vmctl_api::sizes::format_size_short(vm.disk_bytes),
        vm.image,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_words() {
        let cli = parse("new --name t1 --cpus 2 --memory 512M").unwrap();
        match cli.command {
            Command::New {
                name, cpus, memory, ..
            } => {
                assert_eq!(name.as_deref(), Some("t1"));
                assert_eq!(cpus, Some(2));
                assert_eq!(memory, Some(512 << 20));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("ls --json").unwrap().command,
            Command::Ls { json: true }
        ));
        match parse("ssh-key add ssh-ed25519 AAAAC3Nza me@host")
            .unwrap()
            .command
        {
            Command::SshKey(KeyCommand::Add { key }) => {
                assert_eq!(key.join(" "), "ssh-ed25519 AAAAC3Nza me@host")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_commands_get_help_and_a_failure_status() {
        let out = parse("frobnicate").unwrap_err();
        assert_eq!(out.status, 2);
        assert!(out.stderr.contains("frobnicate"), "{}", out.stderr);
        assert!(out.stderr.contains("whoami"), "the help: {}", out.stderr);
        let out = parse("").unwrap_err();
        assert_eq!(out.status, 2);
        assert!(out.stdout.contains("ssh-key"), "{}", out.stdout);
        let out = parse("help").unwrap_err();
        assert_eq!(out.status, 0);
        let out = parse("new --memory lots").unwrap_err();
        assert_eq!(out.status, 2);
        assert!(out.stderr.contains("lots"), "{}", out.stderr);
        let out = parse("rm 'unterminated").unwrap_err();
        assert_eq!(out.status, 2);
    }

    #[test]
    fn generated_names_are_valid_vm_names() {
        for _ in 0..20 {
            let name = generated_name();
            vmctl_api::validate_vm_name(&name).unwrap();
        }
    }
}
