//! `cargo xtask bench --clone`: how long making a VM's root disk from an
//! image takes with a reflink (what the directory pool does on btrfs and
//! XFS: `FICLONE`, `cp --reflink=always`) against a full copy (what a pool
//! without reflinks costs for a fully allocated image: `cp
//! --reflink=never --sparse=never`), for fully allocated images of several
//! sizes, side by side on the same file system.
//!
//! The file system is a btrfs made by this bench on a loop-mounted sparse
//! file under `/var/tmp` (root), removed afterwards. Each image is written
//! with non-zero data, so every block is allocated and nothing is a hole.
//! Each measurement is the copy plus an `fsync` of the new file (`sync
//! FILE`), so a full copy is charged for reaching the disk and not only
//! the page cache; the clone is deleted after each one. Rounds interleave
//! the methods and sizes, so load from other work falls on all alike.
//! Times are wall clock on a shared machine: read medians and ratios.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Image sizes in GiB measured by default (the issue's).
pub const DEFAULT_SIZES: [u64; 3] = [1, 4, 16];

const GIB: u64 = 1 << 30;

/// The two ways of making a root disk.
const METHODS: [(&str, &[&str]); 2] = [
    ("reflink", &["--reflink=always"]),
    ("full copy", &["--reflink=never", "--sparse=never"]),
];

/// Runs `rounds` interleaved rounds over `sizes` (GiB) and prints the table.
pub fn run(sizes: &[u64], rounds: usize) -> Result<()> {
    if sizes.is_empty() || rounds == 0 {
        bail!("bench --clone needs at least one size and one round");
    }
    let work = PathBuf::from(format!("/var/tmp/vmctl-bench-clone-{}", std::process::id()));
    fs::create_dir(&work).with_context(|| format!("cannot make {}", work.display()))?;
    let result = Pool::make(&work, sizes).and_then(|pool| {
        let table = measure(&pool, sizes, rounds);
        pool.unmount();
        table
    });
    if let Err(e) = fs::remove_dir_all(&work) {
        eprintln!("bench --clone: cannot remove {}: {e}", work.display());
    }
    let table = result?;
    println!();
    println!(
        "environment: btrfs on a loop file under /var/tmp, fully allocated images, \
         copy + fsync of the clone, {rounds} round(s), methods and sizes interleaved"
    );
    println!(
        "{:<16} {:>24} {:>24} {:>12}",
        "image size", "reflink, s", "full copy, s", "copy/reflink"
    );
    for (size, times) in sizes.iter().zip(&table) {
        let (reflink, copy) = (summary(&times[0]), summary(&times[1]));
        println!(
            "{:<16} {:>24} {:>24} {:>11.0}x",
            format!("{size} GiB"),
            reflink.text,
            copy.text,
            copy.median / reflink.median.max(1e-9)
        );
    }
    Ok(())
}

/// A mounted btrfs holding one image per size.
struct Pool {
    mount: PathBuf,
    images: Vec<PathBuf>,
}

impl Pool {
    fn make(work: &Path, sizes: &[u64]) -> Result<Self> {
        let biggest = sizes.iter().copied().max().unwrap_or(1);
        let total: u64 = sizes.iter().sum::<u64>() + biggest + 2;
        let file = work.join("pool.img");
        fs::File::create(&file)?.set_len(total * GIB)?;
        cmd::run(Command::new("mkfs.btrfs").arg("-q").arg(&file))?;
        let mount = work.join("mnt");
        fs::create_dir(&mount)?;
        cmd::run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(&mount),
        )?;
        let mut pool = Self {
            mount,
            images: Vec::new(),
        };
        for size in sizes {
            let image = pool.mount.join(format!("image-{size}g.raw"));
            eprintln!("bench --clone: writing a fully allocated {size} GiB image");
            if let Err(e) = write_image(&image, size * GIB) {
                pool.unmount();
                return Err(e);
            }
            pool.images.push(image);
        }
        Ok(pool)
    }

    fn unmount(&self) {
        if let Err(e) = cmd::run(Command::new("umount").arg(&self.mount)) {
            eprintln!("bench --clone: {e:#}");
        }
    }
}

/// Writes `len` bytes of a non-zero pattern (no holes, nothing a file
/// system could skip as zeros), then fsyncs.
fn write_image(path: &Path, len: u64) -> Result<()> {
    let block = vec![0xa5u8; 4 << 20];
    let mut file = fs::File::create(path)?;
    let mut written = 0;
    while written < len {
        file.write_all(&block)?;
        written += block.len() as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Seconds per size per method per round.
fn measure(pool: &Pool, sizes: &[u64], rounds: usize) -> Result<Vec<[Vec<f64>; 2]>> {
    let mut table = vec![[Vec::new(), Vec::new()]; sizes.len()];
    for round in 1..=rounds {
        for (i, image) in pool.images.iter().enumerate() {
            // Alternate which method goes first.
            let order: [usize; 2] = if round % 2 == 0 { [1, 0] } else { [0, 1] };
            for m in order {
                let (label, args) = METHODS[m];
                let clone = pool.mount.join("clone.raw");
                let start = Instant::now();
                cmd::run(Command::new("cp").args(args).arg(image).arg(&clone))?;
                cmd::run(Command::new("sync").arg(&clone))?;
                let seconds = start.elapsed().as_secs_f64();
                fs::remove_file(&clone)?;
                cmd::run(Command::new("sync").arg("-f").arg(&pool.mount))?;
                eprintln!(
                    "bench --clone: round {round}/{rounds}, {} GiB, {label}: {seconds:.3} s",
                    sizes[i]
                );
                table[i][m].push(seconds);
            }
        }
    }
    Ok(table)
}

struct Summary {
    median: f64,
    text: String,
}

fn summary(times: &[f64]) -> Summary {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let text = format!(
        "{median:.3} ({:.3}-{:.3})",
        sorted[0],
        sorted[sorted.len() - 1]
    );
    Summary { median, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_median_and_spread() {
        let s = summary(&[0.3, 0.1, 0.2]);
        assert_eq!(s.median, 0.2);
        assert_eq!(s.text, "0.200 (0.100-0.300)");
    }
}
