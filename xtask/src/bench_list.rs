//! `cargo xtask bench` List rows: how long `List` takes with 1,000 VMs
//! defined, against a D-Bus call of systemd's machined measured in the
//! same run, and how much memory vmctld holds with them.
//!
//! The 1,000 VMs are specs only (not running, no disks): creating them
//! through vmctld would copy a root disk each, so their spec files are
//! written straight into `/var/lib/vmctl/vms/` from the spec of one VM
//! made with `vmctl create`, and vmctld is restarted, which imports spec
//! files into its store (see `vmctld/src/reconcile.rs`). The number of
//! VMs `List` then returns is printed with the rows.
//!
//! Inside the dev host a shell loop runs, interleaved, one command per
//! kind and round, timing each with the shell's clock: `varlinkctl call`
//! of `io.vmctl.Manager.List`, `vmctl list --json`, `busctl call` of
//! machined's `ListMachines` and `busctl call` of `org.vmctl.Manager1`
//! `List`. Each time includes the process start of its tool; the ratio
//! compares the two C tools, each making one call (varlink List against
//! machined's ListMachines). Read the medians and the ratio, never as
//! pass/fail thresholds. The VMs stay until the dev host goes down.

use crate::bench::{median, spread};
use crate::host::DevHost;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// How many VMs are defined.
pub const VMS: usize = 1000;

/// The VM whose spec is the template.
const TEMPLATE: &str = "bench-list-0";

/// One measured command: its label and the shell command line.
const KINDS: [(&str, &str); 4] = [
    (
        "varlink List (varlinkctl call)",
        "varlinkctl call /run/vmctl/io.vmctl.Manager io.vmctl.Manager.List '{}'",
    ),
    ("vmctl list --json", "vmctl list --json"),
    (
        "D-Bus machined ListMachines (busctl)",
        "busctl call org.freedesktop.machine1 /org/freedesktop/machine1 \
         org.freedesktop.machine1.Manager ListMachines",
    ),
    (
        "D-Bus org.vmctl.Manager1 List (busctl)",
        "busctl call org.vmctl.Manager1 /org/vmctl/Manager1 org.vmctl.Manager1 List",
    ),
];

/// Defines the VMs, then runs `rounds` interleaved rounds of every kind
/// and prints the rows.
pub fn run(host: &DevHost, rounds: usize) -> Result<()> {
    let defined = define(host)?;
    let samples = measure(host, rounds)?;
    let pid = host
        .check(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "vmctld.service",
        ])?
        .trim()
        .to_string();
    let status = host.check(&["cat", &format!("/proc/{pid}/status")])?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in\n{status}"))?;
    println!();
    println!(
        "List with {defined} VMs defined (specs only, written as files and imported by vmctld), \
         {rounds} round(s), kinds interleaved; each time includes the tool's process start"
    );
    println!(
        "{:<42} {:>24}",
        "median (min-max), milliseconds", "per call"
    );
    for (label, _) in KINDS {
        let ms = samples.get(label).map(Vec::as_slice).unwrap_or_default();
        println!("{label:<42} {:>24}", spread(ms));
    }
    let varlink = median(&samples[KINDS[0].0]);
    let machined = median(&samples[KINDS[2].0]);
    println!(
        "{:<42} {:>24.2}",
        "machined ListMachines / varlink List",
        machined / varlink
    );
    println!(
        "{:<42} {:>24.1}",
        format!("vmctld RSS with {defined} VMs, MiB"),
        rss_kib / 1024.0
    );
    Ok(())
}

/// Makes [`VMS`] VMs exist (one created, the rest written as spec files)
/// and returns how many `List` shows.
fn define(host: &DevHost) -> Result<usize> {
    if !host
        .output(&["vmctl", "describe", TEMPLATE], None)?
        .status
        .success()
    {
        host.check(&["vmctl", "create", TEMPLATE, "--network", "none"])?;
    }
    // Names, IDs and CIDs are new per copy; the template has no network,
    // so there are no addresses to keep unique.
    let script = format!(
        r#"set -e
cd /var/lib/vmctl/vms
tpl=$(cat {TEMPLATE}.json)
for i in $(seq 1 {last}); do
  name=$(printf 'bench-list-%d' "$i")
  id=$(printf '%032x' $((0x5eed0000 + i)))
  cid=$((100000 + i))
  printf '%s' "$tpl" | sed -E \
    -e "s/\"name\": *\"[^\"]*\"/\"name\":\"$name\"/" \
    -e "s/\"id\": *\"[^\"]*\"/\"id\":\"$id\"/" \
    -e "s/\"cid\": *[0-9]+/\"cid\":$cid/" > "$name.json"
done
systemctl restart vmctld.service
"#,
        last = VMS - 1
    );
    host.check(&["bash", "-c", &script])?;
    // The import and the repairs after it (host keys, unit limits) take a
    // while; List answers once vmctld serves.
    let listed = host.check(&[
        "bash",
        "-c",
        "for i in $(seq 600); do n=$(vmctl list --json 2>/dev/null | grep -c '\"name\"' || true); \
         [ \"$n\" -ge 1000 ] && break; sleep 1; done; vmctl list --json | grep -c '\"name\"'",
    ])?;
    let n: usize = listed
        .trim()
        .parse()
        .with_context(|| format!("odd count {listed:?}"))?;
    if n < VMS {
        bail!("only {n} of {VMS} VMs are listed after the import");
    }
    Ok(n)
}

/// `rounds` rounds of every kind; milliseconds per call by label.
fn measure(host: &DevHost, rounds: usize) -> Result<BTreeMap<&'static str, Vec<f64>>> {
    let mut script = String::from("set -e\nfor r in $(seq 1 ");
    script.push_str(&rounds.to_string());
    script.push_str("); do\n");
    for (i, (_, command)) in KINDS.iter().enumerate() {
        script.push_str(&format!(
            "  s=$(date +%s%N); {command} >/dev/null; e=$(date +%s%N); echo \"{i} $((e - s))\"\n"
        ));
    }
    script.push_str("done\n");
    let out = host.check(&["bash", "-c", &script])?;
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for line in out.lines() {
        let (kind, ns) = line
            .split_once(' ')
            .with_context(|| format!("odd line {line:?}"))?;
        let kind: usize = kind.parse()?;
        let ns: f64 = ns.parse()?;
        samples.entry(KINDS[kind].0).or_default().push(ns / 1e6);
    }
    Ok(samples)
}
