//! QEMU command line, built as a vector of arguments (never a shell string).
//!
//! Option values that QEMU parses as `key=value,...` lists have their commas
//! doubled (QEMU's escape), so paths and credentials containing `,` are safe.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::accel::ResolvedAccel;
use crate::config::{Disk, Machine, VmConfig};

/// Where the QEMU driver puts its sockets, all inside `runtime_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPaths {
    /// QMP control socket (QEMU listens).
    pub qmp: PathBuf,
    /// vhost-user socket between QEMU and `vhost-device-vsock` (the helper listens).
    pub vhost_vsock: PathBuf,
    /// Firmware for `-bios` on q35; `None` keeps QEMU's default (SeaBIOS).
    pub firmware: Option<PathBuf>,
}

/// QEMU's minimal firmware (Debian `qemu-system-data`). With direct kernel
/// boot it skips SeaBIOS's device scan: measured under TCG, QEMU start to
/// a kernel panic at its root mount took 1.4 s with qboot and a PVH
/// `vmlinux` against 2.0 s with SeaBIOS and the bzImage. It still hands
/// the guest QEMU's ACPI tables (power button) and SMBIOS (credentials).
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

impl QemuPaths {
    /// The file holding the `index`-th SMBIOS OEM string (a systemd
    /// credential). Credentials go through files, never the command line:
    /// any local user can read a process's command line, and credentials
    /// carry secrets such as the VM's SSH host key. The runtime directory
    /// is the unit's, mode 0700.
    pub fn oem_string_file(cfg: &VmConfig, index: usize) -> PathBuf {
        cfg.runtime_dir.join(format!("credential-{index}"))
    }

    /// The standard layout below `cfg.runtime_dir`, and [`QBOOT`] as the
    /// firmware where it is installed.
    pub fn for_config(cfg: &VmConfig) -> Self {
        QemuPaths {
            qmp: cfg.runtime_dir.join("qmp.sock"),
            vhost_vsock: cfg.runtime_dir.join("vhost-vsock.sock"),
            firmware: Some(PathBuf::from(QBOOT)).filter(|f| f.is_file()),
        }
    }
}

/// Double every `,` so QEMU's option parser takes it literally.
fn esc(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsStr::from_bytes(&out).to_owned()
}

/// `prefix` followed by the escaped path.
fn opt_path(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(esc(path.as_os_str()));
    s
}

/// How a disk uses the host page cache (QEMU `-drive cache=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCache {
    /// `cache=none`: O_DIRECT, no host page cache (no double caching of
    /// guest data; guest flushes still reach the disk).
    Direct,
    /// `cache=writeback`: through the host page cache; guest flushes become
    /// fdatasync, so it is as safe as `none`, only with a second cache.
    Writeback,
}

impl DiskCache {
    /// `cache=none` when `path` can be opened with O_DIRECT, else
    /// `cache=writeback`.
    ///
    /// Why probe rather than always `writeback`: `none` is the better mode
    /// where it works (guest memory already caches the guest's data; host
    /// page cache for it is wasted memory charged to the VM's unit, and
    /// evicts other VMs' pages), so it stays the default. But QEMU opens a
    /// `cache=none` image with O_DIRECT and fails outright ("Invalid
    /// argument") on file systems without O_DIRECT support (tmpfs before
    /// Linux 6.6, some FUSE and network file systems). This opens the file
    /// the way QEMU will (read-only or read-write, plus O_DIRECT) and falls
    /// back only on EINVAL, the kernel's "no O_DIRECT here" answer. Any other
    /// failure (missing file, permissions) keeps `none`: QEMU then reports
    /// the real problem itself. `aio=threads` (set for both modes) works
    /// with either.
    pub fn probe(path: &Path, read_only: bool) -> DiskCache {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(O_DIRECT)
            .open(path)
        {
            Err(e) if e.raw_os_error() == Some(EINVAL) => DiskCache::Writeback,
            _ => DiskCache::Direct,
        }
    }

    /// The `cache=` value.
    pub fn as_qemu(self) -> &'static str {
        match self {
            DiskCache::Direct => "none",
            DiskCache::Writeback => "writeback",
        }
    }
}

