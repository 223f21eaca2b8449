//! `cargo xtask bench --nss`: `getaddrinfo` latency through glibc for
//! `NAME.vm` names, at 50 and 1000 VMs, for three ways of answering them:
//!
//! - nss-files: the names in `/etc/hosts` (`hosts: files`), the floor;
//! - nss-vmctl: `hosts: files vmctl`, records in `/run/vmctl/hosts/`;
//! - libvirt: `hosts: files libvirt_guest` (Debian `libnss-libvirt`), the
//!   same names as libvirt domains in `/var/lib/libvirt/dnsmasq/`: a
//!   `*.macs` file mapping each domain to its MAC and a `*.status` file of
//!   dnsmasq leases for those MACs (the JSON both files hold in libvirt).
//!
//! Each is asked twice: as most programs ask (`AF_UNSPEC`, so both the
//! IPv4 and the IPv6 address come back) and for IPv4 only (`AF_INET`, as
//! `ssh -4` or `curl -4` ask), which returns one address.
//!
//! Two last rows measure glibc's own floor with no module but nss-files:
//! `localhost` (IPv4 and IPv6) from a two-line `/etc/hosts`, and a name
//! with one IPv4 address. With two addresses `getaddrinfo` sorts them by
//! RFC 6724, which costs a netlink dump of the host's addresses and a
//! `socket` + `connect` + `getsockname` per address: that, not the module,
//! is most of every dual-stack figure, and the difference of the two rows
//! shows it. The `AF_INET` rows carry no sort, so they show each module's
//! own cost.
//!
//! The cases are interleaved: [`ROUNDS`] rounds each run every case once
//! with its share of the lookups, so load from other work on the machine
//! falls on all of them alike. A row reports the median over the rounds of
//! each round's p50 and p99, and the spread (lowest to highest) of the
//! rounds' p50.
//!
//! Each case runs in a child process (this xtask again, `bench-nss-child`)
//! inside a private mount namespace (`unshare --mount`, needs root) whose
//! `/etc/nsswitch.conf`, `/etc/hosts`, `/run` and `/var/lib` are the
//! case's own: the machine's files are never touched, and no nscd socket is
//! visible. The child first resolves every name once and checks the
//! address, then times `lookups` calls (names in a scrambled order) and
//! reports p50 and p99.

use crate::cmd;
use crate::paths::{target_dir, workspace_root, Profile};
use anyhow::{bail, Context, Result};
use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lookups timed per case by default.
pub const DEFAULT_LOOKUPS: usize = 100_000;

/// Rounds the lookups of each case are split into (interleaved).
pub const ROUNDS: usize = 5;

/// The VM counts measured.
pub const VM_COUNTS: [usize; 2] = [50, 1000];

/// Where Debian installs libvirt's guest-name NSS module.
const LIBVIRT_MODULES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libnss_libvirt_guest.so.2",
    "/usr/lib/aarch64-linux-gnu/libnss_libvirt_guest.so.2",
    "/usr/lib64/libnss_libvirt_guest.so.2",
];

/// Sets up the mount namespace from the staged tree `$1`, then runs the
/// rest of the arguments. Constant text: every path arrives as an argument.
const NAMESPACE_SCRIPT: &str = r#"
set -e
stage=$1; shift
mount -t tmpfs tmpfs /run
cp -a "$stage/run/." /run/
mount -t tmpfs tmpfs /var/lib
cp -a "$stage/var-lib/." /var/lib/
mount --bind "$stage/etc/nsswitch.conf" /etc/nsswitch.conf
mount --bind "$stage/etc/hosts" /etc/hosts
exec "$@"
"#;

/// The machine-independent `/etc/hosts` head every case has.
const LOCALHOST: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// How names are answered in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Files,
    Vmctl,
    Libvirt,
    Floor,
    /// One IPv4 address: no RFC 6724 sort.
    Floor4,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Files => "nss-files (/etc/hosts)",
            Backend::Vmctl => "nss-vmctl",
            Backend::Libvirt => "libnss_libvirt_guest",
            Backend::Floor => "floor: localhost, files",
            Backend::Floor4 => "floor: one IPv4, files",
        }
    }

    fn nsswitch(self) -> &'static str {
        match self {
            Backend::Files | Backend::Floor | Backend::Floor4 => "hosts: files\n",
            Backend::Vmctl => "hosts: files vmctl\n",
            Backend::Libvirt => "hosts: files libvirt_guest\n",
        }
    }
}

