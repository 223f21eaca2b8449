//! `cargo xtask bench` exec rows: does the owner path to a guest (vmctld
//! checks the caller and hands over a connected descriptor, `OpenGuest`)
//! cost anything against the root-only path from before (vmctl opens the
//! VM's hybrid-vsock socket itself, `VMCTL_GUEST_PATH=direct`)?
//!
//! One VM of user alice runs in the dev host. Inside the host, one shell
//! command per round runs `vmctl exec VM -- true` (round trip) and `vmctl
//! exec VM -- head -c 16MiB /dev/zero` (stdout throughput) on three paths,
//! interleaved and in rotating order, each under `setpriv` so that every path pays the same
//! process start: root direct (before), root through vmctld (what root now
//! does), alice through vmctld (with her polkit check). Times are wall
//! clock around each command, so they include vmctl's own start; read the
//! ratios (medians, with min-max spread), never as pass/fail thresholds.
//!
//! Progress goes to stderr round by round and every command has a time
//! limit ([`COMMAND_LIMIT`]): under TCG on a loaded machine one exec can be
//! slow, and a run that used to print nothing for 700 s said nothing about
//! where it was.

use crate::bench::{median, spread};
use crate::host::DevHost;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// The VM the rows are measured on.
const VM: &str = "bench-exec";

/// Its owner (a member of group `vmctl`, as in the e2e tests).
const OWNER: &str = "alice";

/// Bytes of stdout per throughput run (TCG moves a few MiB/s).
const STREAM_BYTES: u64 = 16 << 20;

/// Seconds any one command in the host may take before the bench fails
/// naming it.
const COMMAND_LIMIT: u32 = 300;

/// One way to reach the guest: a label and the command prefix for it.
struct GuestPath {
    label: &'static str,
    key: &'static str,
    prefix: &'static str,
}

const PATHS: [GuestPath; 3] = [
    GuestPath {
        label: "root, direct socket (before)",
        key: "direct",
        prefix: "env VMCTL_GUEST_PATH=direct setpriv --reuid=0 --regid=0 --init-groups",
    },
    GuestPath {
        label: "root, fd from vmctld",
        key: "root",
        prefix: "setpriv --reuid=0 --regid=0 --init-groups",
    },
    GuestPath {
        label: "owner alice, fd from vmctld",
        key: "owner",
        prefix: "setpriv --reuid=alice --regid=alice --init-groups env HOME=/home/alice",
    },
];

/// Runs the exec rows: `round_trips` and `streams` runs per path.
pub fn run(host: &DevHost, round_trips: usize, streams: usize) -> Result<()> {
    prepare(host)?;
    let result = measure(host, round_trips, streams);
    host.output(&["vmctl", "rm", VM], None)?;
    result
}