const EINVAL: i32 = 22;
// O_DIRECT is architecture-specific (the crate does not depend on libc).
#[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
const O_DIRECT: i32 = 0o200_000;
#[cfg(any(target_arch = "powerpc", target_arch = "powerpc64"))]
const O_DIRECT: i32 = 0o400_000;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const O_DIRECT: i32 = 0o100_000;
#[cfg(not(any(
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64"
)))]
const O_DIRECT: i32 = 0o40_000; // asm-generic: x86, x86_64, riscv64, s390x, loongarch64

/// QEMU's own seccomp filter (`-sandbox`, QEMU 10 spelling): besides its
/// default deny list, no obsolete system calls, no setuid/setgid or
/// capability changes, no fork/exec, no scheduler or affinity changes.
/// TCG runs under it (its JIT needs no system call it denies).
pub const SECCOMP: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Build QEMU's argument vector (without the program name), choosing each
/// disk's cache mode with [`DiskCache::probe`] (the files are opened, not
/// read).
///
/// The guest starts paused (`-S`); the driver sends QMP `cont` to boot it.
pub fn qemu_args(cfg: &VmConfig, accel: ResolvedAccel, paths: &QemuPaths) -> Vec<OsString> {
    qemu_args_with_cache(cfg, accel, paths, |d| {
        DiskCache::probe(&d.path, d.read_only)
    })
}

