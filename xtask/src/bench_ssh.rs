//! `cargo xtask bench --ssh`: the SSH gateway (`ssh -p 2222 VM@HOST`,
//! through vmctl-ssh to the guest's sshd over the bridge) against direct
//! OpenSSH to the same sshd over the bridge (`ssh VM.vm`), in the same run.
//!
//! One VM of user alice runs in the dev host; alice's key opens both paths
//! (it is in the VM's authorized keys and registered for the gateway).
//! Inside the host, the two paths alternate, in rotating order:
//! - `scp` of a 200 MB file into the guest and back out (throughput,
//!   MiB/s each way; the copy back is compared with the original);
//! - 1,000 `echo` round trips in one session: a bash coprocess runs
//!   `ssh ... cat`, and each line written is read back before the next
//!   (the time per round trip, µs, after the session is up).
//!
//! Printed as medians with min-max spread and the gateway/direct ratio;
//! the targets (throughput at least 0.8x direct, at most 1 ms added per
//! round trip) are read, not asserted.

use crate::bench::{median, spread};
use crate::host::DevHost;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// The VM the rows are measured on.
const VM: &str = "bench-ssh";

/// Its owner (a member of group `vmctl`).
const OWNER: &str = "alice";

/// Megabytes copied per scp run.
const SCP_MB: u64 = 200;

/// Round trips per session.
const ROUND_TRIPS: usize = 1000;

/// OpenSSH options both paths use.
const OPTS: &str = "-o BatchMode=yes -o StrictHostKeyChecking=no \
                    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";

/// One way into the guest: a label, a key, the ssh arguments before the
/// command, the scp port option and the scp destination.
struct SshPath {
    label: &'static str,
    key: &'static str,
    ssh: &'static str,
    scp_port: &'static str,
    scp_to: &'static str,
}

const PATHS: [SshPath; 2] = [
    SshPath {
        label: "direct ssh VM.vm (bridge, guest sshd)",
        key: "direct",
        ssh: "bench-ssh.vm",
        scp_port: "",
        scp_to: "bench-ssh.vm:bench.blob",
    },
    SshPath {
        label: "gateway ssh -p 2222 VM@127.0.0.1",
        key: "gateway",
        ssh: "-p 2222 bench-ssh@127.0.0.1",
        scp_port: "-P 2222",
        scp_to: "bench-ssh@127.0.0.1:bench.blob",
    },
];

/// Runs the SSH rows: `rounds` scp runs and sessions per path.
pub fn run(host: &DevHost, rounds: usize) -> Result<()> {
    prepare(host)?;
    let result = measure(host, rounds.max(1));
    host.output(&["vmctl", "rm", VM], None)?;
    result
}

fn as_owner(host: &DevHost, script: &str) -> Result<String> {
    host.check(&[
        "setpriv",
        "--reuid",
        OWNER,
        "--regid",
        OWNER,
        "--init-groups",
        "env",
        "HOME=/home/alice",
        "sh",
        "-c",
        script,
    ])
}

