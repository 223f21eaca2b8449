//! The LVM thin backend against real LVM: runs vmctld's own
//! `storage::lvm` code (the code a host runs, no stand-in for `lvcreate`)
//! on a volume group it makes on DEVICE, and checks after every step that
//! `lvs --reportformat json`, as the backend reads it, lists exactly the
//! logical volumes expected, and that the bytes on the volumes are right.
//!
//! ```text
//! lvm-thin-check DEVICE     # DEVICE is wiped: a spare disk, e.g. /dev/vdb
//! ```
//!
//! Device-mapper is missing on the development machines, so the e2e test
//! `tests/tests/storage_lvm.rs` copies this binary into a VM of the
//! `debian-lvm` image (Debian's kernel, lvm2, thin-provisioning-tools) and
//! runs it there on the VM's data disk. It needs root. The last line of a
//! run that passed is `lvm-thin-check: passed`; any failed check panics
//! naming the step.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

use anyhow::{bail, Context, Result};
use vmctld::storage::lvm::{Lv, Lvm, LvmThinPool, SystemLvm, ThinPool, FULL_PERCENT};
use vmctld::storage::{StorageError, Volume};

/// The volume group made on DEVICE (and removed at the end).
const VG: &str = "vmctlcheck";
const MIB: u64 = 1 << 20;
/// The image volume's size and the span of it written with a pattern.
const IMAGE_SIZE: u64 = 256 * MIB;
const WRITTEN: usize = 16 << 20;

/// One LV as a step expects it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Want {
    name: String,
    size: u64,
    pool: String,
    origin: String,
    active: bool,
}

fn want(name: &str, size: u64, pool: &str, origin: &str, active: bool) -> Want {
    Want {
        name: name.into(),
        size,
        pool: pool.into(),
        origin: origin.into(),
        active,
    }
}

fn seen(lv: &Lv) -> Want {
    want(
        &lv.lv_name,
        lv.lv_size,
        &lv.pool_lv,
        &lv.origin,
        lv.active(),
    )
}

struct Check {
    pool: LvmThinPool<SystemLvm>,
    tiny: LvmThinPool<SystemLvm>,
    /// What `lvs` of the volume group must list now.
    expected: Vec<Want>,
    steps: usize,
}

impl Check {
    /// Compares `lvs` (the backend's JSON reading) with `expected`.
    fn lvs_match(&mut self, step: &str) {
        let mut got: Vec<Want> = self
            .pool
            .lvs()
            .unwrap_or_else(|e| panic!("{step}: lvs: {e}"))
            .iter()
            .map(seen)
            .collect();
        got.sort();
        self.expected.sort();
        assert_eq!(
            got, self.expected,
            "{step}: lvs differs from what is expected"
        );
        self.steps += 1;
        println!(
            "ok {:2} {step}: lvs lists {} LVs as expected",
            self.steps,
            got.len()
        );
    }

    /// Runs a backend call that must fail with exactly `error` and change
    /// nothing.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        step: &str,
        call: impl FnOnce(&Self) -> Result<T, StorageError>,
        error: &str,
    ) {
        match call(self) {
            Ok(v) => panic!("{step}: succeeded ({v:?}), expected: {error}"),
            Err(e) => assert_eq!(e.to_string(), error, "{step}: the error"),
        }
        println!("   {step}: refused: {error}");
        self.lvs_match(&format!("{step} (nothing made)"));
    }

    fn dev(&self, lv: &str) -> String {
        self.pool.pool.device(lv)
    }

    fn root(vm: u32) -> Volume {
        Volume::Root(format!("vm{vm}"))
    }

    fn root_lv(vm: u32) -> String {
        ThinPool::lv_name(&Self::root(vm))
    }
}

/// `len` bytes that differ per `seed` (xorshift).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_at(dev: &str, offset: u64, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("cannot open {dev}"))?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {dev}"))?;
    f.sync_all()
        .with_context(|| format!("cannot flush {dev}"))?;
    Ok(())
}

/// Reads `len` bytes at `offset` from the device itself, not from what
/// the page cache kept of earlier writes.
fn read_at(dev: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("cannot drop the page cache")?;
    let mut f = File::open(dev).with_context(|| format!("cannot open {dev}"))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)
        .with_context(|| format!("cannot read {dev}"))?;
    Ok(buf)
}

