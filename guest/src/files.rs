//! Writing a file into a directory that someone else may also write to,
//! without being steered by what they planted there.
//!
//! Both ends of `vmctl cp` run as root and write into directories that an
//! untrusted party may control: the host writes files pulled out of a guest
//! anywhere its caller says (`/tmp` included), and the agent writes pushed
//! files into guest directories where guest users may write. So a
//! [`NewFile`]:
//!
//! - opens the target's parent directory once and does everything else
//!   relative to that descriptor (`openat`, `fchmod`, `renameat`);
//! - writes a temporary file with a random name created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`: a symlink or file planted under that name
//!   makes the create fail (it is retried under another name), never
//!   followed or reused;
//! - keeps the file at mode 0600 until it is complete, then sets the final
//!   mode on the open descriptor;
//! - renames it over the target name: whatever was there (a file, a
//!   symlink, a hard link to something else) is replaced as a directory
//!   entry, never written through;
//! - removes the temporary file when it is dropped before
//!   [`NewFile::commit`], so a failed transfer leaves nothing behind.

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io::{Error, ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A file being written next to its final name; see the module docs.
pub struct NewFile {
    dir: OwnedFd,
    temp_name: OsString,
    name: OsString,
    target: PathBuf,
    file: tokio::fs::File,
    committed: bool,
}

impl NewFile {
    /// Starts writing `target`; `tag` goes into the temporary file's name
    /// (`.TAG-<random hex>`) so that a leftover after a crash says what made
    /// it.
    pub fn create(target: &Path, tag: &str) -> std::io::Result<NewFile> {
        Self::create_with(target, || {
            Ok(OsString::from(format!(".{tag}-{}", random_hex()?)))
        })
    }

    /// [`NewFile::create`] with the temporary names drawn from `next_name`.
    fn create_with(
        target: &Path,
        mut next_name: impl FnMut() -> std::io::Result<OsString>,
    ) -> std::io::Result<NewFile> {
        let name = target
            .file_name()
            .filter(|_| !ends_with_slash(target))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("{} does not name a file", target.display()),
                )
            })?
            .to_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = nix::fcntl::open(
            parent,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| with_context(e, format!("cannot open directory {}", parent.display())))?;
        let mut attempts = 0;
        let (temp_name, fd) = loop {
            let temp_name = next_name()?;
            match openat(
                &dir,
                temp_name.as_os_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break (temp_name, fd),
                // Someone planted this name (or we were unlucky): try another.
                Err(nix::errno::Errno::EEXIST) if attempts < 16 => attempts += 1,
                Err(e) => {
                    return Err(with_context(
                        e,
                        format!("cannot create a file in {}", parent.display()),
                    ))
                }
            }
        };
        Ok(NewFile {
            dir,
            temp_name,
            name,
            target: target.to_owned(),
            file: tokio::fs::File::from_std(std::fs::File::from(fd)),
            committed: false,
        })
    }

    /// The open temporary file, to write the content into.
    pub fn file(&mut self) -> &mut tokio::fs::File {
        &mut self.file
    }

    /// The temporary file's name in the target's directory.
    pub fn temp_name(&self) -> &OsStr {
        &self.temp_name
    }

    /// Flushes the content to disk, sets `mode` (permission bits, applied
    /// as given: mask them first) and renames the file over the target.
    pub async fn commit(mut self, mode: u32) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await?;
        fchmod(&self.file, Mode::from_bits_truncate(mode as libc::mode_t))?;
        renameat(
            &self.dir,
            self.temp_name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(|e| {
            let what = format!("cannot replace {}", self.target.display());
            if e == nix::errno::Errno::EISDIR {
                Error::new(
                    ErrorKind::IsADirectory,
                    format!("{what}: it is a directory; name the target file in full"),
                )
            } else {
                with_context(e, what)
            }
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(
                &self.dir,
                self.temp_name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// `errno` as an I/O error of the same kind whose message says what failed.
fn with_context(errno: nix::errno::Errno, what: String) -> Error {
    Error::new(Error::from(errno).kind(), format!("{what}: {errno}"))
}

fn ends_with_slash(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().ends_with(b"/")
}

/// 64 random bits as hex: a name nobody can plant in advance.
fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use tokio::io::AsyncWriteExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn writes_replace_a_planted_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("out");
        symlink(&victim, &target).unwrap();

        let mut file = NewFile::create(&target, "test").unwrap();
        file.file().write_all(b"new").await.unwrap();
        file.commit(0o640).await.unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.is_file(), "the link itself is replaced by a file");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["out", "victim"]);
    }

    #[tokio::test]
    async fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        symlink(&victim, dir.path().join(".planted")).unwrap();
        let mut tries = vec![".fresh", ".planted"];
        let mut file =
            NewFile::create_with(&dir.path().join("out"), || Ok(tries.pop().unwrap().into()))
                .unwrap();
        assert_eq!(file.temp_name(), ".fresh");
        file.file().write_all(b"new").await.unwrap();
        file.commit(0o644).await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"new");
        assert_eq!(names(dir.path()), [".planted", "out", "victim"]);
    }

    #[tokio::test]
    async fn the_file_is_private_until_committed_and_gone_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let mut file = NewFile::create(&target, "test").unwrap();
        file.file().write_all(b"half").await.unwrap();
        let temp = dir.path().join(file.temp_name());
        let meta = std::fs::symlink_metadata(&temp).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        drop(file);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[tokio::test]
    async fn a_directory_target_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/keep"), b"x").unwrap();
        let file = NewFile::create(&dir.path().join("sub"), "test").unwrap();
        let err = file.commit(0o644).await.unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        assert_eq!(names(dir.path()), ["sub"]);
        assert!(NewFile::create(Path::new("/tmp/dir/"), "test").is_err());
    }
}
