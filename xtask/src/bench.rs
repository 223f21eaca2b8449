//! `cargo xtask bench`: how long a VM takes to boot on the old path (the
//! image as it was when issue 8 was filed, booted by Debian's cloud kernel
//! and its initramfs-tools initrd) and on the new one (the trimmed image,
//! vmctl's kernel, no initrd), like for like, with a third column between
//! them: the trimmed image booted by Debian's kernel and initrd, so the
//! kernel's own share of the gain stays visible.
//!
//! The old path's image is `debian-stock` ([`crate::image::ensure_stock`]:
//! the same package set as the default image, built from `mkosi/stock/`
//! without the trims); the other two share one `root.raw` (images
//! `debian-kernel` and `default`). All run as `vm@NAME.service` units in
//! the same dev host, with the same end marker: `systemctl start` returns
//! at READY (the guest agent's hello). Each round creates a fresh VM per
//! path (a fresh clone of its image: first boot), starts it, runs the first
//! exec, waits until the guest's sshd answers on its address (the SSH
//! banner on TCP port 22, read from the dev host over the VM bridge), waits
//! for the guest's own `systemd-analyze` line, stops it, and starts it
//! again (second boot of the same VM). Paths alternate within a round, so
//! a machine that slows down affects all. Times are wall clock on a shared
//! machine: read the ratios (medians, with min-max spread), never as
//! pass/fail thresholds.

use crate::cmd;
use crate::host::DevHost;
use crate::image::{Image, DEBIAN_KERNEL, DEFAULT, STOCK};
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path as FsPath;
use std::process::Command;
use std::time::{Duration, Instant};

/// One boot path: names for the table and the image it boots.
struct Path {
    column: &'static str,
    label: &'static str,
    image: &'static str,
    vm: &'static str,
}

const OLD: Path = Path {
    column: "old",
    label: "old: stock image (as filed), Debian kernel + initrd",
    image: STOCK,
    vm: "bench-old",
};

const MID: Path = Path {
    column: "deb-kernel",
    label: "deb-kernel: trimmed image, Debian kernel + initrd",
    image: DEBIAN_KERNEL,
    vm: "bench-mid",
};

const NEW: Path = Path {
    column: "new",
    label: "new: trimmed image, vmctl kernel, no initrd",
    image: DEFAULT,
    vm: "bench-new",
};

