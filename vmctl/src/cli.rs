//! The command line of vmctl.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vmctl_api::{
    names::{VARLINK_ADDRESS_ENV, VARLINK_SOCKET_PATH},
    sizes::parse_size,
    spec::VmmChoice,
};

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

    /// Never ask for a password: an action polkit allows only after
    /// authentication is refused. Without it, and when stdin is a
    /// terminal, vmctl runs pkttyagent so that polkit can ask (as
    /// systemctl does).
    #[arg(long, global = true, conflicts_with = "ask_password")]
    pub no_ask_password: bool,

    /// Ask for a password even when stdin is not a terminal (pkttyagent
    /// then prompts on the controlling terminal).
    #[arg(long, global = true)]
    pub ask_password: bool,

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
        /// Every user's VMs, not only yours (needs the polkit action
        /// org.vmctl.vm.manage-any).
        #[arg(long)]
        all: bool,
        /// Keep running and print each change (created, state, removed)
        /// as it happens: `EVENT NAME STATE` lines, or with --json one JSON
        /// object per line.
        #[arg(long)]
        watch: bool,
    },
    /// Define a new VM (stopped); start it with `vmctl start NAME` or
    /// `systemctl start vm@NAME`.
    ///
    /// Its root disk is a copy of the image's (a reflink where the file
    /// system can, else a sparse copy) grown to --disk. Its limits
    /// (MemoryMax=, CPUQuotaPerSecUSec=, TasksMax=) are set on
    /// vm@NAME.service, so `systemctl show vm@NAME` tells the truth.
    /// Sizes take K/M/G/T suffixes (binary: 1G = 1024M). A name starting
    /// with `-` goes after `--`.
    Create {
        /// The VM's name: a hostname label (a-z, 0-9, -).
        name: String,
        /// The image to copy the root disk from (a directory under
        /// /var/lib/vmctl/images) [default: default].
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// Number of virtual CPUs, 1 to 64 [default: 1].
        #[arg(long, value_name = "N")]
        cpus: Option<u32>,
        /// Guest memory, at least 128M and at most the host's memory
        /// [default: 1G].
        #[arg(long, value_name = "SIZE", value_parser = memory_size)]
        memory: Option<u64>,
        /// Root disk size, at least the image's [default: 4G or the image
        /// size if larger].
        #[arg(long, value_name = "SIZE", value_parser = disk_size)]
        disk: Option<u64>,
        /// The VMM: auto picks cloud-hypervisor where it is installed and
        /// KVM works, else QEMU [default: auto].
        #[arg(long, value_name = "VMM", value_parser = vmm)]
        vmm: Option<VmmChoice>,
        /// An OpenSSH public key file for the guest account (named like
        /// you); repeat for more. Without it, your ~/.ssh/*.pub are sent.
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<std::path::PathBuf>,
        /// `default`: a NIC on the host bridge with its own IPv4 and IPv6
        /// addresses, reachable as NAME.vm; `none`: no NIC at all.
        #[arg(long, value_name = "MODE", value_parser = ["default", "none"])]
        network: Option<String>,
        /// A persistent data volume of this size (at least 64M), mounted
        /// in the guest at /var/lib/vmctl-data; it survives `vmctl rm`
        /// unless --delete-data.
        #[arg(long, value_name = "SIZE", value_parser = data_size, conflicts_with = "data_volume")]
        data: Option<u64>,
        /// Attach a kept data volume of yours (see `vmctl volume list`).
        #[arg(long, value_name = "VOLUME")]
        data_volume: Option<String>,
        /// Discard the root disk at every stop: each start boots a fresh
        /// clone of the image (the data volume persists).
        #[arg(long)]
        ephemeral: bool,
        /// Print the new VM as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a VM; returns when the guest is up (minutes without KVM).
    Start {
        /// The VM's name.
        name: String,
    },
    /// Stop a VM (a clean guest power-off); returns when it is down.
    Stop {
        /// The VM's name.
        name: String,
    },
    /// Restart a VM; returns when the guest is up again.
    Restart {
        /// The VM's name.
        name: String,
    },
    /// Stop and delete a VM: its root disk, its definition and its unit
    /// limits. Its data volume is kept (`vmctl volume list`) unless
    /// --delete-data.
    #[command(visible_alias = "remove")]
    Rm {
        /// The VM's name.
        name: String,
        /// Delete the VM's data volume too.
        #[arg(long)]
        delete_data: bool,
    },
    /// Give a stopped VM a fresh root disk from its image; its name,
    /// addresses, SSH host key and data volume stay.
    Rebuild {
        /// The VM's name.
        name: String,
        /// Rebuild from this image instead (the VM uses it from then on).
        #[arg(long)]
        image: Option<String>,
    },
    /// Grow a stopped VM's root or data disk; the guest grows its file
    /// system at the next start. The growth counts in your disk quota.
    ResizeDisk {
        /// The VM's name.
        name: String,
        /// Which disk.
        #[arg(value_parser = ["root", "data"])]
        disk: String,
        /// The new size (K/M/G/T suffixes), at least the current one.
        #[arg(value_parser = data_size)]
        size: u64,
    },
    /// List or delete images.
    Image {
        /// What to do.
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// List or delete storage volumes (root disks and data volumes).
    Volume {
        /// What to do.
        #[command(subcommand)]
        action: VolumeCommand,
    },
    /// The storage pool's state.
    Pool {
        /// What to show.
        #[command(subcommand)]
        action: PoolCommand,
    },
    /// Show everything vmctld knows about a VM.
    #[command(visible_alias = "show")]
    Describe {
        /// The VM's name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a running VM (root only for now); exits with its
    /// exit code, or 128 + the signal that killed it.
    Exec {
        /// The VM's name.
        name: String,
        /// The command and its arguments (after `--` if they start with `-`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Open a login shell in a running VM on a terminal (root only for now).
    Shell {
        /// The VM's name.
        name: String,
    },
    /// Copy a file into or out of a running VM (root only for now), keeping
    /// its mode. Name the target file in full, e.g.
    /// `vmctl cp notes.txt blog:/root/notes.txt`. A file copied out of a VM
    /// never keeps setuid, setgid or sticky bits, and a symlink at the local
    /// target is replaced, not written through.
    Cp {
        /// The source: a local path or VM:/absolute/path.
        from: String,
        /// The target: a local path or VM:/absolute/path.
        to: String,
        /// Refuse a file from a VM larger than this (K/M/G/T suffixes).
        #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = max_size)]
        max_size: u64,
    },
    /// Attach to a running VM's serial console (root only); Ctrl-] detaches.
    Console {
        /// The VM's name.
        name: String,
    },
    /// How the HTTPS proxy serves a VM at https://NAME.<domain>/: the
    /// VM's port (80 until set) and who may visit (private: only you,
    /// after `vmctl login`; public: anyone).
    Publish {
        /// The VM's name.
        name: String,
        /// The VM's port the proxy forwards to.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Open the site to anyone.
        #[arg(long, conflicts_with = "private")]
        public: bool,
        /// Only the owner, after a login (the default).
        #[arg(long)]
        private: bool,
    },
    /// Let USER into your VM's private site on the HTTPS proxy too (after
    /// their own `vmctl login`); the VM itself stays yours to manage.
    Share {
        /// The VM's name.
        name: String,
        /// A user name (or uid) on this host.
        user: String,
    },
    /// Stop sharing your VM's site with USER.
    Unshare {
        /// The VM's name.
        name: String,
        /// A user name (or uid) it is shared with.
        user: String,
    },
    /// Print a one-time link that logs you in to your VM's private site on
    /// the HTTPS proxy (valid for 5 minutes).
    Login {
        /// The VM's name.
        name: String,
    },
    /// Your SSH public keys for the SSH gateway (`ssh -p 2222 HOST`):
    /// a registered key opens your account there.
    SshKey {
        /// What to do.
        #[command(subcommand)]
        action: SshKeyCommand,
    },
    /// Show or set per-user quotas (VMs, vCPUs, memory, disk).
    Quota {
        /// What to do.
        #[command(subcommand)]
        action: QuotaCommand,
    },
    /// Compare vmctld's store with the VMs' files, units and interfaces
    /// (what vmctld repairs at each start); exits 1 if something is left
    /// unrepaired. Needs the admin action.
    Doctor {
        /// Repair what can be repaired.
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of text.
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

/// `vmctl ssh-key` subcommands.
#[derive(Debug, Subcommand)]
pub enum SshKeyCommand {
    /// Register the public keys in FILE (e.g. ~/.ssh/id_ed25519.pub).
    Add {
        /// An OpenSSH public key file.
        file: PathBuf,
    },
    /// List your registered keys.
    #[command(visible_alias = "ls")]
    List,
    /// Remove a key: a public key file, or the key line itself.
    #[command(visible_alias = "remove")]
    Rm {
        /// A public key file or `TYPE BASE64`.
        key: String,
    },
}

/// `vmctl quota` subcommands.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show USER's limits and usage (default: yours; another user's needs
    /// the admin action).
    Show {
        /// A user name or uid.
        user: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replace USER's quota override (admin): each limit given replaces
    /// the default of [Quota] in /etc/vmctl/vmctl.conf; none given puts
    /// USER back on the defaults.
    Set {
        /// A user name or uid.
        user: String,
        /// Most VMs.
        #[arg(long, value_name = "N")]
        vms: Option<u64>,
        /// Most vCPUs over all VMs.
        #[arg(long, value_name = "N")]
        vcpus: Option<u64>,
        /// Most memory over all VMs (K/M/G/T suffixes).
        #[arg(long, value_name = "SIZE", value_parser = memory_size)]
        memory: Option<u64>,
        /// Most disk over all VMs (K/M/G/T suffixes).
        #[arg(long, value_name = "SIZE", value_parser = disk_size)]
        disk: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `vmctl image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// The images: size, the VMs using each, when written.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import an image (needs org.vmctl.image.manage): from a container
    /// image (a `docker export`/`podman export` tarball, plain or gzip, or
    /// an OCI image layout directory; vmctl's guest kernel and agent are
    /// added), or with --kernel from a raw disk holding a file system
    /// (ext4, XFS or btrfs, no partition table) and a bzImage kernel,
    /// optionally an initrd. The files are opened by vmctl, as you.
    Import {
        /// The new image's name.
        name: String,
        /// The container tarball or OCI layout directory; with --kernel,
        /// the raw root disk.
        file: std::path::PathBuf,
        /// The kernel (an x86 bzImage, e.g. /boot/vmlinuz-*): FILE is then
        /// a raw root disk.
        #[arg(long)]
        kernel: Option<std::path::PathBuf>,
        /// The initrd, if the kernel needs one to mount the root disk.
        #[arg(long, requires = "kernel")]
        initrd: Option<std::path::PathBuf>,
    },
    /// Delete an image no VM uses (needs org.vmctl.image.manage).
    Rm {
        /// The image's name.
        name: String,
    },
}

/// `vmctl volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Your volumes: root disks of your VMs and your data volumes, kept
    /// ones too (with manage-any: every volume), with their owners.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a kept data volume of yours (another's needs manage-any).
    Rm {
        /// The volume's name.
        name: String,
    },
}

/// `vmctl pool ...`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// The storage pool: backend, location, size, free space, and whether
    /// root disks are copy-on-write clones of their image.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn data_size(text: &str) -> Result<u64, String> {
    parse_size("data", text).map_err(|e| e.to_string())
}

fn memory_size(text: &str) -> Result<u64, String> {
    parse_size("memory", text).map_err(|e| e.to_string())
}

fn disk_size(text: &str) -> Result<u64, String> {
    parse_size("disk", text).map_err(|e| e.to_string())
}

fn max_size(text: &str) -> Result<u64, String> {
    parse_size("--max-size", text).map_err(|e| e.to_string())
}

fn vmm(text: &str) -> Result<VmmChoice, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_parses_sizes() {
        let cli = Cli::try_parse_from([
            "vmctl", "create", "blog", "--cpus", "2", "--memory", "1GiB", "--disk", "2048M",
            "--vmm", "qemu",
        ])
        .unwrap();
        match cli.command {
            Command::Create {
                name,
                cpus,
                memory,
                disk,
                vmm,
                ..
            } => {
                assert_eq!(name, "blog");
                assert_eq!(cpus, Some(2));
                assert_eq!(memory, Some(1 << 30));
                assert_eq!(disk, Some(2 << 30));
                assert_eq!(vmm, Some(VmmChoice::Qemu));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_size_names_the_value() {
        let e = Cli::try_parse_from(["vmctl", "create", "x", "--memory", "lots"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("invalid memory size \"lots\""), "{text}");
    }

    #[test]
    fn dash_names_after_double_dash_and_exec_args() {
        let cli = Cli::try_parse_from(["vmctl", "create", "--", "-rf"]).unwrap();
        assert!(matches!(cli.command, Command::Create { name, .. } if name == "-rf"));
        let cli = Cli::try_parse_from(["vmctl", "exec", "blog", "--", "ls", "-l"]).unwrap();
        assert!(matches!(cli.command, Command::Exec { command, .. } if command == ["ls", "-l"]));
        let cli = Cli::try_parse_from(["vmctl", "exec", "blog", "uname", "-r"]).unwrap();
        assert!(matches!(cli.command, Command::Exec { command, .. } if command == ["uname", "-r"]));
    }
}
