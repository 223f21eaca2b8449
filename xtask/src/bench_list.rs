//! `cargo xtask bench` List rows: how long `List` takes with 1,000 VMs
//! defined, against systemd's machined listing 1,000 machines in the same
//! run, and how much memory vmctld holds with them.
//!
//! The 1,000 VMs are specs only (not running, no disks): creating them
//! through vmctld would copy a root disk each, so their spec files are
//! written straight into `/var/lib/vmctl/vms/` from the spec of one VM
//! made with `vmctl create`, and vmctld is restarted, which imports spec
//! files into its store (see `vmctld/src/reconcile.rs`). The number of
//! VMs `List` then returns is printed with the rows.
//!
//! Equal work on both sides: machined is given 1,000 machines too
//! (`CreateMachine`, class container, each led by a `sleep` process in
//! its own scope), so both lists carry 1,000 entries. The counts are
//! checked before timing.
//!
//! Two tables:
//! - **per call**: from xtask, one persistent connection each (vmctld's
//!   varlink socket and the dev host's system bus, reached through
//!   `/proc/LEADER/root`), calls interleaved per round, each timed from
//!   sending to the last byte of the reply (the whole varlink message, the
//!   whole D-Bus message); each reply is then decoded and its entries
//!   counted outside the timed window. xtask is a debug build: its
//!   serde_json alone takes ~6 ms to parse a 1,000-VM reply (0.9 ms
//!   optimised, measured on this machine kind), which would be the
//!   harness's cost, not vmctld's. The ratio machined / varlink compares
//!   these.
//! - **per tool run**: inside the dev host a shell loop runs `varlinkctl
//!   call`, `vmctl list --json`, `busctl call` of machined and of
//!   `org.vmctl.Manager1`, each time including its tool's process start.
//!
//! Read the medians and the ratio, never as pass/fail thresholds. The VMs
//! and machines stay until the dev host goes down.

use crate::bench::{median, spread};
use crate::host::DevHost;
use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Instant,
};

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
    let machines = register_machines(host)?;
    let calls = measure_calls(&host_root(host), rounds * 4, defined, machines)?;
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
        "List with {defined} VMs defined (specs only, written as files and imported by vmctld) \
         and {machines} machines registered with machined"
    );
    println!(
        "{:<42} {:>24}",
        "per call (one connection each, interleaved)", "median (min-max), ms"
    );
    for label in CALLS {
        let ms = calls.get(label).map(Vec::as_slice).unwrap_or_default();
        println!("{label:<42} {:>24}", spread(ms));
    }
    println!(
        "{:<42} {:>24.2}",
        "machined ListMachines / varlink List",
        median(&calls[CALLS[1]]) / median(&calls[CALLS[0]])
    );
    println!(
        "{:<42} {:>24}",
        format!("per tool run ({rounds} rounds)"),
        "median (min-max), ms"
    );
    for (label, _) in KINDS {
        let ms = samples.get(label).map(Vec::as_slice).unwrap_or_default();
        println!("{label:<42} {:>24}", spread(ms));
    }
    println!(
        "{:<42} {:>24.2}",
        "busctl ListMachines / varlinkctl List",
        median(&samples[KINDS[2].0]) / median(&samples[KINDS[0].0])
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

/// The labels of the per-call rows.
const CALLS: [&str; 3] = [
    "varlink io.vmctl.Manager.List",
    "D-Bus machined ListMachines",
    "D-Bus org.vmctl.Manager1 List",
];

/// The name prefix of the machines registered for the comparison.
const MACHINE_PREFIX: &str = "bench-m-";

/// Gives machined [`VMS`] machines (each a `sleep` in its own scope) and
/// returns how many it lists.
fn register_machines(host: &DevHost) -> Result<usize> {
    let script = format!(
        r#"set -e
have=$(machinectl list --no-legend | grep -c '^{MACHINE_PREFIX}' || true)
for i in $(seq $((have + 1)) {VMS}); do
  sleep infinity </dev/null >/dev/null 2>&1 &
  busctl call org.freedesktop.machine1 /org/freedesktop/machine1 \
    org.freedesktop.machine1.Manager CreateMachine 'sayssusa(sv)' \
    "{MACHINE_PREFIX}$i" 0 vmctl-bench container $! "" 0 >/dev/null
done
busctl call org.freedesktop.machine1 /org/freedesktop/machine1 \
  org.freedesktop.machine1.Manager ListMachines | cut -d' ' -f2
"#
    );
    let out = host.check(&["bash", "-c", &script])?;
    let n: usize = out
        .trim()
        .parse()
        .with_context(|| format!("odd ListMachines count {out:?}"))?;
    if n < VMS {
        bail!("machined lists only {n} machines, {VMS} wanted");
    }
    Ok(n)
}

/// The dev host's root directory as seen from here.
fn host_root(host: &DevHost) -> PathBuf {
    match host {
        DevHost::Local => PathBuf::from("/"),
        DevHost::Container { leader, .. } => PathBuf::from(format!("/proc/{leader}/root")),
    }
}

/// `calls` interleaved rounds of each [`CALLS`] row over one connection
/// each; milliseconds per call by label. Checks first that the lists hold
/// `vms` and `machines` entries.
fn measure_calls(
    root: &Path,
    calls: usize,
    vms: usize,
    machines: usize,
) -> Result<BTreeMap<&'static str, Vec<f64>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = root.join("run/vmctl/io.vmctl.Manager");
        let stream = UnixStream::connect(&socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let mut varlink = Varlink(BufReader::new(stream));
        let bus_socket = root.join("run/dbus/system_bus_socket");
        let address = format!("unix:path={}", bus_socket.display());
        let bus = zbus::connection::Builder::address(address.as_str())?
            .build()
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let listed = varlink.list()?;
        let registered = list_machines(&bus).await?;
        let on_dbus = vmctl_list(&bus).await?;
        if listed < vms || registered < machines || on_dbus < vms {
            bail!(
                "lists too short: varlink {listed}, machined {registered}, D-Bus {on_dbus} \
                 (wanted {vms} VMs, {machines} machines)"
            );
        }
        let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for _ in 0..calls {
            let start = Instant::now();
            let reply = varlink.call_list()?;
            let varlink_ms = start.elapsed().as_secs_f64() * 1e3;
            let start = Instant::now();
            let machines_reply = call(&bus, MACHINED_LIST).await?;
            let machined_ms = start.elapsed().as_secs_f64() * 1e3;
            let start = Instant::now();
            let dbus_reply = call(&bus, VMCTL_LIST).await?;
            let dbus_ms = start.elapsed().as_secs_f64() * 1e3;
            // Every reply is whole and complete, checked untimed.
            let counts = (
                count_vms(&reply)?,
                count_machines(&machines_reply)?,
                count_dbus_vms(&dbus_reply)?,
            );
            if counts != (listed, registered, on_dbus) {
                bail!(
                    "a reply changed size: {counts:?}, before ({listed}, {registered}, {on_dbus})"
                );
            }
            for (label, ms) in CALLS.into_iter().zip([varlink_ms, machined_ms, dbus_ms]) {
                samples.entry(label).or_default().push(ms);
            }
        }
        Ok(samples)
    })
}