/// The address family a lookup asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `AF_UNSPEC`: IPv4 and IPv6, sorted by glibc (RFC 6724).
    Any,
    /// `AF_INET`: the IPv4 address alone.
    Inet,
}

impl Family {
    fn label(self) -> &'static str {
        match self {
            Family::Any => "any",
            Family::Inet => "inet",
        }
    }

    fn from_label(label: &str) -> Result<Family> {
        match label {
            "any" => Ok(Family::Any),
            "inet" => Ok(Family::Inet),
            other => bail!("unknown address family {other:?} (any or inet)"),
        }
    }

    fn libc(self) -> libc::c_int {
        match self {
            Family::Any => libc::AF_UNSPEC,
            Family::Inet => libc::AF_INET,
        }
    }
}

/// One synthetic VM.
struct Vm {
    name: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    mac: String,
}

fn vms(count: usize) -> Vec<Vm> {
    (0..count)
        .map(|i| {
            let host = u32::try_from(i).expect("few VMs") + 2;
            Vm {
                name: format!("bench-{i}"),
                ipv4: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 0)) + host),
                ipv6: Ipv6Addr::from(
                    u128::from("fd77:766d:6374::".parse::<Ipv6Addr>().unwrap()) + u128::from(host),
                ),
                mac: format!(
                    "02:76:6d:{:02x}:{:02x}:{:02x}",
                    (host >> 16) & 0xff,
                    (host >> 8) & 0xff,
                    host & 0xff
                ),
            }
        })
        .collect()
}

/// p50 and p99 of one case's run in one round.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50: Duration,
    p99: Duration,
}

/// One case over all rounds: medians of the rounds' p50 and p99, and the
/// lowest and highest p50.
#[derive(Debug, Clone, Copy)]
struct Summary {
    p50: Duration,
    p99: Duration,
    low: Duration,
    high: Duration,
}

impl Summary {
    fn of(rounds: &[Figures]) -> Summary {
        let median = |mut v: Vec<Duration>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let p50s: Vec<Duration> = rounds.iter().map(|f| f.p50).collect();
        Summary {
            p50: median(p50s.clone()),
            p99: median(rounds.iter().map(|f| f.p99).collect()),
            low: *p50s.iter().min().expect("at least one round"),
            high: *p50s.iter().max().expect("at least one round"),
        }
    }
}

/// Runs the benchmark and prints the table. Needs root (mount namespaces).
pub fn run(lookups: usize) -> Result<()> {
    // The peer is part of the benchmark: install it like any other need.
    crate::deps::ensure_debian_packages(&["libnss-libvirt"])?;
    let module = build_module()?;
    let libvirt = LIBVIRT_MODULES.iter().map(Path::new).find(|p| p.is_file());
    let mut backends = vec![Backend::Files, Backend::Vmctl];
    match libvirt {
        Some(path) => {
            eprintln!("xtask: libvirt module: {}", path.display());
            backends.push(Backend::Libvirt);
        }
        None => eprintln!(
            "xtask: libnss_libvirt_guest.so.2 not found (apt-get install libnss-libvirt): \
             that column is skipped"
        ),
    }
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let stage_root = target_dir().join("bench-nss");
    // Every case, staged once: (VM count, backend, family, its tree).
    let mut cases = Vec::new();
    for count in VM_COUNTS {
        let vms = vms(count);
        for &backend in &backends {
            let stage = stage_root.join(format!("{count}-{backend:?}").to_lowercase());
            stage_case(&stage, backend, &vms, &module)?;
            for family in [Family::Any, Family::Inet] {
                cases.push((count, backend, family, stage.clone()));
            }
        }
    }
    for backend in [Backend::Floor, Backend::Floor4] {
        let stage = stage_root.join(format!("{backend:?}").to_lowercase());
        stage_case(&stage, backend, &[], &module)?;
        cases.push((0, backend, Family::Any, stage));
    }
    let per_round = lookups.div_ceil(ROUNDS);
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    for round in 1..=ROUNDS {
        eprintln!("xtask: == round {round}/{ROUNDS}, {per_round} lookups per case ==");
        for ((count, backend, family, stage), results) in cases.iter().zip(&mut figures) {
            let f = run_case(&exe, stage, *family, per_round)?;
            eprintln!(
                "xtask:   {:>4} VMs {:<24} {:<5} p50 {:>8} µs",
                count,
                backend.label(),
                family.label(),
                micros(f.p50)
            );
            results.push(f);
        }
    }
    let rows: Vec<Row> = cases
        .iter()
        .zip(&figures)
        .map(|((count, backend, family, _), f)| Row {
            count: *count,
            backend: *backend,
            family: *family,
            summary: Summary::of(f),
        })
        .collect();
    let _ = std::fs::remove_dir_all(&stage_root);
    print!("{}", table(&rows, per_round * ROUNDS));
    Ok(())
}