fn device_size(dev: &str) -> Result<u64> {
    let mut f = File::open(dev).with_context(|| format!("cannot open {dev}"))?;
    Ok(f.seek(SeekFrom::End(0))?)
}

/// Set-up outside the backend (an administrator's job): tools and VG.
fn run(argv: &[&str]) -> Result<String> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    Ok(SystemLvm.run(&argv)?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device] = args.as_slice() else {
        bail!("usage: lvm-thin-check DEVICE (a spare block device; it is wiped)");
    };
    let status = Command::new("modprobe").arg("dm-thin-pool").status()?;
    if !status.success() {
        bail!("modprobe dm-thin-pool failed ({status}): this kernel has no thin provisioning");
    }

    // 1. A volume group that does not exist, before anything is made.
    let novg = LvmThinPool::new(ThinPool::parse("vmctlnovg/thin")?, SystemLvm);
    let e = novg
        .create(&Volume::Data("db".into()), 64 * MIB)
        .expect_err("a volume in a missing VG");
    assert_eq!(
        e.to_string(),
        "the volume group \"vmctlnovg\" of Pool=vmctlnovg/thin does not exist: create it \
         (vgcreate vmctlnovg DEVICE) or name an existing one (vgs lists them)"
    );
    println!("   missing VG: refused: {e}");

    // Leftovers of an interrupted earlier run go first.
    let _ = run(&["vgremove", "--yes", "--force", VG]);
    run(&["wipefs", "--all", device]).context("wipefs")?;
    run(&["pvcreate", "--yes", device])?;
    run(&["vgcreate", VG, device])?;
    println!("   made PV {device} and VG {VG}");

    let mut c = Check {
        pool: LvmThinPool::new(ThinPool::parse(&format!("{VG}/thin"))?, SystemLvm),
        tiny: LvmThinPool::new(ThinPool::parse(&format!("{VG}/tiny"))?, SystemLvm),
        expected: Vec::new(),
        steps: 0,
    };
    c.lvs_match("empty VG");
    c.refused(
        "no thin pool",
        |c| c.pool.create(&Volume::Data("db".into()), 64 * MIB),
        &format!(
            "the thin pool {VG}/thin does not exist (create it: lvcreate --type thin-pool \
             -L SIZE -n thin {VG})"
        ),
    );

    // 2. The pool, and an image volume with known bytes.
    c.pool.create_pool(1024 * MIB)?;
    c.expected.push(want("thin", 1024 * MIB, "", "", true));
    c.lvs_match("thin pool created");

    let image_lv = c.pool.create_image("base", IMAGE_SIZE)?;
    assert_eq!(image_lv, "vmctl-image-base");
    c.expected
        .push(want(&image_lv, IMAGE_SIZE, "thin", "", true));
    c.lvs_match("image volume created");
    let image = pattern(1, WRITTEN);
    let tail = pattern(2, MIB as usize);
    write_at(&c.dev(&image_lv), 0, &image)?;
    write_at(&c.dev(&image_lv), IMAGE_SIZE - MIB, &tail)?;
    assert!(
        read_at(&c.dev(&image_lv), 0, WRITTEN)? == image,
        "image bytes read back"
    );
    let used = c.pool.pool_lv()?.data_percent.unwrap_or(0.0);
    assert!(used > 0.0, "the pool shows the image's data: {used}%");
    c.refused(
        "image again",
        |c| c.pool.create_image("base", IMAGE_SIZE),
        &format!("image \"base\" has a thin volume {VG}/vmctl-image-base already"),
    );

    // 3. Five VM roots: thin snapshots of the image, the first grown.
    for vm in 1..=5 {
        let size = if vm == 1 { 2 * IMAGE_SIZE } else { IMAGE_SIZE };
        c.pool.clone_image("base", &Check::root(vm), size)?;
        c.expected
            .push(want(&Check::root_lv(vm), size, "thin", &image_lv, true));
        c.lvs_match(&format!("root of vm{vm}: snapshot, active"));
    }
    let skip = c
        .pool
        .lvs()?
        .into_iter()
        .filter(|lv| lv.lv_name.starts_with("vmctl-root-") && lv.activation_skip())
        .count();
    assert_eq!(skip, 0, "roots are made without the activation skip flag");
    assert_eq!(device_size(&c.dev(&Check::root_lv(1)))?, 2 * IMAGE_SIZE);
    c.refused(
        "root again",
        |c| c.pool.clone_image("base", &Check::root(1), IMAGE_SIZE),
        "root volume \"vm1\" exists already",
    );
    c.refused(
        "root of a missing image",
        |c| c.pool.clone_image("nosuch", &Check::root(9), IMAGE_SIZE),
        &format!("image \"nosuch\" has no thin volume {VG}/vmctl-image-nosuch"),
    );

    // 4. Writes to one root stay in it.
    let mine = pattern(3, 4 << 20);
    write_at(&c.dev(&Check::root_lv(1)), 0, &mine)?;
    assert!(read_at(&c.dev(&Check::root_lv(1)), 0, mine.len())? == mine);
    assert!(
        read_at(&c.dev(&Check::root_lv(1)), IMAGE_SIZE, MIB as usize)?
            .iter()
            .all(|b| *b == 0),
        "vm1's grown part reads as zeros"
    );
    for vm in 2..=5 {
        let dev = c.dev(&Check::root_lv(vm));
        assert!(
            read_at(&dev, 0, WRITTEN)? == image,
            "vm{vm} still has the image's bytes"
        );
        assert!(read_at(&dev, IMAGE_SIZE - MIB, MIB as usize)? == tail);
    }
    assert!(
        read_at(&c.dev(&image_lv), 0, WRITTEN)? == image,
        "the image is unchanged"
    );
    c.steps += 1;
    println!(
        "ok {:2} a write to vm1's root is in vm1 only (vm2-5 and the image unchanged)",
        c.steps
    );
    c.lvs_match("after the writes");

    // 5. Activation: off and on again, and a snapshot made by another tool
    //    (thin snapshots get the activation skip flag by default).
    c.pool.deactivate(&Check::root(5))?;
    c.expected.retain(|w| w.name != Check::root_lv(5));
    c.expected.push(want(
        &Check::root_lv(5),
        IMAGE_SIZE,
        "thin",
        &image_lv,
        false,
    ));
    c.lvs_match("vm5 deactivated");
    run(&[
        "lvcreate",
        "--snapshot",
        "--name",
        &Check::root_lv(6),
        &format!("{VG}/{image_lv}"),
    ])?;
    let vm6 = c
        .pool
        .lvs()?
        .into_iter()
        .find(|lv| lv.lv_name == Check::root_lv(6))
        .expect("the snapshot made with plain lvcreate");
    assert!(vm6.activation_skip() && !vm6.active(), "{vm6:?}");
    c.expected.push(want(
        &Check::root_lv(6),
        IMAGE_SIZE,
        "thin",
        &image_lv,
        false,
    ));
    c.lvs_match("vm6 made by plain lvcreate --snapshot: skip flag, inactive");
    for vm in [5, 6] {
        c.pool.activate(&Check::root(vm))?;
        for w in c
            .expected
            .iter_mut()
            .filter(|w| w.name == Check::root_lv(vm))
        {
            w.active = true;
        }
    }
    c.lvs_match("vm5 and vm6 activated (-K)");
    assert!(read_at(&c.dev(&Check::root_lv(6)), 0, WRITTEN)? == image);

    // 6. A data volume: written, grown, never shrunk.
    let db = Volume::Data("db".into());
    c.pool.create(&db, 128 * MIB)?;
    c.expected
        .push(want("vmctl-data-db", 128 * MIB, "thin", "", true));
    c.lvs_match("data volume created");
    let data = pattern(4, 8 << 20);
    write_at(&c.dev("vmctl-data-db"), 0, &data)?;
    assert!(read_at(&c.dev("vmctl-data-db"), 0, data.len())? == data);
    c.refused(
        "data volume again",
        |c| c.pool.create(&db, 128 * MIB),
        "data volume \"db\" exists already",
    );
    c.pool.resize(&db, 256 * MIB)?;
    c.expected
        .iter_mut()
        .find(|w| w.name == "vmctl-data-db")
        .expect("db is expected")
        .size = 256 * MIB;
    c.lvs_match("data volume grown to 256 MiB");
    assert_eq!(device_size(&c.dev("vmctl-data-db"))?, 256 * MIB);
    assert!(read_at(&c.dev("vmctl-data-db"), 0, data.len())? == data);
    c.refused(
        "data volume shrunk",
        |c| c.pool.resize(&db, 64 * MIB),
        "data volume \"db\" is 268435456 bytes; it can only grow, not shrink to 67108864 bytes",
    );
    let volumes: Vec<(Volume, u64)> = c
        .pool
        .volumes()?
        .into_iter()
        .map(|(v, lv)| (v, lv.lv_size))
        .collect();
    let mut roots: Vec<(Volume, u64)> = (1..=6)
        .map(|vm| {
            (
                Check::root(vm),
                if vm == 1 { 2 * IMAGE_SIZE } else { IMAGE_SIZE },
            )
        })
        .collect();
    roots.push((db.clone(), 256 * MIB));
    assert_eq!(volumes, roots, "the backend's volume list");

    // 7. Fullness: a second, small pool.
    c.tiny.create_pool(32 * MIB)?;
    c.expected.push(want("tiny", 32 * MIB, "", "", true));
    c.lvs_match("small pool created");
    c.refused(
        "image bigger than the free space",
        |c| c.tiny.create_image("big", 48 * MIB),
        &format!(
            "the thin pool {VG}/tiny has 33554432 bytes free, 50331648 are needed: extend it \
             (lvextend) or remove volumes"
        ),
    );
    let fill = Volume::Data("fill".into());
    c.tiny.create(&fill, 64 * MIB)?;
    c.expected
        .push(want("vmctl-data-fill", 64 * MIB, "tiny", "", true));
    c.lvs_match("overcommitted volume in the small pool");
    write_at(
        &c.tiny.pool.device("vmctl-data-fill"),
        0,
        &pattern(5, 31 << 20),
    )?;
    let used = c.tiny.pool_lv()?.data_percent.expect("a pool's data usage");
    assert!(used >= FULL_PERCENT, "31 of 32 MiB written: {used}%");
    c.refused(
        "volume in a full pool",
        |c| c.tiny.create(&Volume::Data("more".into()), 8 * MIB),
        &format!(
            "the thin pool {VG}/tiny is full (data {used:.1}% used, new volumes are refused \
             from {FULL_PERCENT}%): extend it (lvextend) or remove volumes"
        ),
    );
    c.refused(
        "root in a full pool",
        |c| c.tiny.clone_image("base", &Check::root(7), IMAGE_SIZE),
        &format!(
            "the thin pool {VG}/tiny is full (data {used:.1}% used, new volumes are refused \
             from {FULL_PERCENT}%): extend it (lvextend) or remove volumes"
        ),
    );
    let status = c.tiny.status()?;
    assert_eq!(status.total_bytes, 32 * MIB);
    assert!(
        status.free_bytes <= 32 * MIB * 5 / 100,
        "free in a full pool: {status:?}"
    );
    println!("   pool status of the small pool: {status:?}");

    // 8. Everything goes; deleting again is no error.
    for vm in 1..=6 {
        c.pool.delete(&Check::root(vm))?;
    }
    c.pool.delete(&db)?;
    c.tiny.delete(&fill)?;
    c.pool.delete_image("base")?;
    c.expected.retain(|w| w.name == "thin" || w.name == "tiny");
    c.lvs_match("every volume removed");
    c.pool.delete(&Check::root(1))?;
    c.pool.delete_image("base")?;
    c.lvs_match("removing again changes nothing");
    assert!(c.pool.volumes()?.is_empty());
    let status = c.pool.status()?;
    println!("   pool status after removing all: {status:?}");
    println!(
        "   lvs --reportformat json now:\n{}",
        SystemLvm.run(&c.pool.pool.lvs_argv())?.trim_end()
    );

    run(&["vgremove", "--yes", "--force", VG])?;
    run(&["pvremove", "--yes", device])?;
    println!("   removed VG {VG} and PV {device}");
    println!("lvm-thin-check: passed ({} checked steps)", c.steps);
    Ok(())
}