/// alice (group vmctl) and her running VM.
fn prepare(host: &DevHost) -> Result<()> {
    host.check(&[
        "sh",
        "-c",
        &format!("id {OWNER} >/dev/null 2>&1 || useradd -m -G vmctl {OWNER}"),
    ])?;
    host.output(&["vmctl", "rm", VM], None)?;
    let create = host.output(
        &[
            "vmctl", "create", VM, "--cpus", "2", "--memory", "1G", "--disk", "4G",
        ],
        Some(OWNER),
    )?;
    if !create.status.success() {
        bail!(
            "{OWNER} cannot create {VM}: {}",
            String::from_utf8_lossy(&create.stderr)
        );
    }
    eprintln!("bench exec: starting {VM}");
    host.check(&["systemctl", "start", &format!("vm@{VM}.service")])?;
    // Boot noise would land in the first samples: wait for the guest.
    eprintln!("bench exec: waiting for {VM} to finish booting");
    let limit = COMMAND_LIMIT.to_string();
    host.output(
        &[
            "timeout",
            &limit,
            "vmctl",
            "exec",
            VM,
            "--",
            "systemctl",
            "is-system-running",
            "--wait",
        ],
        None,
    )?;
    // Every path works and streams every byte, before anything is timed.
    for path in &PATHS {
        eprintln!("bench exec: checking {}", path.label);
        let out = host.output(
            &[
                "sh",
                "-c",
                &format!(
                    "timeout {COMMAND_LIMIT} {} vmctl exec {VM} -- head -c {STREAM_BYTES} \
                     /dev/zero | wc -c",
                    path.prefix
                ),
            ],
            None,
        )?;
        let count = String::from_utf8_lossy(&out.stdout);
        if count.trim() != STREAM_BYTES.to_string() {
            bail!(
                "{}: {STREAM_BYTES} bytes expected, got {count}{}",
                path.label,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

fn measure(host: &DevHost, round_trips: usize, streams: usize) -> Result<()> {
    let trips = timed(host, round_trips, "true")?;
    let stream = timed(host, streams, &format!("head -c {STREAM_BYTES} /dev/zero"))?;
    println!();
    println!(
        "exec through the owner path (fd from vmctld) vs the root direct path, VM {VM} \
         (2 vCPUs, TCG or KVM as above), paths interleaved in rotating order"
    );
    println!(
        "{:<36} {:>24} {:>8} {:>24} {:>8}",
        "", "round trip, ms", "/direct", "16 MiB stdout, MiB/s", "/direct"
    );
    let ms = |key: &str| -> Vec<f64> { trips[key].iter().map(|ns| ns / 1e6).collect() };
    let mibs = |key: &str| -> Vec<f64> {
        stream[key]
            .iter()
            .map(|ns| (STREAM_BYTES as f64 / (1 << 20) as f64) / (ns / 1e9))
            .collect()
    };
    let base_ms = median(&ms("direct"));
    let base_mibs = median(&mibs("direct"));
    for path in &PATHS {
        let (t, s) = (ms(path.key), mibs(path.key));
        println!(
            "{:<36} {:>24} {:>8.2} {:>24} {:>8.2}",
            path.label,
            spread(&t),
            median(&t) / base_ms,
            spread(&s),
            median(&s) / base_mibs
        );
    }
    println!(
        "({round_trips} round trips and {streams} streams per path; target: owner within 10% \
         of direct)"
    );
    Ok(())
}

/// Runs `vmctl exec VM -- COMMAND` `runs` times per path inside the host,
/// interleaved (one host command per round), and returns the nanoseconds
/// per path key.
fn timed(host: &DevHost, runs: usize, command: &str) -> Result<BTreeMap<&'static str, Vec<f64>>> {
    let mut out = String::new();
    for i in 0..runs {
        eprintln!("bench exec: `{command}`, round {}/{runs}", i + 1);
        let mut script = String::from("set -e\n");
        for j in 0..PATHS.len() {
            let path = &PATHS[(i + j) % PATHS.len()];
            script.push_str(&format!(
                "a=$(date +%s%N); timeout {COMMAND_LIMIT} {} vmctl exec {VM} -- {command} \
                 >/dev/null; b=$(date +%s%N); echo {} $((b - a))\n",
                path.prefix, path.key
            ));
        }
        out += &host
            .check(&["sh", "-c", &script])
            .with_context(|| format!("timing `vmctl exec {VM} -- {command}`"))?;
    }
    let mut times: BTreeMap<&'static str, Vec<f64>> =
        PATHS.iter().map(|p| (p.key, Vec::new())).collect();
    for line in out.lines() {
        let (key, ns) = line
            .split_once(' ')
            .with_context(|| format!("unexpected line {line:?}"))?;
        let ns: f64 = ns
            .parse()
            .with_context(|| format!("unexpected line {line:?}"))?;
        let path = PATHS
            .iter()
            .find(|p| p.key == key)
            .with_context(|| format!("unexpected line {line:?}"))?;
        times.get_mut(path.key).expect("every key").push(ns);
    }
    Ok(times)
}
