//! Root disks: a VM's `root.raw` starts as a copy of its image's.
//!
//! The copy is a reflink (`FICLONE`: instant, copy-on-write, on btrfs and
//! XFS) when the file system can, else a sparse copy that copies only the
//! image's data extents (`SEEK_DATA`/`SEEK_HOLE`) and skips all-zero
//! blocks inside them, so a 4 GiB image with 600 MiB of data costs
//! 600 MiB. Then the file is extended to the VM's disk size (growing the
//! guest file system is the guest's business).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

use rustix::fs::SeekFrom as RawSeek;

/// How a disk was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// A copy-on-write clone (`FICLONE`).
    Reflink,
    /// A sparse copy of the data extents.
    Sparse,
}

/// Creates `dst` (which must not exist, mode 0600) as a copy of `src`,
/// `size` bytes long (at least `src`'s length). On error `dst` may exist
/// partially: the caller removes it.
pub fn copy_disk(src: &Path, dst: &Path, size: u64) -> io::Result<CopyMethod> {
    copy_disk_from(File::open(src)?, dst, size)
}

/// [`copy_disk`] from a file already open (one a client sent: vmctld never
/// opens a path on a caller's behalf).
pub fn copy_disk_from(mut input: File, dst: &Path, size: u64) -> io::Result<CopyMethod> {
    let len = input.metadata()?.len();
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let method = match rustix::fs::ioctl_ficlone(&output, &input) {
        Ok(()) => CopyMethod::Reflink,
        Err(e) => {
            tracing::debug!(
                "reflink to {} not possible ({e}), copying sparsely",
                dst.display()
            );
            sparse_copy(&mut input, &mut output, len)?;
            CopyMethod::Sparse
        }
    };
    output.set_len(size.max(len))?;
    output.sync_all()?;
    Ok(method)
}

/// Copies the data extents of `input` (of length `len`) into the empty
/// `output`, leaving holes where `input` has holes or zero blocks.
fn sparse_copy(input: &mut File, output: &mut File, len: u64) -> io::Result<()> {
    const BLOCK: usize = 1 << 20;
    output.set_len(len)?;
    let mut buf = vec![0u8; BLOCK];
    let mut offset = 0;
    while offset < len {
        let data = match rustix::fs::seek(&*input, RawSeek::Data(offset)) {
            Ok(data) => data,
            // ENXIO: no data after `offset`, the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // File systems without SEEK_DATA: treat everything as data.
            Err(rustix::io::Errno::INVAL) => offset,
            Err(e) => return Err(e.into()),
        };
        let hole = match rustix::fs::seek(&*input, RawSeek::Hole(data)) {
            Ok(hole) => hole.min(len),
            Err(_) => len,
        };
        input.seek(SeekFrom::Start(data))?;
        let mut at = data;
        while at < hole {
            let want = usize::try_from((hole - at).min(BLOCK as u64)).unwrap_or(BLOCK);
            let chunk = &mut buf[..want];
            input.read_exact(chunk)?;
            if chunk.iter().any(|b| *b != 0) {
                output.write_all_at(chunk, at)?;
            }
            at += want as u64;
        }
        offset = hole;
    }
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_sparsely_and_extends() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("root.raw");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.write_all_at(&[0u8; 8192], 1 << 20).unwrap();
        f.write_all_at(b"world", 40 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("copy.raw");
        copy_disk(&src, &dst, 128 << 20).unwrap();
        let copy = std::fs::read(&dst).unwrap();
        assert_eq!(copy.len(), 128 << 20);
        assert_eq!(&copy[..5], b"hello");
        assert_eq!(&copy[40 << 20..(40 << 20) + 5], b"world");
        assert!(copy[5..40 << 20].iter().all(|b| *b == 0));
        // Two written blocks, not 64 MiB (st_blocks counts 512-byte units).
        let blocks = std::fs::metadata(&dst).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "not sparse: {blocks} blocks");
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a");
        std::fs::write(&src, b"x").unwrap();
        let dst = dir.path().join("b");
        std::fs::write(&dst, b"y").unwrap();
        assert!(copy_disk(&src, &dst, 1).is_err());
        assert_eq!(std::fs::read(&dst).unwrap(), b"y");
    }
}