/// alice, her key (in the VM and registered), the gateway, the VM running
/// and reachable both ways, the file to copy.
fn prepare(host: &DevHost) -> Result<()> {
    host.check(&[
        "sh",
        "-c",
        &format!("id {OWNER} >/dev/null 2>&1 || useradd -m -G vmctl {OWNER}"),
    ])?;
    host.output(&["vmctl", "rm", VM], None)?;
    host.check(&["systemctl", "enable", "--now", "vmctl-ssh.socket"])?;
    // Started before the VM: its client key reaches a VM at the VM's start.
    host.check(&["systemctl", "start", "vmctl-ssh.service"])?;
    as_owner(
        host,
        "mkdir -p -m 700 ~/.ssh && { test -f ~/.ssh/id_ed25519 || \
         ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; } && \
         { vmctl ssh-key add ~/.ssh/id_ed25519.pub || true; }",
    )?;
    as_owner(
        host,
        &format!(
            "vmctl create {VM} --cpus 2 --memory 1G --ssh-key ~/.ssh/id_ed25519.pub && \
             vmctl start {VM} && head -c {SCP_MB}M /dev/urandom > ~/bench.blob"
        ),
    )?;
    // Both paths answer before anything is timed (the guest's sshd may
    // come up a little after READY).
    for path in &PATHS {
        let mut last = String::new();
        for _ in 0..60 {
            match as_owner(
                host,
                &format!("ssh {OPTS} {} hostname < /dev/null", path.ssh),
            ) {
                Ok(out) if out.trim() == VM => {
                    last.clear();
                    break;
                }
                Ok(out) => last = out,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        if !last.is_empty() {
            bail!("{}: {last}", path.label);
        }
    }
    Ok(())
}

fn measure(host: &DevHost, rounds: usize) -> Result<()> {
    let mut up: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut down: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut trip: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mibs = |ns: f64| SCP_MB as f64 * 1e6 / (1 << 20) as f64 / (ns / 1e9);
    for round in 0..rounds {
        for i in 0..PATHS.len() {
            let path = &PATHS[(round + i) % PATHS.len()];
            let ns = timed(
                host,
                &format!("scp {} {OPTS} ~/bench.blob {}", path.scp_port, path.scp_to),
            )?;
            up.entry(path.key).or_default().push(mibs(ns));
            // Back again: guest to host, the direction proxy mode once broke.
            // Compared after the timed copy: a 200 MB cmp is no part of
            // either path's throughput.
            let ns = timed(
                host,
                &format!(
                    "rm -f ~/bench.back; scp {} {OPTS} {} ~/bench.back",
                    path.scp_port, path.scp_to
                ),
            )?;
            as_owner(host, "cmp ~/bench.blob ~/bench.back")
                .with_context(|| format!("{}: the file came back changed", path.label))?;
            down.entry(path.key).or_default().push(mibs(ns));
            trip.entry(path.key)
                .or_default()
                .push(round_trips(host, path)?);
        }
    }
    println!();
    println!(
        "SSH gateway vs direct ssh, VM {VM} (2 vCPUs), paths interleaved in rotating order, \
         {rounds} rounds"
    );
    println!(
        "{:<40} {:>22} {:>7} {:>22} {:>7} {:>22} {:>9}",
        "",
        "scp 200 MB up, MiB/s",
        "/direct",
        "scp 200 MB down, MiB/s",
        "/direct",
        "echo round trip, µs",
        "added µs"
    );
    let base_up = median(&up["direct"]);
    let base_down = median(&down["direct"]);
    let base_us = median(&trip["direct"]);
    for path in &PATHS {
        let (u, d, t) = (&up[path.key], &down[path.key], &trip[path.key]);
        println!(
            "{:<40} {:>22} {:>7.2} {:>22} {:>7.2} {:>22} {:>9.0}",
            path.label,
            spread(u),
            median(u) / base_up,
            spread(d),
            median(d) / base_down,
            spread(t),
            median(t) - base_us
        );
    }
    println!("(targets: gateway throughput >= 0.8x direct, added round-trip latency <= 1000 µs)");
    for path in &PATHS {
        println!("{:<40} {}", path.label, ciphers(host, path)?);
    }
    Ok(())
}

/// The cipher and MAC each direction of `path`'s client connection
/// negotiated, from `ssh -v` (the same on both paths makes the rows
/// comparable; the gateway's own leg to the guest is its choice, see
/// `ssh-gateway/src/proxy.rs`).
fn ciphers(host: &DevHost, path: &SshPath) -> Result<String> {
    let out = as_owner(
        host,
        &format!("ssh -v {OPTS} {} true < /dev/null 2>&1", path.ssh),
    )?;
    let found: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("kex: ").map(|(_, kex)| kex))
        .filter(|kex| kex.contains("cipher:"))
        .collect();
    if found.is_empty() {
        bail!("{}: no negotiated cipher in ssh -v's output", path.label);
    }
    Ok(found.join("; "))
}

/// Wall time of `command` as alice, in nanoseconds.
fn timed(host: &DevHost, command: &str) -> Result<f64> {
    let out = as_owner(
        host,
        &format!("a=$(date +%s%N); {command} < /dev/null; b=$(date +%s%N); echo $((b - a))"),
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("timing {command:?}: {out:?}"))
}

/// Microseconds per echo round trip over one session of `path`.
fn round_trips(host: &DevHost, path: &SshPath) -> Result<f64> {
    let script = format!(
        "coproc S {{ ssh {OPTS} {} cat; }}\n\
         echo warm >&\"${{S[1]}}\"; read -r line <&\"${{S[0]}}\"\n\
         a=$(date +%s%N)\n\
         for i in $(seq {ROUND_TRIPS}); do echo $i >&\"${{S[1]}}\"; read -r line <&\"${{S[0]}}\"; done\n\
         b=$(date +%s%N)\n\
         exec {{S[1]}}>&-\n\
         echo $(( (b - a) / {ROUND_TRIPS} ))",
        path.ssh
    );
    let out = host.check(&[
        "setpriv",
        "--reuid",
        OWNER,
        "--regid",
        OWNER,
        "--init-groups",
        "env",
        "HOME=/home/alice",
        "bash",
        "-c",
        &script,
    ])?;
    let ns: f64 = out
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("round trips over {}: {out:?}", path.label))?;
    Ok(ns / 1e3)
}