/// A varlink connection to vmctld (NUL-terminated JSON messages).
struct Varlink(BufReader<UnixStream>);

impl Varlink {
    /// Calls `List` and returns how many VMs the decoded reply holds.
    fn list(&mut self) -> Result<usize> {
        count_vms(&self.call_list()?)
    }

    /// Calls `List` and returns the whole reply message, undecoded.
    fn call_list(&mut self) -> Result<Vec<u8>> {
        self.0
            .get_mut()
            .write_all(b"{\"method\":\"io.vmctl.Manager.List\",\"parameters\":{}}\0")?;
        let mut reply = Vec::new();
        self.0.read_until(0, &mut reply)?;
        if reply.pop() != Some(0) {
            bail!("vmctld closed the connection mid-reply");
        }
        Ok(reply)
    }
}

/// How many VMs a varlink `List` reply holds.
fn count_vms(reply: &[u8]) -> Result<usize> {
    let reply: serde_json::Value = serde_json::from_slice(reply)?;
    reply["parameters"]["vms"]
        .as_array()
        .map(Vec::len)
        .with_context(|| format!("odd List reply {reply}"))
}

/// A D-Bus method without arguments: destination, path, interface, member.
type BusMethod = (&'static str, &'static str, &'static str, &'static str);

const MACHINED_LIST: BusMethod = (
    "org.freedesktop.machine1",
    "/org/freedesktop/machine1",
    "org.freedesktop.machine1.Manager",
    "ListMachines",
);

const VMCTL_LIST: BusMethod = (
    "org.vmctl.Manager1",
    "/org/vmctl/Manager1",
    "org.vmctl.Manager1",
    "List",
);

/// Calls `method` and returns the whole reply message, undecoded.
async fn call(bus: &zbus::Connection, method: BusMethod) -> Result<zbus::Message> {
    let (destination, path, interface, member) = method;
    Ok(bus
        .call_method(Some(destination), path, Some(interface), member, &())
        .await?)
}

/// machined's `ListMachines`, decoded; returns how many machines.
async fn list_machines(bus: &zbus::Connection) -> Result<usize> {
    count_machines(&call(bus, MACHINED_LIST).await?)
}

/// How many machines a `ListMachines` reply holds.
fn count_machines(reply: &zbus::Message) -> Result<usize> {
    type Machine = (String, String, String, zbus::zvariant::OwnedObjectPath);
    Ok(reply.body().deserialize::<Vec<Machine>>()?.len())
}

/// vmctld's D-Bus `List` (`a(ssuutsss)`), decoded; returns how many.
async fn vmctl_list(bus: &zbus::Connection) -> Result<usize> {
    count_dbus_vms(&call(bus, VMCTL_LIST).await?)
}

/// How many VMs a D-Bus `List` reply holds.
fn count_dbus_vms(reply: &zbus::Message) -> Result<usize> {
    type Vm = (String, String, u32, u32, u64, String, String, String);
    Ok(reply.body().deserialize::<Vec<Vm>>()?.len())
}