/// Builds the release `libnss_vmctl.so` and returns its path.
fn build_module() -> Result<PathBuf> {
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "nss-vmctl"]),
    )?;
    let module = Profile::Release.out_dir().join("libnss_vmctl.so");
    if !module.is_file() {
        bail!("{} was not built", module.display());
    }
    Ok(module)
}

/// Writes the tree the namespace script mounts for one case.
fn stage_case(stage: &Path, backend: Backend, vms: &[Vm], module: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    let etc = stage.join("etc");
    let hosts_dir = stage.join("run/vmctl/hosts");
    let dnsmasq = stage.join("var-lib/libvirt/dnsmasq");
    let lib = stage.join("lib");
    for dir in [&etc, &hosts_dir, &dnsmasq, &lib] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::os::unix::fs::symlink(module, lib.join("libnss_vmctl.so.2"))?;
    write(&etc.join("nsswitch.conf"), backend.nsswitch())?;

    let mut hosts = LOCALHOST.to_owned();
    let mut names = String::new();
    for vm in vms {
        writeln!(names, "{}.vm {}", vm.name, vm.ipv4)?;
    }
    match backend {
        Backend::Floor => names.push_str("localhost 127.0.0.1\n"),
        Backend::Floor4 => {
            names.push_str("floor4 127.0.0.1\n");
            hosts.push_str("127.0.0.1\tfloor4\n");
        }
        _ => {}
    }
    write(&stage.join("names"), &names)?;
    match backend {
        Backend::Files => {
            for vm in vms {
                writeln!(hosts, "{}\t{}.vm", vm.ipv4, vm.name)?;
                writeln!(hosts, "{}\t{}.vm", vm.ipv6, vm.name)?;
            }
        }
        Backend::Vmctl => {
            // The layout nss_vmctl::hostdb writes (see the nss-vmctl docs).
            std::fs::create_dir_all(hosts_dir.join("name"))?;
            std::fs::create_dir_all(hosts_dir.join("addr"))?;
            for vm in vms {
                let record = format!("{} {}\n", vm.ipv4, vm.ipv6);
                write(&hosts_dir.join("name").join(&vm.name), &record)?;
                for addr in [vm.ipv4.to_string(), vm.ipv6.to_string()] {
                    write(
                        &hosts_dir.join("addr").join(addr),
                        &format!("{}\n", vm.name),
                    )?;
                }
            }
        }
        Backend::Libvirt => {
            let (macs, status) = libvirt_files(vms);
            write(&dnsmasq.join("vmbench.macs"), &macs)?;
            write(&dnsmasq.join("vmbench.status"), &status)?;
        }
        Backend::Floor | Backend::Floor4 => {}
    }
    write(&etc.join("hosts"), &hosts)
}

