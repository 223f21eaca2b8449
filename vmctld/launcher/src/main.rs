//! `vmctl-launch NAME`: the launcher `vm@NAME.service` runs for one VM.
//!
//! What it does, step by step:
//!
//! 1. Validates the name and reads the VM's spec (`Layout::spec_file`), its
//!    image's kernel and initramfs and its root disk. Anything missing or
//!    invalid is an error on stderr (the journal) that names the file and
//!    the fix; the launcher exits non-zero, so the unit fails and nothing
//!    hangs.
//! 2. Reports each step as `STATUS=` over sd-notify.
//! 3. Picks the VMM through vmctl-vmm (`auto`: cloud-hypervisor when it is
//!    installed and KVM is usable, else QEMU with KVM or TCG) and turns the spec into its configuration: vCPUs, memory,
//!    direct kernel boot with `console=ttyS0 root=/dev/vda rw
//!    systemd.firstboot=off systemd.machine_id=<id> panic=-1 quiet`, the
//!    root disk read-write, vsock with the spec's CID behind the hybrid-vsock
//!    socket `Layout::vsock_socket`. The serial console is relayed to the
//!    launcher's stderr line by line (`console: ...` in the journal:
//!    escaped, cut at 512 bytes, rate-limited; see `console.rs`) and to
//!    clients of the Unix socket `Layout::console_socket`.
//!    A VM with a network (see `network.rs`) gets a TAP `vmt-<CID>` made
//!    with the TUN ioctl, non-persistent and inherited by QEMU as a
//!    descriptor (so it is gone with the VMM, even after `kill -9`), in the
//!    owner's device group on the bridge `vmbr0` (waited for 3 s; missing,
//!    the start fails naming systemd-networkd) behind the nftables rules
//!    that keep owners apart, and its addresses by the credential
//!    `network.network.50-vmctl`; vmctld's SSH credentials
//!    (`guest_credentials::for_vm`) go with it in binary form.
//! 4. Listens on `<vsock socket>_1025` (the agent's hello) and
//!    `<vsock socket>_1026` (guest systemd's sd_notify messages, asked for
//!    with the credential `vmm.notify_socket=vsock-stream:2:1026`) before
//!    boot, starts vhost-device-vsock and QEMU as its children. Run as
//!    root (always, under systemd), they run as the VM's own uid/gid
//!    (`identity.rs`: 0x7F000000 + CID), with no capabilities, and only the
//!    VM's runtime directory, disk, credential files and these two sockets
//!    are opened to that uid (POSIX ACLs, `vmctl_vmm::sandbox`).
//! 5. Waits for the guest agent's `hello` on that socket, at most
//!    `--boot-timeout`; then `READY=1` and `STATUS=Running`. A VMM that
//!    exits first, or the timeout, fails the launch (the VMM is killed).
//!    When guest systemd reports `READY=1` before the agent's hello,
//!    `STATUS=Guest systemd is up; waiting for the guest agent` (exec needs
//!    the agent, so the unit is not ready yet). Guest `STATUS=` lines are
//!    logged at debug level, its shutdown messages (`shutdown.target`
//!    reached, `STOPPING=1`, `X_SYSTEMD_SHUTDOWN=`, `EXIT_STATUS=`) at info.
//!    A guest whose systemd is older than 256 never connects; nothing
//!    changes then. Both ports are open to any guest process: each
//!    connection is read on its own with a 5 s deadline and a size cap
//!    (`hello.rs`, `guest_notify.rs`), a hello is used only when every
//!    field passes `vmctl_guest::hello::check`, and nothing a guest sends
//!    goes into an sd_notify message (`notify.rs` refuses any field with a
//!    newline or control character besides). Guest details (kernel
//!    release, boot ID) are only logged.
//! 6. Leaves the VMM's PID and the TAP's index for the unit's
//!    `ExecStartPost=-+vmctl-launch --register-machine NAME`, which registers
//!    the VM with systemd-machined (`RegisterMachineWithNetwork`, class
//!    `vm`, leader = the VMM, its TAP as the interface) from outside the
//!    sandbox: the launcher's namespace has no system bus (see
//!    `machined.rs`). Without machined that step logs a warning; the VM
//!    runs on.
//! 7. Runs until the VMM exits or SIGTERM/SIGINT arrives. On a signal:
//!    `STOPPING=1`, the ACPI power button through the driver (after 10 s
//!    without effect also the guest agent's `shutdown` and a second press),
//!    then up to `--stop-timeout` for the guest to power off before the VMM
//!    is killed.
//!    Exit 0 after a clean power-off (also one the guest started itself);
//!    non-zero when the VMM failed, crashed or had to be killed, so the unit
//!    ends `failed` and `Restart=on-failure` works.
//! 8. Logs to stderr, without timestamps or colours when `JOURNAL_STREAM`
//!    says stderr is the journal.

