//! `cargo xtask`: build, install, development host, tests and demo.

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use xtask::host::{self, DevHost, UpOptions};
use xtask::paths::{workspace_root, Profile};
use xtask::{cmd, deps, install};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "vmctl development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages the build machine needs.
    Deps,
    /// Install vmctl as a Debian package would.
    Install {
        /// Staging directory (a package build root or a machine's root).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
        /// Installation prefix.
        #[arg(long, default_value = "/usr")]
        prefix: PathBuf,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Build the Debian packages into target/debian/ and check them with lintian.
    Deb {
        /// Package the debug build (what the dev host installs) instead of
        /// the release build.
        #[arg(long)]
        dev: bool,
        /// Package version instead of the workspace's (to test upgrades).
        #[arg(long)]
        version: Option<String>,
        /// Do not run lintian.
        #[arg(long)]
        no_lintian: bool,
    },
    /// Build the default guest image (cached by content) and print its directory.
    Image {
        /// Build the LVM test image (`mkosi/lvm/`) instead.
        #[arg(long)]
        lvm: bool,
    },
    /// Manage the systemd development host.
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Run every test: unit, component and end-to-end in the dev host.
    Test {
        /// Leave the development host running afterwards.
        #[arg(long)]
        keep_host: bool,
    },
    /// Benchmark VM boot: Debian kernel + initrd against vmctl's kernel.
    Bench {
        /// Rounds (each boots every path, fresh then again).
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Only the boot rows (stock image + Debian kernel, trimmed image +
        /// Debian kernel, trimmed image + vmctl's kernel).
        #[arg(long)]
        boot: bool,
        /// Instead: NSS lookup latency (nss-vmctl, nss-files, libvirt) at
        /// 50 and 1000 VMs, in mount namespaces on this machine (root).
        #[arg(long)]
        nss: bool,
        /// Lookups per NSS case.
        #[arg(long, default_value_t = xtask::bench_nss::DEFAULT_LOOKUPS)]
        lookups: usize,
        /// Only the exec rows: owner path (fd from vmctld) against the root
        /// direct path, without the boot rounds.
        #[arg(long)]
        exec: bool,
        /// Only the SSH rows: scp of 200 MB and 1,000 echo round trips
        /// through the SSH gateway against direct ssh to the guest.
        #[arg(long)]
        ssh: bool,
        /// Instead: vmctl-https against nginx as a TLS reverse proxy on
        /// loopback on this machine (wrk: small-response req/s and p99,
        /// large-response throughput; 3 x --runs rounds).
        #[arg(long)]
        https: bool,
        /// Only the List rows: varlink List with 1000 VMs defined against
        /// machined's ListMachines, and vmctld's memory with them.
        #[arg(long)]
        list: bool,
        /// Instead: root disk clone time, reflink against full copy, for
        /// fully allocated images on a loop-mounted btrfs (root; --runs
        /// rounds, at least 3).
        #[arg(long)]
        clone: bool,
        /// Image sizes in GiB for --clone.
        #[arg(long, value_delimiter = ',', default_values_t = xtask::bench_clone::DEFAULT_SIZES)]
        clone_sizes: Vec<u64>,
    },
    /// Internal: the timed child of `bench --nss`, run inside its namespace.
    #[command(hide = true)]
    BenchNssChild {
        names: PathBuf,
        lookups: usize,
        /// `any` (AF_UNSPEC) or `inet` (AF_INET).
        family: String,
    },
    /// Run every fuzz target in guest/fuzz/ for a bounded time (cargo-fuzz).
    Soak {
        /// Seconds each target runs.
        #[arg(long, default_value_t = xtask::soak::DEFAULT_SECONDS)]
        seconds: u64,
        /// Use the stable toolchain with RUSTC_BOOTSTRAP=1 even where a
        /// nightly one is installed.
        #[arg(long)]
        stable: bool,
        /// Run only these targets (default: all).
        targets: Vec<String>,
        /// Rounds of the store's kill -9 fault injection in the dev host
        /// after the fuzz targets (0: skip it).
        #[arg(long, default_value_t = xtask::soak::STORE_FAULT_ROUNDS)]
        store_rounds: u32,
    },
    /// Bring up the host and show vmctl working in it: this machine's own
    /// systemd when PID 1 is systemd, else a throwaway systemd-nspawn host.
    Demo {
        /// Use this machine's own systemd (PID 1 must be systemd; the
        /// default when it is).
        #[arg(long, conflicts_with = "container")]
        local: bool,
        /// Use a throwaway systemd-nspawn host even when PID 1 is systemd.
        #[arg(long)]
        container: bool,
    },
}

#[derive(Args, Clone, Copy)]
struct BuildArgs {
    /// Install the release build instead of the debug build.
    #[arg(long)]
    release: bool,
}

impl BuildArgs {
    fn profile(self) -> Profile {
        if self.release {
            Profile::Release
        } else {
            Profile::Dev
        }
    }
}

#[derive(Subcommand)]
enum HostAction {
    /// Build (cached), install the current build into, and boot the host.
    Up {
        /// Use this machine's own systemd (PID 1 must be systemd).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Run a command inside the host; exits with its exit code.
    Run {
        /// Run as this user instead of root.
        #[arg(long)]
        user: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Open a shell inside the host.
    Shell {
        /// Log in as this user instead of root.
        #[arg(long)]
        user: Option<String>,
    },
    /// Stop the host.
    Down,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.task {
        Task::Deps => deps::ensure_build_machine()?,
        Task::Install {
            destdir,
            prefix,
            build,
        } => {
            install::build(build.profile())?;
            let report = install::install(&install::Options {
                destdir,
                prefix,
                profile: build.profile(),
                only: None,
            })?;
            for path in &report.changed {
                println!("installed {}", path.display());
            }
            println!(
                "{} files installed, {} unchanged",
                report.changed.len(),
                report.unchanged
            );
        }
        Task::Deb {
            dev,
            version,
            no_lintian,
        } => {
            deps::ensure_debian_packages(deps::PACKAGING_PACKAGES)?;
            let profile = if dev { Profile::Dev } else { Profile::Release };
            let debs = xtask::deb::build(&xtask::deb::Options {
                version,
                ..xtask::deb::Options::new(profile)
            })?;
            if !no_lintian {
                xtask::deb::lintian(&debs)?;
            }
            for deb in &debs {
                println!("{}", deb.display());
            }
        }
        Task::Image { lvm } => {
            deps::ensure_build_machine()?;
            if lvm {
                println!("{}", xtask::image::ensure_lvm()?.display());
            } else {
                println!("{}", xtask::image::ensure_default()?.dir.display());
            }
        }
        Task::Host { action } => return host_action(action),
        Task::Test { keep_host } => test(keep_host)?,
        Task::Demo { local, container } => {
            demo(local || (!container && xtask::host::pid1_is_systemd()))?
        }
        Task::Soak {
            seconds,
            stable,
            targets,
            store_rounds,
        } => {
            xtask::soak::run(&targets, seconds, stable)?;
            if store_rounds > 0 {
                xtask::soak::store_faults(store_rounds)?;
            }
        }
        Task::Bench {
            nss: true, lookups, ..
        } => xtask::bench_nss::run(lookups)?,
        Task::Bench {
            clone: true,
            clone_sizes,
            runs,
            ..
        } => xtask::bench_clone::run(&clone_sizes, runs.max(3))?,
        Task::Bench {
            https: true, runs, ..
        } => xtask::bench_https::run(3 * runs)?,
        Task::BenchNssChild {
            names,
            lookups,
            family,
        } => xtask::bench_nss::child(&names, lookups, &family)?,
        Task::Bench {
            ssh: true, runs, ..
        } => {
            deps::ensure_build_machine()?;
            // The gateway's throughput is russh's own speed: release
            // build, as the packages ship it.
            let host = host::up(UpOptions {
                profile: Some(Profile::Release),
                ..UpOptions::default()
            })?;
            xtask::image::ensure_default()?;
            let result = xtask::bench_ssh::run(&host, 3 * runs);
            host::down()?;
            result?;
        }
        Task::Bench { list: true, .. } => {
            deps::ensure_build_machine()?;
            // The List target is about vmctld's own speed: release build.
            let host = host::up(UpOptions {
                profile: Some(Profile::Release),
                ..UpOptions::default()
            })?;
            let result = xtask::bench_list::run(&host, 50);
            host::down()?;
            result?;
        }
        Task::Bench {
            exec: true, runs, ..
        } => {
            deps::ensure_build_machine()?;
            let host = host::up(UpOptions::default())?;
            xtask::image::ensure_default()?;
            let result = xtask::bench_exec::run(&host, 30 * runs, 3 * runs);
            host::down()?;
            result?;
        }
        Task::Bench {
            boot: true, runs, ..
        } => {
            deps::ensure_build_machine()?;
            let stock = xtask::image::ensure_stock()?;
            let host = host::up(UpOptions::default())?;
            let image = xtask::image::ensure_default()?;
            let result = xtask::bench::run(&host, &image, &stock, runs);
            host::down()?;
            result?;
        }
        Task::Bench { runs, .. } => {
            deps::ensure_build_machine()?;
            let stock = xtask::image::ensure_stock()?;
            let host = host::up(UpOptions::default())?;
            let image = xtask::image::ensure_default()?;
            let result = xtask::bench::run(&host, &image, &stock, runs)
                .and_then(|()| xtask::bench_exec::run(&host, 30 * runs, 3 * runs))
                // Last: its 1000 VMs stay until the host goes down.
                .and_then(|()| xtask::bench_list::run(&host, 25 * runs));
            host::down()?;
            result?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn host_action(action: HostAction) -> Result<ExitCode> {
    match action {
        HostAction::Up { local, build } => {
            deps::ensure_build_machine()?;
            host::up(UpOptions {
                local,
                profile: Some(build.profile()),
            })?;
            println!("development host is up: `cargo xtask host shell` to enter it");
        }
        HostAction::Run { user, command } => {
            let status = DevHost::current()?.run(&command, user.as_deref())?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        HostAction::Shell { user } => {
            let status = DevHost::current()?.run(&["bash", "-l"], user.as_deref())?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        HostAction::Down => host::down()?,
    }
    Ok(ExitCode::SUCCESS)
}

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(workspace_root());
    c
}

fn test(keep_host: bool) -> Result<()> {
    deps::ensure_build_machine()?;
    // Component tests boot the real guest image under QEMU and need
    // vhost-device-vsock on PATH.
    let image = xtask::image::ensure_default()?;
    let vsock = xtask::tools::ensure(xtask::tools::VHOST_DEVICE_VSOCK)?;
    let mut path = vec![vsock
        .parent()
        .expect("a binary has a directory")
        .to_path_buf()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    eprintln!("xtask: == unit and component tests ==");
    cmd::run(
        cargo()
            .args(["test", "--workspace", "--exclude", "vmctl-e2e"])
            .env("VMCTL_TEST_IMAGE_DIR", &image.dir)
            .env("PATH", std::env::join_paths(path)?),
    )?;

    if !cmd::on_path("cloud-hypervisor") {
        eprintln!(
            "xtask: SKIPPED: cloud-hypervisor is not installed here, so the cloud-hypervisor \
             driver's real-binary tests (vmm/tests/cloud_hypervisor_api.rs) only checked the \
             REST client against a stand-in server"
        );
    }

    eprintln!("xtask: == install is idempotent ==");
    install::build(Profile::Dev)?;
    let staging = xtask::paths::target_dir().join("install-check");
    let options = install::Options {
        destdir: staging,
        prefix: "/usr".into(),
        profile: Profile::Dev,
        only: None,
    };
    install::install(&options)?;
    let again = install::install(&options)?;
    if !again.changed.is_empty() {
        bail!("a second install changed files: {:?}", again.changed);
    }
    eprintln!(
        "xtask: second install changed nothing ({} files)",
        again.unchanged
    );

    // lintian checks the debug build's packages, which the dev host then
    // installs: they hold the same files, scripts and control fields as
    // release ones (both stripped, both PIE with full RELRO), and a release
    // build would add minutes to every run for no other finding.
    eprintln!("xtask: == Debian packages pass lintian ==");
    let debs = xtask::deb::build(&xtask::deb::Options::new(Profile::Dev))?;
    xtask::deb::lintian(&debs)?;

    eprintln!("xtask: == end-to-end tests in the development host ==");
    host::up(UpOptions::default())?;
    let result = cmd::run(cargo().args([
        "test",
        "-p",
        "vmctl-e2e",
        "--",
        "--ignored",
        "--test-threads=1",
    ]));
    if keep_host {
        eprintln!("xtask: leaving the development host up (`cargo xtask host down` stops it)");
    } else {
        host::down()?;
    }
    result
}

fn demo(local: bool) -> Result<()> {
    deps::ensure_build_machine()?;
    let host = host::up(UpOptions {
        local,
        profile: None,
    })?;
    let show = |step: &[&str]| -> Result<()> {
        println!("\n$ {}", step.join(" "));
        let status = host.run(step, None)?;
        if !status.success() {
            bail!("demo step `{}` failed: {status}", step.join(" "));
        }
        Ok(())
    };
    show(&["vmctl", "version"])?;
    // A leftover demo VM (demo --local run twice) is replaced.
    if host
        .output(&["vmctl", "describe", "demo"], None)?
        .status
        .success()
    {
        show(&["vmctl", "rm", "demo"])?;
    }
    show(&[
        "vmctl", "create", "demo", "--cpus", "2", "--memory", "1G", "--disk", "4G",
    ])?;
    println!("\n(the guest boots under QEMU; without KVM, on TCG, this takes seconds to a minute)");
    show(&["systemctl", "start", "vm@demo"])?;
    show(&["systemctl", "--no-pager", "status", "vm@demo"])?;
    show(&["vmctl", "list"])?;
    show(&["vmctl", "exec", "demo", "--", "uname", "-a"])?;
    show(&["machinectl", "list"])?;
    if local {
        println!("\nvmctl is installed on this machine and VM demo is running.");
        println!("  get into the VM:  vmctl shell demo");
        println!("  stop the VM:      systemctl stop vm@demo");
        println!("  remove it:        vmctl rm demo");
    } else {
        println!("\nThe development host is running, and so is VM demo inside it.");
        println!("  get into the VM:  cargo xtask host run -- vmctl shell demo");
        println!("  enter the host:   cargo xtask host shell");
        println!("  stop the VM:      cargo xtask host run -- systemctl stop vm@demo");
        println!("  stop everything:  cargo xtask host down");
    }
    Ok(())
}