/// libvirt's `<network>.macs` (domain → MACs) and `<network>.status`
/// (dnsmasq leases) for `vms`, each domain named `NAME.vm` so the query
/// string is the same as for the other modules. Leases expire in a day.
fn libvirt_files(vms: &[Vm]) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 86_400)
        .unwrap_or(u64::MAX / 2);
    let macs: Vec<String> = vms
        .iter()
        .map(|vm| {
            format!(
                "  {{\n    \"domain\": \"{}.vm\",\n    \"macs\": [\n      \"{}\"\n    ]\n  }}",
                vm.name, vm.mac
            )
        })
        .collect();
    let mut leases = Vec::new();
    for vm in vms {
        for ip in [vm.ipv4.to_string(), vm.ipv6.to_string()] {
            leases.push(format!(
                "  {{\n    \"ip-address\": \"{ip}\",\n    \"mac-address\": \"{}\",\n    \
                 \"hostname\": \"{}\",\n    \"expiry-time\": {expiry}\n  }}",
                vm.mac, vm.name
            ));
        }
    }
    (
        format!("[\n{}\n]\n", macs.join(",\n")),
        format!("[\n{}\n]\n", leases.join(",\n")),
    )
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the child for one staged case in its own mount namespace.
fn run_case(exe: &Path, stage: &Path, family: Family, lookups: usize) -> Result<Figures> {
    let mut child = Command::new("unshare");
    child
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(NAMESPACE_SCRIPT)
        .arg("sh")
        .arg(stage)
        .arg(exe)
        .arg("bench-nss-child")
        .arg(stage.join("names"))
        .arg(lookups.to_string())
        .arg(family.label())
        .env("LD_LIBRARY_PATH", stage.join("lib"));
    let out = cmd::output(&mut child)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no RESULT from the child:\n{stdout}"))?;
    let mut nanos = line.split_whitespace().map(str::parse::<u64>);
    match (nanos.next(), nanos.next()) {
        (Some(Ok(p50)), Some(Ok(p99))) => Ok(Figures {
            p50: Duration::from_nanos(p50),
            p99: Duration::from_nanos(p99),
        }),
        _ => bail!("bad RESULT line from the child: {line:?}"),
    }
}

/// The child: checks every name in `names_file` (lines `NAME.vm IPV4`)
/// resolves to its address, then times `lookups` `getaddrinfo` calls
/// asking for `family` and prints `RESULT <p50 ns> <p99 ns>`.
pub fn child(names_file: &Path, lookups: usize, family: &str) -> Result<()> {
    let family = Family::from_label(family)?;
    let text = std::fs::read_to_string(names_file)
        .with_context(|| format!("cannot read {}", names_file.display()))?;
    let mut names = Vec::new();
    for line in text.lines() {
        let (name, ip) = line.split_once(' ').context("bad names line")?;
        names.push((CString::new(name)?, ip.parse::<Ipv4Addr>()?));
    }
    if names.is_empty() || lookups == 0 {
        bail!("nothing to look up");
    }
    for (name, ip) in &names {
        let addrs =
            getaddrinfo(name, family).with_context(|| format!("{name:?} does not resolve"))?;
        if !addrs.contains(&IpAddr::V4(*ip)) {
            bail!("{name:?} resolved to {addrs:?}, not {ip}");
        }
        let expected = if family == Family::Inet { 1 } else { 2 };
        if addrs.len() != expected && !name.to_bytes().starts_with(b"floor") {
            bail!("{name:?} resolved to {addrs:?}: expected {expected} address(es) for {family:?}");
        }
    }
    // A stride coprime with the name count visits every name in a
    // scrambled order (7919 is prime and larger than any count used).
    let mut times = Vec::with_capacity(lookups);
    for i in 0..lookups {
        let (name, _) = &names[(i * 7919) % names.len()];
        let start = Instant::now();
        let resolved = getaddrinfo(name, family);
        times.push(start.elapsed());
        if resolved.is_err() {
            bail!("{name:?} stopped resolving");
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_nanos();
    println!("RESULT {} {}", at(0.50), at(0.99));
    Ok(())
}

/// glibc's `getaddrinfo(name, NULL, {family, SOCK_STREAM})`: the addresses,
/// in glibc's order. Called directly rather than through `ToSocketAddrs`,
/// which always asks for `AF_UNSPEC`.
fn getaddrinfo(name: &CStr, family: Family) -> Result<Vec<IpAddr>> {
    // SAFETY: addrinfo is a plain C struct; all-zero is its documented
    // "no hints" value, and the fields that matter are set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = family.libc();
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: name is NUL-terminated, hints lives across the call, and
    // list receives a list this function frees below.
    let rc = unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc != 0 {
        bail!("getaddrinfo failed with EAI code {rc}");
    }
    let mut addrs = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: entry is a node of the list getaddrinfo returned, not yet
        // freed; ai_addr points at a sockaddr of ai_family's size.
        unsafe {
            let ai = &*entry;
            match ai.ai_family {
                libc::AF_INET => {
                    let sa = &*(ai.ai_addr as *const libc::sockaddr_in);
                    addrs.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = &*(ai.ai_addr as *const libc::sockaddr_in6);
                    addrs.push(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)));
                }
                _ => {}
            }
            entry = ai.ai_next;
        }
    }
    // SAFETY: list came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    Ok(addrs)
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// One row of the results.
#[derive(Debug, Clone, Copy)]
struct Row {
    count: usize,
    backend: Backend,
    family: Family,
    summary: Summary,
}