mod boot_check;
mod console;
mod ephemeral;
mod guest_notify;
mod guest_port;
mod hello;
mod identity;
mod inputs;
mod isolation;
mod lifecycle;
mod machined;
mod network;
mod notify;
mod plan;
mod ratelimit;
mod tap;
mod vmm;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sd_notify::NotifyState;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};
use vmctl_api::spec::{Layout, HELLO_PORT};

use crate::lifecycle::Outcome;
use crate::notify::status;
use crate::vmm::Running;

/// The unit's `STATUS=` while the guest runs: the launcher's own words,
/// never guest text.
const RUNNING: &str = "Running";

/// Runs one VM for `vm@NAME.service`.
#[derive(Debug, Parser)]
#[command(name = "vmctl-launch", version, about)]
struct Args {
    /// The VM's name (the unit's instance, `%i`).
    name: String,
    /// vmctld's state directory (specs, disks, images).
    #[arg(long, default_value = "/var/lib/vmctl")]
    state_dir: PathBuf,
    /// The runtime directory (the VM's sockets go to `<this>/vm/NAME/`).
    #[arg(long, default_value = "/run/vmctl")]
    runtime_dir: PathBuf,
    /// Seconds to wait for the guest agent's hello.
    #[arg(long, default_value_t = 240)]
    boot_timeout: u64,
    /// Seconds to wait for the guest to power off before killing the VMM.
    #[arg(long, default_value_t = 60)]
    stop_timeout: u64,
    /// Instead of running the VM: register the running VM with
    /// systemd-machined (the unit's `ExecStartPost=-+`, as root outside the
    /// sandbox; `$MAINPID` is the launcher).
    #[arg(long)]
    register_machine: bool,
    /// Instead of running the VM: remove what a killed launcher may have
    /// left of the VM's network (the unit's `ExecStopPost=`): a persistent
    /// TAP, and isolation elements of TAPs that are gone.
    #[arg(long, conflicts_with = "register_machine")]
    release_network: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.register_machine {
        if let Err(e) = machined::enter_host_mount_namespace() {
            warn!("staying in the unit's mount namespace: {e}");
        }
        return match runtime.block_on(register_machine(&args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn!("not registered with systemd-machined: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.release_network {
        let layout = Layout::under(&args.state_dir, &args.runtime_dir);
        let spec = std::fs::read_to_string(layout.spec_file(&args.name))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        return match network::release(spec.as_ref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = runtime.block_on(run(&args));
    discard_if_ephemeral(&args);
    if outcome == Outcome::PoweredOff {
        info!("VM {}: {}", args.name, outcome.describe());
    } else {
        error!("VM {}: {}", args.name, outcome.describe());
    }
    ExitCode::from(outcome.exit_code())
}

/// After the VMM is gone: an ephemeral VM's root disk is emptied, so what
/// the guest wrote does not outlive the stop.
fn discard_if_ephemeral(args: &Args) {
    let layout = Layout::under(&args.state_dir, &args.runtime_dir);
    let spec: Option<vmctl_api::spec::VmSpec> =
        std::fs::read_to_string(layout.spec_file(&args.name))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
    if spec.is_some_and(|s| s.ephemeral) {
        match ephemeral::discard_root(&layout.root_disk(&args.name)) {
            Ok(()) => info!("VM {}: ephemeral root disk discarded", args.name),
            Err(e) => warn!("VM {}: {e}", args.name),
        }
    }
}

fn init_logging() {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if journal {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

async fn run(args: &Args) -> Outcome {
    // QEMU resolves paths itself: make them absolute.
    let (state_dir, runtime_dir) = match (
        std::path::absolute(&args.state_dir),
        std::path::absolute(&args.runtime_dir),
    ) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return Outcome::Error(format!("bad directory: {e}")),
    };
    let layout = Layout::under(state_dir, runtime_dir);
    status("Reading the VM spec");
    let inputs = match inputs::load(&layout, &args.name) {
        Ok(i) => i,
        Err(e) => return Outcome::Error(e),
    };
    if inputs.spec.ephemeral {
        status("Cloning a fresh root disk from the image");
        let image_root = layout.image_dir(&inputs.spec.image).join("root.raw");
        if let Err(e) =
            ephemeral::fresh_root(&image_root, &inputs.root_disk, inputs.spec.disk_bytes)
        {
            return Outcome::Error(e);
        }
    }
    let driver = plan::select_driver(inputs.spec.vmm);
    let mut config = plan::vm_config(&inputs, &layout);
    // As root (always under systemd), the VMM runs as the VM's own
    // unprivileged identity; a launcher run by a user keeps the user's.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        match identity::for_cid(inputs.spec.cid)
            .and_then(|id| identity::check_free(id).map(|()| id))
        {
            Ok(id) => config.identity = Some(id),
            Err(e) => return Outcome::Error(format!("no identity for the VMM: {e}")),
        }
    }
    // Held until the launcher exits: the VM's TAP (with QEMU's copy).
    let network = match network::setup(&inputs.spec, driver, &mut config).await {
        Ok(n) => n,
        Err(e) => return Outcome::Error(e),
    };
    match vmctl_api::guest_credentials::for_vm(&layout, &inputs.spec) {
        Ok(creds) => config.credentials.extend(plan::guest_credentials(&creds)),
        Err(e) => return Outcome::Error(format!("cannot read the VM's SSH host key: {e}")),
    }
    if let Err(e) = std::fs::create_dir_all(&config.runtime_dir) {
        return Outcome::Error(format!(
            "cannot create {}: {e}",
            config.runtime_dir.display()
        ));
    }
    let hello_path = plan::host_port_socket(&layout.vsock_socket(&args.name), HELLO_PORT);
    let _ = std::fs::remove_file(&hello_path);
    let mut hellos = match UnixListener::bind(&hello_path) {
        Ok(l) => hello::serve(l),
        Err(e) => return Outcome::Error(format!("cannot listen on {}: {e}", hello_path.display())),
    };
    let notify_path =
        plan::host_port_socket(&layout.vsock_socket(&args.name), guest_notify::NOTIFY_PORT);
    let _ = std::fs::remove_file(&notify_path);
    let notify_listener = match UnixListener::bind(&notify_path) {
        Ok(l) => l,
        Err(e) => {
            return Outcome::Error(format!("cannot listen on {}: {e}", notify_path.display()))
        }
    };
    if let Some(id) = config.identity {
        // vhost-device-vsock, as the VMM's identity, connects to them.
        for path in [&hello_path, &notify_path] {
            if let Err(e) =
                vmctl_vmm::sandbox::grant(path, id.uid, vmctl_vmm::sandbox::Access::ReadWrite)
            {
                return Outcome::Error(format!("cannot open {} to the VMM: {e}", path.display()));
            }
        }
    }
    let agent = guest_notify::AgentState::default();
    guest_notify::serve(notify_listener, agent.clone(), status);
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => return Outcome::Error(format!("cannot handle signals: {e}")),
    };

    status(&format!(
        "Starting {driver:?} with {} vCPUs, {} MiB",
        config.vcpus,
        config.memory_mib()
    ));
    let console = layout.console_socket(&args.name);
    let vsock = layout.vsock_socket(&args.name);
    let mut running = match Running::start(&config, driver, &console).await {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e),
    };

    if let Some(leader) = running.pid() {
        let ifindices: Vec<i32> = network.iter().map(|n| n.ifindex() as i32).collect();
        let record = machined::record_path(&config.runtime_dir);
        if let Err(e) = machined::write_record(&record, leader, &ifindices) {
            warn!(
                "cannot write {} (machined registration): {e}",
                record.display()
            );
        }
    }
    agent.booting(|| status("Booting: waiting for the guest agent"));
    let boot_timeout = Duration::from_secs(args.boot_timeout);
    let mut failure = running.boot_failure();
    let hello = tokio::select! {
        hello = tokio::time::timeout(boot_timeout, hellos.recv()) => hello,
        reason = boot_check::failed(&mut failure) => {
            running.kill().await;
            return Outcome::Error(reason);
        }
        exited = running.wait() => {
            return match exited.map(Outcome::from_vmm_exit) {
                Ok(Outcome::PoweredOff) => Outcome::Error("the VMM exited before the guest was ready".into()),
                Ok(other) => Outcome::Error(format!("before the guest was ready, {}", other.describe())),
                Err(e) => Outcome::Error(format!("cannot wait for the VMM: {e}")),
            };
        }
        _ = sigterm.recv() => return stop(&mut running, &vsock, &agent, args.stop_timeout).await,
        _ = sigint.recv() => return stop(&mut running, &vsock, &agent, args.stop_timeout).await,
    };
    let hello = match hello {
        Ok(Some(hello)) => hello,
        Ok(None) => {
            running.kill().await;
            return Outcome::Error("the hello listener stopped".into());
        }
        Err(_) => {
            running.kill().await;
            return Outcome::BootTimedOut;
        }
    };
    // The fields passed vmctl_guest::hello::check: safe to log, and still
    // never part of an sd_notify message.
    info!(
        "guest agent {} says hello: kernel {}, boot ID {}",
        hello.version, hello.kernel_release, hello.boot_id
    );
    agent.set_ready(|| {
        info!("{RUNNING}");
        notify::notify_or_warn(&[NotifyState::Ready, NotifyState::Status(RUNNING)]);
    });
    // A guest that reboots says hello again: keep reading, and log it (any
    // guest process can send valid hellos in a loop: rate-limited).
    tokio::spawn(async move {
        let mut boot_id = hello.boot_id;
        let mut limiter = ratelimit::LogLimiter::new(10, 1, std::time::Instant::now());
        while let Some(hello) = hellos.recv().await {
            let admitted = limiter.admit(std::time::Instant::now());
            let ratelimit::Admit::Log { suppressed_before } = admitted else {
                boot_id = hello.boot_id;
                continue;
            };
            if suppressed_before > 0 {
                warn!("{suppressed_before} hellos not logged (too many)");
            }
            if hello.boot_id == boot_id {
                info!(
                    "guest agent {} says hello again (same boot): kernel {}",
                    hello.version, hello.kernel_release
                );
            } else {
                info!(
                    "guest rebooted: agent {} says hello: kernel {}, boot ID {}",
                    hello.version, hello.kernel_release, hello.boot_id
                );
                boot_id = hello.boot_id;
            }
        }
    });

    tokio::select! {
        exited = running.wait() => {
            match exited {
                Ok(s) => Outcome::from_vmm_exit(s),
                Err(e) => Outcome::Error(format!("cannot wait for the VMM: {e}")),
            }
        }
        _ = sigterm.recv() => stop(&mut running, &vsock, &agent, args.stop_timeout).await,
        _ = sigint.recv() => stop(&mut running, &vsock, &agent, args.stop_timeout).await,
    }
}

/// `--register-machine`: registers the running VM `args.name` with
/// systemd-machined, led by the VMM the launcher recorded.
async fn register_machine(args: &Args) -> Result<(), String> {
    let layout = Layout::under(&args.state_dir, &args.runtime_dir);
    let inputs = inputs::load(&layout, &args.name)?;
    let id = inputs::machine_id_bytes(&inputs.spec.id).ok_or("bad machine ID")?;
    let main_pid: u32 = std::env::var("MAINPID")
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or("$MAINPID is not set (run by the unit's ExecStartPost=)")?;
    let record = machined::record_path(&layout.vm_runtime_dir(&args.name));
    let (leader, ifindices) = machined::read_record(&record, main_pid)?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        machined::register(&args.name, id, leader, &ifindices),
    )
    .await
    {
        Ok(Ok(())) => {
            info!("registered with systemd-machined");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// Asks the guest agent to power the guest off; failures are logged.
async fn ask_agent_to_power_off(vsock: &Path) {
    let ask = async {
        vmctl_guest::client::AgentClient::connect(vsock)
            .await?
            .shutdown(false)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(())) => {}
        // The agent's error text comes from the guest.
        Ok(Err(e)) => warn!(
            "guest agent shutdown failed: {}",
            vmctl_vmm::escape_log_text(e.to_string().as_bytes())
        ),
        Err(_) => warn!("guest agent shutdown: no answer within 5 s"),
    }
}

/// How long the guest gets to react to the power button before the guest
/// agent is asked too (a press during early boot, before systemd-logind
/// watches the button, is lost).
const POWER_BUTTON_GRACE: Duration = Duration::from_secs(10);

/// Powers the guest off: ACPI power button; if the guest ignores it, the
/// guest agent's `shutdown` and a second press; a kill after `timeout_secs`.
async fn stop(
    running: &mut Running,
    vsock: &Path,
    agent: &guest_notify::AgentState,
    timeout_secs: u64,
) -> Outcome {
    notify::notify_or_warn(&[NotifyState::Stopping, NotifyState::Status("Stopping")]);
    // READY comes as soon as the agent runs, before logind watches the
    // power button: a press then would be lost and cost the whole grace
    // period. While guest systemd says it is still booting, the agent
    // powers the guest off right away (systemd queues the job).
    if agent.guest_still_booting() {
        info!("stopping: the guest is still booting, so the guest agent powers it off");
        ask_agent_to_power_off(vsock).await;
    }
    info!("stopping: pressing the ACPI power button");
    if let Err(e) = running.power_button().await {
        warn!("power button failed: {e}");
    }
    let timeout = Duration::from_secs(timeout_secs);
    let graceful = async {
        if let Ok(exited) =
            tokio::time::timeout(POWER_BUTTON_GRACE.min(timeout / 2), running.wait()).await
        {
            return exited;
        }
        warn!("the guest ignored the power button; asking the guest agent to power off");
        ask_agent_to_power_off(vsock).await;
        if let Err(e) = running.power_button().await {
            warn!("power button failed: {e}");
        }
        running.wait().await
    };
    let result = tokio::time::timeout(timeout, graceful).await;
    match result {
        Ok(Ok(s)) => Outcome::from_vmm_exit(s),
        Ok(Err(e)) => Outcome::Error(format!("cannot wait for the VMM: {e}")),
        Err(_) => {
            running.kill().await;
            Outcome::StopTimedOut
        }
    }
}