/// [`qemu_args`] with each disk's cache mode chosen by `cache` (no probing).
pub fn qemu_args_with_cache(
    cfg: &VmConfig,
    accel: ResolvedAccel,
    paths: &QemuPaths,
    cache: impl Fn(&Disk) -> DiskCache,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    let (machine, bus) = match cfg.machine {
        Machine::Q35 => ("q35", "pci"),
        Machine::Microvm => ("microvm", "device"),
    };
    push(&["-name", &format!("guest={},debug-threads=on", cfg.name)]);
    push(&["-nodefaults", "-no-user-config", "-nographic"]);
    push(&["-sandbox", SECCOMP]);
    let accel_name = match accel {
        ResolvedAccel::Kvm => "kvm",
        ResolvedAccel::Tcg => "tcg",
    };
    if cfg.vsock.is_some() && cfg.machine == Machine::Microvm {
        // microvm has no NUMA: hand the shared backend to the machine directly.
        push(&["-machine", &format!("{machine},memory-backend=mem")]);
    } else {
        push(&["-machine", machine]);
    }
    push(&["-accel", accel_name]);
    if accel == ResolvedAccel::Kvm {
        push(&["-cpu", "host"]);
    }
    push(&["-smp", &cfg.vcpus.to_string()]);
    push(&["-m", &format!("{}M", cfg.memory_mib())]);

    // Direct kernel boot (microvm brings qboot itself).
    if let (Some(firmware), Machine::Q35) = (&paths.firmware, cfg.machine) {
        a.push("-bios".into());
        a.push(firmware.clone().into_os_string());
    }
    a.push("-kernel".into());
    a.push(cfg.kernel.clone().into_os_string());
    if let Some(initrd) = &cfg.initrd {
        a.push("-initrd".into());
        a.push(initrd.clone().into_os_string());
    }
    if !cfg.cmdline.is_empty() {
        a.push("-append".into());
        a.push(cfg.cmdline.clone().into());
    }

    for (i, disk) in cfg.disks.iter().enumerate() {
        let mut drive = opt_path(
            &format!(
                "if=none,format=raw,cache={},aio=threads,file=",
                cache(disk).as_qemu()
            ),
            &disk.path,
        );
        drive.push(format!(",id=disk{i}"));
        if disk.read_only {
            drive.push(",readonly=on");
        }
        a.push("-drive".into());
        a.push(drive);
        a.push("-device".into());
        a.push(format!("virtio-blk-{bus},drive=disk{i}").into());
    }

    for (i, net) in cfg.net.iter().enumerate() {
        a.push("-netdev".into());
        a.push(
            match net.fd {
                // QEMU probes the TAP's flags (IFF_VNET_HDR) through the fd.
                Some(fd) => format!("tap,id=net{i},fd={fd}"),
                None => format!("tap,id=net{i},ifname={},script=no,downscript=no", net.tap),
            }
            .into(),
        );
        a.push("-device".into());
        a.push(format!("virtio-net-{bus},netdev=net{i},mac={}", net.mac).into());
    }

    a.push("-object".into());
    a.push("rng-random,id=rng0,filename=/dev/urandom".into());
    a.push("-device".into());
    a.push(format!("virtio-rng-{bus},rng=rng0").into());

    if let Some(serial) = &cfg.serial_socket {
        a.push("-chardev".into());
        let c = opt_path("socket,id=serial0,server=on,wait=off,path=", serial);
        a.push(c);
        a.push("-serial".into());
        a.push("chardev:serial0".into());
    }

    if cfg.vsock.is_some() {
        // vhost-user needs guest memory the helper process can map.
        a.push("-object".into());
        a.push(
            format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib()
            )
            .into(),
        );
        if cfg.machine == Machine::Q35 {
            a.push("-numa".into());
            a.push("node,memdev=mem".into());
        }
        a.push("-chardev".into());
        a.push(opt_path("socket,id=vsock0,path=", &paths.vhost_vsock));
        a.push("-device".into());
        a.push(format!("vhost-user-vsock-{bus},chardev=vsock0").into());
    }

    for index in 0..cfg.oem_strings().len() {
        a.push("-smbios".into());
        a.push(opt_path(
            "type=11,path=",
            &QemuPaths::oem_string_file(cfg, index),
        ));
    }

    a.push("-qmp".into());
    let mut q = opt_path("unix:", &paths.qmp);
    q.push(",server=on,wait=off");
    a.push(q);
    a.push("-S".into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;

    fn strs(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value following the first occurrence of `flag`.
    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    #[rustfmt::skip]
    fn full_config_tcg() {
        let cfg = sample();
        let paths = QemuPaths {
            firmware: None,
            ..QemuPaths::for_config(&cfg)
        };
        let a = strs(&qemu_args(&cfg, ResolvedAccel::Tcg, &paths));
        let expected: Vec<&str> = vec![
            "-name", "guest=blog,debug-threads=on",
            "-nodefaults", "-no-user-config", "-nographic",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-machine", "q35", "-accel", "tcg",
            "-smp", "2", "-m", "1024M",
            "-kernel", "/var/lib/vmctl/kernel/vmlinuz",
            "-initrd", "/var/lib/vmctl/kernel/initrd.img",
            "-append", "console=ttyS0 root=/dev/vda rw",
            "-drive", "if=none,format=raw,cache=none,aio=threads,file=/var/lib/vmctl/volumes/blog.raw,id=disk0",
            "-device", "virtio-blk-pci,drive=disk0",
            "-drive", "if=none,format=raw,cache=none,aio=threads,file=/var/lib/vmctl/seed,,1.raw,id=disk1,readonly=on",
            "-device", "virtio-blk-pci,drive=disk1",
            "-netdev", "tap,id=net0,ifname=vmt-blog,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0",
            "-chardev", "socket,id=serial0,server=on,wait=off,path=/run/vmctl/vm/blog/serial",
            "-serial", "chardev:serial0",
            "-object", "memory-backend-memfd,id=mem,size=1024M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", "socket,id=vsock0,path=/run/vmctl/vm/blog/vhost-vsock.sock",
            "-device", "vhost-user-vsock-pci,chardev=vsock0",
            "-smbios", "type=11,path=/run/vmctl/vm/blog/credential-0",
            "-qmp", "unix:/run/vmctl/vm/blog/qmp.sock,server=on,wait=off",
            "-S",
        ];
        assert_eq!(a, expected);
        assert!(!a.contains(&"-cpu".to_owned()));
    }

    #[test]
    fn firmware_only_on_q35() {
        let mut cfg = sample();
        let paths = QemuPaths {
            firmware: Some(QBOOT.into()),
            ..QemuPaths::for_config(&cfg)
        };
        let a = strs(&qemu_args(&cfg, ResolvedAccel::Tcg, &paths));
        assert_eq!(after(&a, "-bios"), [QBOOT]);
        let bios = a.iter().position(|x| x == "-bios").unwrap();
        assert!(bios < a.iter().position(|x| x == "-kernel").unwrap());
        cfg.machine = Machine::Microvm;
        let a = strs(&qemu_args(&cfg, ResolvedAccel::Tcg, &paths));
        assert!(after(&a, "-bios").is_empty(), "{a:?}");
    }

    #[test]
    fn tap_passed_as_inherited_fd() {
        let mut cfg = sample();
        cfg.net[0].fd = Some(7);
        let a = strs(&qemu_args(
            &cfg,
            ResolvedAccel::Tcg,
            &QemuPaths::for_config(&cfg),
        ));
        assert_eq!(after(&a, "-netdev"), ["tap,id=net0,fd=7"]);
        assert!(!a.iter().any(|x| x.contains("ifname=")), "{a:?}");
        assert_eq!(
            after(&a, "-device")
                .into_iter()
                .filter(|d| d.starts_with("virtio-net"))
                .collect::<Vec<_>>(),
            ["virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"]
        );
    }

    #[test]
    fn kvm_minimal_without_vsock_net_initrd() {
        let mut cfg = sample();
        cfg.initrd = None;
        cfg.vsock = None;
        cfg.net.clear();
        cfg.serial_socket = None;
        cfg.credentials.clear();
        let a = strs(&qemu_args(
            &cfg,
            ResolvedAccel::Kvm,
            &QemuPaths::for_config(&cfg),
        ));
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        for absent in [
            "-initrd", "-netdev", "-numa", "-smbios", "-serial", "-chardev",
        ] {
            assert!(after(&a, absent).is_empty(), "{absent} present: {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("vhost-user")));
        assert_eq!(a.last().unwrap(), "-S");
    }

    #[test]
    fn microvm_uses_mmio_devices_and_machine_memory_backend() {
        let mut cfg = sample();
        cfg.machine = Machine::Microvm;
        let a = strs(&qemu_args(
            &cfg,
            ResolvedAccel::Tcg,
            &QemuPaths::for_config(&cfg),
        ));
        assert_eq!(after(&a, "-machine"), ["microvm,memory-backend=mem"]);
        assert!(after(&a, "-numa").is_empty());
        assert!(a.contains(&"vhost-user-vsock-device,chardev=vsock0".to_owned()));
        assert!(a.contains(&"virtio-blk-device,drive=disk0".to_owned()));
    }

    #[test]
    fn credentials_stay_off_the_command_line() {
        let mut cfg = sample();
        cfg.credentials[0].value = "secret,value".into();
        cfg.runtime_dir = "/run/vmctl/vm/a,b".into();
        let a = strs(&qemu_args(
            &cfg,
            ResolvedAccel::Tcg,
            &QemuPaths::for_config(&cfg),
        ));
        assert_eq!(
            after(&a, "-smbios"),
            ["type=11,path=/run/vmctl/vm/a,,b/credential-0"]
        );
        assert!(!a.iter().any(|arg| arg.contains("secret")), "{a:?}");
    }

    #[test]
    fn writeback_cache_where_o_direct_is_refused() {
        let mut cfg = sample();
        cfg.disks.truncate(1);
        let a = strs(&qemu_args_with_cache(
            &cfg,
            ResolvedAccel::Tcg,
            &QemuPaths::for_config(&cfg),
            |_| DiskCache::Writeback,
        ));
        assert_eq!(
            after(&a, "-drive"),
            ["if=none,format=raw,cache=writeback,aio=threads,file=/var/lib/vmctl/volumes/blog.raw,id=disk0"]
        );
    }

    #[test]
    fn probe_falls_back_only_when_o_direct_is_refused() {
        // procfs has no O_DIRECT: open(2) says EINVAL, as tmpfs did before Linux 6.6.
        assert_eq!(
            DiskCache::probe(Path::new("/proc/version"), true),
            DiskCache::Writeback
        );
        // A missing file is QEMU's to report: keep the default.
        assert_eq!(
            DiskCache::probe(Path::new("/nonexistent/disk.raw"), false),
            DiskCache::Direct
        );
        // A regular file on a disk file system (the crate's own directory).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        assert_eq!(DiskCache::probe(&img, false), DiskCache::Direct);
        assert_eq!(DiskCache::probe(&img, true), DiskCache::Direct);
        // qemu_args probes: a disk on procfs gets writeback, a missing one none.
        let mut cfg = sample();
        cfg.disks[0].path = "/proc/version".into();
        cfg.disks[0].read_only = true;
        let a = strs(&qemu_args(
            &cfg,
            ResolvedAccel::Tcg,
            &QemuPaths::for_config(&cfg),
        ));
        let drives = after(&a, "-drive");
        assert!(
            drives[0].contains(",cache=writeback,aio=threads,"),
            "{drives:?}"
        );
        assert!(drives[1].contains(",cache=none,aio=threads,"), "{drives:?}");
    }
}