/// The results as a table: per VM count and address family, each
/// backend's p50 (median of the rounds), the rounds' p50 spread, p99, and
/// its p50 as a multiple of nss-files' and of nss-vmctl's for the same
/// family; then each backend's growth from the smallest to the largest
/// count.
fn table(rows: &[Row], lookups: usize) -> String {
    let find = |count: usize, backend: Backend, family: Family| {
        rows.iter()
            .find(|r| r.count == count && r.backend == backend && r.family == family)
            .map(|r| r.summary)
    };
    let mut out = format!(
        "\nNSS getaddrinfo latency through glibc, {lookups} lookups per row in {ROUNDS} \
         interleaved rounds (µs; p50 and p99 are medians over the rounds)\n\
         {:>5}  {:<24} {:<6} {:>9} {:>15} {:>9} {:>11} {:>11}\n",
        "VMs", "module", "family", "p50", "p50 spread", "p99", "p50/files", "p50/vmctl"
    );
    for family in [Family::Any, Family::Inet] {
        for row in rows.iter().filter(|r| r.family == family) {
            let figures = row.summary;
            let ratio = |other: Option<Summary>| {
                other.map_or("-".to_owned(), |o| {
                    format!("{:.2}", figures.p50.as_secs_f64() / o.p50.as_secs_f64())
                })
            };
            let vms = if row.count == 0 {
                "-".to_owned()
            } else {
                row.count.to_string()
            };
            let _ = writeln!(
                out,
                "{vms:>5}  {:<24} {:<6} {:>9} {:>15} {:>9} {:>11} {:>11}",
                row.backend.label(),
                family.label(),
                micros(figures.p50),
                format!("{}-{}", micros(figures.low), micros(figures.high)),
                micros(figures.p99),
                ratio(find(row.count, Backend::Files, family)),
                ratio(find(row.count, Backend::Vmctl, family)),
            );
        }
    }
    let (small, large) = (VM_COUNTS[0], VM_COUNTS[VM_COUNTS.len() - 1]);
    for family in [Family::Any, Family::Inet] {
        for backend in [Backend::Files, Backend::Vmctl, Backend::Libvirt] {
            if let (Some(a), Some(b)) = (find(small, backend, family), find(large, backend, family))
            {
                let _ = writeln!(
                    out,
                    "{} ({}): p50 at {large} VMs / at {small} VMs = {:.2}",
                    backend.label(),
                    family.label(),
                    b.p50.as_secs_f64() / a.p50.as_secs_f64()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_the_median_of_rounds() {
        let us = Duration::from_micros;
        let rounds: Vec<Figures> = [(40, 90), (30, 70), (50, 500)]
            .into_iter()
            .map(|(p50, p99)| Figures {
                p50: us(p50),
                p99: us(p99),
            })
            .collect();
        let s = Summary::of(&rounds);
        assert_eq!(
            (s.p50, s.p99, s.low, s.high),
            (us(40), us(90), us(30), us(50))
        );
    }

    #[test]
    fn synthetic_vms_are_distinct() {
        let vms = vms(1000);
        let v4: std::collections::HashSet<_> = vms.iter().map(|v| v.ipv4).collect();
        let macs: std::collections::HashSet<_> = vms.iter().map(|v| &v.mac).collect();
        assert_eq!((v4.len(), macs.len()), (1000, 1000));
        assert_eq!(vms[0].ipv4, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(vms[999].ipv6.to_string(), "fd77:766d:6374::3e9");
    }

    #[test]
    fn libvirt_files_are_json_arrays_naming_each_domain() {
        let (macs, status) = libvirt_files(&vms(2));
        assert!(macs.starts_with("[\n") && macs.ends_with("]\n"));
        assert!(macs.contains("\"domain\": \"bench-1.vm\""));
        assert_eq!(status.matches("\"ip-address\"").count(), 4);
        assert!(status.contains("\"mac-address\": \"02:76:6d:00:00:03\""));
    }
}
