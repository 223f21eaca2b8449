//! `cargo xtask bench`: how long `systemctl start vm@NAME` takes to READY
//! and to the first exec, what the launcher adds on top of the guest's own
//! boot, and the launcher's memory, side by side with the same QEMU command
//! line run by hand (the peer: what a home-made script does).
//!
//! The peer's argv is taken from the QEMU and vhost-device-vsock processes
//! the launcher started, with the VM's paths moved to a scratch directory,
//! so both boot exactly the same guest the same way on the same machine; the
//! peer is ready when the guest agent says hello, the same event the
//! launcher waits for. Times are wall clock on a shared machine: read them
//! as ratios, never as pass/fail thresholds.

use crate::host::DevHost;
use crate::image::Image;
use crate::paths::target_dir;
use crate::tools;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VM: &str = "bench";

/// The argv of the VMM and of vhost-device-vsock as the launcher ran them.
struct Argvs {
    qemu: Vec<String>,
    vsock: Vec<String>,
}

/// One measured start of the VM unit.
#[derive(Debug, Default)]
struct UnitRun {
    ready: Duration,
    first_exec: Duration,
    stop: Duration,
    launcher_rss_kib: u64,
    qemu_rss_kib: u64,
}

/// Runs the benchmark `runs` times each way and prints the table.
pub fn run(host: &DevHost, image: &Image, runs: usize) -> Result<()> {
    if host
        .output(&["vmctl", "describe", VM], None)?
        .status
        .success()
    {
        host.check(&["vmctl", "rm", VM])?;
    }
    host.check(&[
        "vmctl", "create", VM, "--cpus", "2", "--memory", "1G", "--disk", "4G",
    ])?;
    let mut unit_runs = Vec::new();
    let mut argv = None;
    for i in 1..=runs {
        eprintln!("bench: vmctl run {i}/{runs}");
        let (run, captured) = unit_run(host)?;
        unit_runs.push(run);
        argv = Some(captured);
    }
    host.check(&["vmctl", "rm", VM])?;
    let Argvs {
        qemu: qemu_argv,
        vsock: vsock_argv,
    } = argv.context("no run captured the VMM command line")?;
    let accel = if qemu_argv
        .iter()
        .any(|a| a.contains("accel=kvm") || a == "kvm")
    {
        "KVM"
    } else {
        "TCG (no usable KVM)"
    };
    let mut peer_runs = Vec::new();
    for i in 1..=runs {
        eprintln!("bench: raw QEMU run {i}/{runs}");
        peer_runs.push(peer_run(image, &qemu_argv, &vsock_argv)?);
    }
    print_table(accel, &unit_runs, &peer_runs);
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn print_table(accel: &str, unit: &[UnitRun], peer: &[Duration]) {
    let ready = mean(unit.iter().map(|r| secs(r.ready)));
    let exec = mean(unit.iter().map(|r| secs(r.first_exec)));
    let stop = mean(unit.iter().map(|r| secs(r.stop)));
    let peer_ready = mean(peer.iter().map(|d| secs(*d)));
    let rss = mean(unit.iter().map(|r| r.launcher_rss_kib as f64)) / 1024.0;
    let qemu_rss = mean(unit.iter().map(|r| r.qemu_rss_kib as f64)) / 1024.0;
    println!();
    println!(
        "environment: QEMU {accel}, 2 vCPUs, 1 GiB, image default, {} run(s) each",
        unit.len()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "", "vmctl", "raw QEMU", "ratio"
    );
    println!(
        "{:<34} {:>10.2} s {:>10.2} s {:>8.2}",
        "start to ready (agent hello)",
        ready,
        peer_ready,
        ready / peer_ready
    );
    println!(
        "{:<34} {:>10.2} s {:>12} {:>8}",
        "start to first exec done", exec, "-", ""
    );
    println!(
        "{:<34} {:>10.2} s {:>12} {:>8}",
        "launcher overhead (ready - peer)",
        ready - peer_ready,
        "-",
        ""
    );
    println!(
        "{:<34} {:>10.2} s {:>12} {:>8}",
        "stop (ACPI power-off)", stop, "-", ""
    );
    println!(
        "{:<34} {:>8.1} MiB {:>12} {:>8}",
        "launcher RSS", rss, "-", ""
    );
    println!(
        "{:<34} {:>8.1} MiB {:>12} {:>8}",
        "QEMU RSS", qemu_rss, "-", ""
    );
}

/// Starts the unit, execs, captures the VMM command lines, stops it.
fn unit_run(host: &DevHost) -> Result<(UnitRun, Argvs)> {
    let unit = format!("vm@{VM}.service");
    let t0 = Instant::now();
    host.check(&["systemctl", "start", &unit])?;
    let ready = t0.elapsed();
    host.check(&["vmctl", "exec", VM, "--", "true"])?;
    let first_exec = t0.elapsed();
    let main_pid = host
        .check(&["systemctl", "show", "-p", "MainPID", "--value", &unit])?
        .trim()
        .to_owned();
    let launcher_rss_kib = rss_kib(host, &main_pid)?;
    let qemu = find_process(host, &unit, "qemu-system")?;
    let vsock = find_process(host, &unit, "vhost-device-vsock")?;
    let qemu_rss_kib = rss_kib(host, &qemu.0)?;
    let t1 = Instant::now();
    host.check(&["systemctl", "stop", &unit])?;
    let stop = t1.elapsed();
    Ok((
        UnitRun {
            ready,
            first_exec,
            stop,
            launcher_rss_kib,
            qemu_rss_kib,
        },
        Argvs {
            qemu: qemu.1,
            vsock: vsock.1,
        },
    ))
}

fn rss_kib(host: &DevHost, pid: &str) -> Result<u64> {
    let status = host.check(&["cat", &format!("/proc/{pid}/status")])?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}

/// The PID and argv of the process in `unit` whose program contains `needle`.
fn find_process(host: &DevHost, unit: &str, needle: &str) -> Result<(String, Vec<String>)> {
    let cgroup = host.check(&["systemctl", "show", "-p", "ControlGroup", "--value", unit])?;
    // cgroup v2 at /sys/fs/cgroup, or at /sys/fs/cgroup/unified on hybrid hosts.
    let cgroup = cgroup.trim();
    let listing = host.output(
        &[
            "cat",
            &format!("/sys/fs/cgroup{cgroup}/cgroup.procs"),
            &format!("/sys/fs/cgroup/unified{cgroup}/cgroup.procs"),
        ],
        None,
    )?;
    let procs = String::from_utf8_lossy(&listing.stdout);
    for pid in procs.split_whitespace() {
        let out = host.output(&["cat", &format!("/proc/{pid}/cmdline")], None)?;
        let argv: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.first().is_some_and(|p| p.contains(needle)) {
            return Ok((pid.to_owned(), argv));
        }
    }
    bail!("no {needle} process in {unit}")
}

/// The same guest booted by QEMU run by hand, until the agent's hello.
fn peer_run(image: &Image, qemu_argv: &[String], vsock_argv: &[String]) -> Result<Duration> {
    let scratch = target_dir().join("bench");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    let disk = scratch.join("root.raw");
    crate::cmd::run(
        Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(image.dir.join("root.raw"))
            .arg(&disk),
    )?;
    let rewrite = |arg: &String| -> String {
        arg.replace(
            &format!("/run/vmctl/vm/{VM}/"),
            &format!("{}/", scratch.display()),
        )
        .replace(
            &format!("/var/lib/vmctl/disks/{VM}/root.raw"),
            &disk.to_string_lossy(),
        )
        .replace(
            "/var/lib/vmctl/images/default/",
            &format!("{}/", image.dir.display()),
        )
    };
    let vsock_bin = tools::ensure(tools::VHOST_DEVICE_VSOCK)?;
    let hello = UnixListener::bind(scratch.join("vsock_1025"))?;
    hello.set_nonblocking(true)?;
    let t0 = Instant::now();
    let mut vsock = Guard(
        Command::new(&vsock_bin)
            .args(vsock_argv[1..].iter().map(rewrite))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start vhost-device-vsock")?,
    );
    wait_for_vhost_socket(vsock_argv, &rewrite)?;
    // The launcher starts QEMU paused (-S) and resumes it over QMP once it
    // has set up; run by hand, QEMU starts the guest at once.
    let mut qemu = Guard(
        Command::new(&qemu_argv[0])
            .args(qemu_argv[1..].iter().filter(|a| *a != "-S").map(rewrite))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start QEMU")?,
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let ready = loop {
        match hello.accept() {
            Ok(_) => break t0.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("the raw QEMU guest did not say hello within 300 s");
                }
                if let Ok(Some(status)) = qemu.0.try_wait() {
                    bail!("raw QEMU exited early: {status}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    qemu.stop();
    vsock.stop();
    fs::remove_dir_all(&scratch)?;
    Ok(ready)
}

/// Waits until vhost-device-vsock has created its vhost-user socket (the
/// value of its `--socket` argument), which QEMU connects to at start.
fn wait_for_vhost_socket(vsock_argv: &[String], rewrite: &dyn Fn(&String) -> String) -> Result<()> {
    let Some(socket) = vsock_argv
        .iter()
        .position(|a| a == "--socket")
        .and_then(|i| vsock_argv.get(i + 1))
        .map(rewrite)
    else {
        bail!("vhost-device-vsock was started without --socket: {vsock_argv:?}");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&socket).exists() {
        if Instant::now() > deadline {
            bail!("vhost-device-vsock did not create {socket}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Kills its child when dropped, so an error never leaves a VMM behind.
struct Guard(Child);

impl Guard {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}
