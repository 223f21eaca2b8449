//! The directory pool on real file systems made by the test: a btrfs and an
//! ext4 loop file, each mounted in a temp directory.
//!
//! On btrfs ten root volumes cloned from one fully allocated image share
//! every extent with it (`btrfs filesystem du` counts no exclusive bytes),
//! and a write to one clone stays in that clone. On ext4 (no reflinks) the
//! pool falls back to a sparse copy that reads back identical.
//!
//! Needs root (mount, loop devices) and mkfs.btrfs (`cargo xtask deps`
//! installs btrfs-progs); as another user it says SKIPPED.

use std::{
    fs,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::Command,
};

use vmctld::storage::{CloneMethod, Storage, StorageConfig, Volume};

const IMAGE_BYTES: u64 = 64 << 20;
const CLONES: usize = 10;

/// A loop-mounted file system, unmounted on drop (`mount -o loop` sets
/// autoclear, so the loop device goes with it).
struct LoopMount {
    _dir: tempfile::TempDir,
    mountpoint: PathBuf,
}

impl LoopMount {
    /// Makes a `size`-byte file system with `mkfs` (program and arguments
    /// before the file) and mounts it.
    fn new(mkfs: &[&str], size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fs.img");
        fs::File::create(&file).unwrap().set_len(size).unwrap();
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&file));
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(&mountpoint));
        Self {
            _dir: dir,
            mountpoint,
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An image `root.raw` of IMAGE_BYTES pseudo-random bytes (no holes, no
/// zero blocks: every byte is allocated).
fn write_image(dir: &Path) -> PathBuf {
    let path = dir.join("images/base/root.raw");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = fs::File::create(&path).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..IMAGE_BYTES >> 20 {
        for chunk in block.chunks_mut(8) {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all_at(&block, i << 20).unwrap();
    }
    file.sync_all().unwrap();
    path
}

/// `btrfs filesystem du -s --raw PATH`: (total, exclusive, set shared).
fn btrfs_du(path: &Path) -> (u64, u64, u64) {
    let out = run(Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(path));
    println!("btrfs filesystem du -s {}:\n{out}", path.display());
    let line = out.lines().nth(1).expect("a summary line");
    let n: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn btrfs_clones_share_every_extent_and_diverge_on_write() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a loop file system needs root");
        return;
    }
    let fs = LoopMount::new(&["mkfs.btrfs", "-q"], 512 << 20);
    let state = &fs.mountpoint;
    let image = write_image(state);
    let storage = Storage::open(&StorageConfig::default(), state).unwrap();
    assert!(storage.status().unwrap().reflink, "btrfs reflinks");

    for i in 0..CLONES {
        let root = Volume::Root(format!("vm{i}"));
        let started = std::time::Instant::now();
        let method = storage.clone_image(&image, &root, 4 << 30).unwrap();
        // Evidence only (timing is not asserted): the size shared is the proof.
        println!("vm{i}: {} in {:?}", method.as_str(), started.elapsed());
        assert_eq!(method, CloneMethod::Reflink);
    }
    run(&mut Command::new("sync"));
    let (total, exclusive, shared) = btrfs_du(&state.join("disks"));
    assert_eq!(
        total,
        CLONES as u64 * IMAGE_BYTES,
        "each clone refers to all data"
    );
    assert_eq!(exclusive, 0, "no clone holds data of its own");
    assert_eq!(shared, IMAGE_BYTES, "the clones share one copy");
    let (_, _, with_image) = btrfs_du(state);
    assert_eq!(with_image, IMAGE_BYTES, "and that copy is the image's");
    let listed = storage.list().unwrap();
    assert_eq!(listed.len(), CLONES);
    assert!(listed.iter().all(|v| v.size_bytes == 4 << 30));

    // A write in one VM's root is in that root only.
    let vm0 = storage.path(&Volume::Root("vm0".into()));
    let f = fs::OpenOptions::new().write(true).open(&vm0).unwrap();
    f.write_all_at(b"written in vm0", 4096).unwrap();
    f.sync_all().unwrap();
    let read_at = |path: &Path| {
        let mut buf = [0u8; 14];
        fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, 4096)
            .unwrap();
        buf
    };
    assert_eq!(&read_at(&vm0), b"written in vm0");
    let vm1 = storage.path(&Volume::Root("vm1".into()));
    assert_ne!(&read_at(&vm1), b"written in vm0");
    assert_eq!(read_at(&vm1), read_at(&image));
    run(&mut Command::new("sync"));
    let (_, exclusive, _) = btrfs_du(&state.join("disks"));
    assert_eq!(exclusive, 4096, "one block of vm0 is its own now");

    for i in 0..CLONES {
        storage.delete(&Volume::Root(format!("vm{i}"))).unwrap();
    }
    assert!(storage.list().unwrap().is_empty());
}

#[test]
fn ext4_falls_back_to_a_sparse_copy() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a loop file system needs root");
        return;
    }
    let fs = LoopMount::new(&["mkfs.ext4", "-q", "-F"], 512 << 20);
    let state = &fs.mountpoint;
    let image = write_image(state);
    let storage = Storage::open(&StorageConfig::default(), state).unwrap();
    assert!(!storage.status().unwrap().reflink, "ext4 does not reflink");
    let root = Volume::Root("a".into());
    let method = storage.clone_image(&image, &root, 1 << 30).unwrap();
    assert_eq!(method, CloneMethod::SparseCopy);
    let info = storage.get(&root).unwrap().unwrap();
    assert_eq!(info.size_bytes, 1 << 30);
    // A full copy of the data, none of the 960 MiB of hole behind it.
    assert!(
        info.allocated_bytes >= IMAGE_BYTES && info.allocated_bytes < IMAGE_BYTES + (4 << 20),
        "{} bytes allocated",
        info.allocated_bytes
    );
    let copy = fs::read(&info.path).unwrap();
    assert_eq!(
        &copy[..IMAGE_BYTES as usize],
        &fs::read(&image).unwrap()[..]
    );
    assert!(copy[IMAGE_BYTES as usize..].iter().all(|b| *b == 0));

    // A full file system: the clone fails naming the file, and leaves
    // nothing behind.
    let free = storage.status().unwrap().free_bytes;
    let filler = fs::File::create(state.join("filler")).unwrap();
    rustix::fs::fallocate(
        &filler,
        rustix::fs::FallocateFlags::empty(),
        0,
        free - (16 << 20),
    )
    .unwrap();
    let b = Volume::Root("b".into());
    let e = storage.clone_image(&image, &b, 1 << 30).unwrap_err();
    println!("clone on a full file system: {e}");
    assert!(e.to_string().contains("disks/b/root.raw"), "{e}");
    assert!(!storage.path(&b).exists());
    assert_eq!(storage.list().unwrap().len(), 1);
}