/// A line of the table: its name and the figure it shows.
type Row = (&'static str, fn(&Round) -> f64);

/// What one round measured on one path.
#[derive(Debug, Default, Clone)]
struct Round {
    first_ready: f64,
    first_exec: f64,
    exec_after_ready: f64,
    first_sshd: f64,
    second_ready: f64,
    stop: f64,
    analyze: String,
}

/// Runs `rounds` interleaved rounds of the three paths and prints the
/// table; `stock` is the `debian-stock` image directory on this machine.
pub fn run(host: &DevHost, image: &Image, stock: &FsPath, rounds: usize) -> Result<()> {
    install_stock(host, stock)?;
    let accel = accel(host)?;
    let paths = [&OLD, &MID, &NEW];
    let mut results: [Vec<Round>; 3] = Default::default();
    for i in 1..=rounds {
        for (path, results) in paths.iter().zip(results.iter_mut()) {
            eprintln!("bench: round {i}/{rounds}, {}", path.label);
            results.push(round(host, path)?);
        }
    }
    println!();
    println!(
        "environment: QEMU {accel}, 2 vCPUs, 1 GiB, {rounds} round(s), paths interleaved, \
         every boot from a fresh clone of its image except the second boot"
    );
    for path in paths {
        println!("  {}", path.label);
    }
    println!(
        "  images: {STOCK} {}, {DEBIAN_KERNEL} and {DEFAULT} (one root.raw) {}",
        stock.display(),
        image.dir.display()
    );
    println!(
        "{:<40} {:>18} {:>18} {:>18} {:>8} {:>8}",
        "median (min-max), seconds", OLD.column, MID.column, NEW.column, "new/old", "new/deb"
    );
    let rows: [Row; 6] = [
        ("fresh VM: start -> READY", |r| r.first_ready),
        ("fresh VM: start -> first exec done", |r| r.first_exec),
        ("exec right after READY", |r| r.exec_after_ready),
        ("fresh VM: start -> sshd answers on TCP", |r| r.first_sshd),
        ("second boot: start -> READY", |r| r.second_ready),
        ("stop (ACPI power-off, udev settled)", |r| r.stop),
    ];
    for (name, get) in rows {
        let [o, m, n] = results
            .each_ref()
            .map(|rs| rs.iter().map(get).collect::<Vec<f64>>());
        println!(
            "{:<40} {:>18} {:>18} {:>18} {:>8.2} {:>8.2}",
            name,
            spread(&o),
            spread(&m),
            spread(&n),
            median(&n) / median(&o),
            median(&n) / median(&m)
        );
    }
    for (path, results) in paths.iter().zip(&results) {
        for (i, r) in results.iter().enumerate() {
            println!(
                "guest systemd-analyze, {}, round {}: {}",
                path.column,
                i + 1,
                r.analyze
            );
        }
    }
    Ok(())
}

/// Puts the stock image into the host's image directory (0755 and 0644,
/// as installed images are: the launcher's VMM user reads them).
fn install_stock(host: &DevHost, stock: &FsPath) -> Result<()> {
    let to = host.path_of(&format!("/var/lib/vmctl/images/{STOCK}"));
    if to.exists() {
        fs::remove_dir_all(&to)?;
    }
    fs::create_dir_all(&to)?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(stock)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        cmd::run(
            Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(entry.path())
                .arg(&dest),
        )
        .with_context(|| format!("cannot install {} into the host", stock.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Whether the dev host's QEMU gets KVM, by the launcher's rule
/// (`vmctl_vmm::accel`: `/dev/kvm` alone proves nothing here, a hardware
/// KVM module must be there, listed in `/proc/modules` or `/sys/module`).
fn accel(host: &DevHost) -> Result<&'static str> {
    let probe = host.output(
        &[
            "sh",
            "-c",
            "test -e /dev/kvm && { grep -qsE '^kvm_(intel|amd) ' /proc/modules || \
             test -d /sys/module/kvm_intel || test -d /sys/module/kvm_amd; }",
        ],
        None,
    )?;
    Ok(if probe.status.success() {
        "KVM"
    } else {
        "TCG (no usable KVM)"
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The median of `values` (NaN when empty).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `median (min-max)` of `values`, two decimals.
pub(crate) fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({:.2}-{:.2})", median(values), min, max)
}

/// A fresh VM on `path`: first boot, exec, analyze, stop, second boot.
fn round(host: &DevHost, path: &Path) -> Result<Round> {
    let vm = path.vm;
    let unit = format!("vm@{vm}.service");
    if host
        .output(&["vmctl", "describe", vm], None)?
        .status
        .success()
    {
        host.check(&["systemctl", "stop", &unit])?;
        host.check(&["vmctl", "rm", vm])?;
    }
    host.check(&[
        "vmctl", "create", vm, "--image", path.image, "--cpus", "2", "--memory", "1G", "--disk",
        "4G",
    ])?;
    let mut r = Round::default();
    let t0 = Instant::now();
    host.check(&["systemctl", "start", &unit])?;
    r.first_ready = secs(t0.elapsed());
    let t1 = Instant::now();
    host.check(&["vmctl", "exec", vm, "--", "true"])?;
    r.first_exec = secs(t0.elapsed());
    r.exec_after_ready = secs(t1.elapsed());
    let address = ipv4(host, vm)?;
    wait_for_sshd(host, &address)?;
    r.first_sshd = secs(t0.elapsed());
    // The guest's own view, once it has finished booting.
    wait_until_booted(host, vm)?;
    r.analyze = host
        .check(&["vmctl", "exec", vm, "--", "systemd-analyze"])
        .context("systemd-analyze in the guest")?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    // A modular kernel (Debian's) has no power button until udev's
    // coldplug has loaded `button` and `evdev`, seconds after systemd says
    // it is running under TCG; both sides wait for it, so the stop row
    // times an ACPI power-off on every path, not the launcher's fallback.
    host.check(&[
        "vmctl",
        "exec",
        vm,
        "--",
        "udevadm",
        "settle",
        "--timeout=120",
    ])?;
    let since = format!(
        "@{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let t2 = Instant::now();
    host.check(&["systemctl", "stop", &unit])?;
    r.stop = secs(t2.elapsed());
    let journal = host.check(&["journalctl", "-u", &unit, "--since", &since, "-o", "cat"])?;
    if journal.contains("ignored the power button") {
        eprintln!("xtask: WARNING: {vm}'s stop fell back to the agent (the guest ignored the power button)");
    }
    let t3 = Instant::now();
    host.check(&["systemctl", "start", &unit])?;
    r.second_ready = secs(t3.elapsed());
    wait_until_booted(host, vm)?;
    host.check(&["systemctl", "stop", &unit])?;
    host.check(&["vmctl", "rm", vm])?;
    Ok(r)
}

/// The VM's IPv4 address, as `vmctl describe` shows it.
fn ipv4(host: &DevHost, vm: &str) -> Result<String> {
    let described = host.check(&["vmctl", "describe", vm])?;
    described
        .lines()
        .find_map(|l| l.trim().strip_prefix("IPv4: "))
        .filter(|a| *a != "-")
        .map(str::to_owned)
        .with_context(|| format!("VM {vm} has no IPv4 address:\n{described}"))
}

/// Polls from the dev host until the guest's sshd sends its banner on
/// `address` port 22 (a bare connect could be a listening socket unit
/// with no sshd behind it yet); gives up after two minutes.
fn wait_for_sshd(host: &DevHost, address: &str) -> Result<()> {
    const POLL: &str = "until (exec 3<>\"/dev/tcp/$1/22\" && read -r -t 5 banner <&3 \
        && [[ $banner == SSH-* ]]) 2>/dev/null; do sleep 0.05; done";
    host.check(&["timeout", "120", "bash", "-c", POLL, "bash", address])
        .with_context(|| format!("no SSH banner from {address}:22 within 120 s"))?;
    Ok(())
}

/// Waits until guest systemd has finished booting; "degraded" is an
/// answer too: only the wait matters.
fn wait_until_booted(host: &DevHost, vm: &str) -> Result<()> {
    host.output(
        &[
            "vmctl",
            "exec",
            vm,
            "--",
            "systemctl",
            "is-system-running",
            "--wait",
        ],
        None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(spread(&[3.0, 1.0, 2.0]), "2.00 (1.00-3.00)");
    }
}
