//! Where things are: the workspace, its target directory, build outputs.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo profile whose outputs are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cargo build` (the default: shares its artefacts with `cargo test`).
    Dev,
    /// `cargo build --release`.
    Release,
}

impl Profile {
    /// The directory under the target dir holding this profile's outputs.
    pub fn out_dir(self) -> PathBuf {
        target_dir().join(match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        })
    }

    /// Extra arguments for `cargo build`.
    pub fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Profile::Dev => &[],
            Profile::Release => &["--release"],
        }
    }
}

/// State of the development host (rootfs cache, working copy, pid, logs).
pub fn devhost_dir() -> PathBuf {
    target_dir().join("devhost")
}

/// Root of the caches that outlive a checkout (base root filesystems, guest
/// images and kernels, tools): `$VMCTL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vmctl`, else `~/.cache/vmctl`. Every entry under it is
/// keyed by a hash of its inputs, so a fresh clone reuses what an earlier one
/// built and CI caches this one directory.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("VMCTL_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return dir.join("vmctl");
    }
    set("HOME")
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/vmctl")
}

/// Removes the entries `<prefix><other key>` of `dir` that are not `keep`:
/// once a key changed, the old entry is dead weight.
pub fn remove_stale(dir: &Path, prefix: &str, keep: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && entry.path() != keep {
            eprintln!("xtask: removing stale {}", entry.path().display());
            if entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn cache_dir_precedence() {
        let all = [
            ("VMCTL_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_from(env(&all)), Path::new("/c"));
        assert_eq!(cache_dir_from(env(&all[1..])), Path::new("/x/vmctl"));
        assert_eq!(cache_dir_from(env(&all[2..])), Path::new("/h/.cache/vmctl"));
        let empty = [("VMCTL_CACHE_DIR", ""), ("HOME", "/h")];
        assert_eq!(cache_dir_from(env(&empty)), Path::new("/h/.cache/vmctl"));
    }

    #[test]
    fn stale_entries_of_one_kind_go() {
        let dir = std::env::temp_dir().join(format!("xtask-stale-{}", std::process::id()));
        for name in ["tree-old", "tree-new", "image-old"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        remove_stale(&dir, "tree-", &dir.join("tree-new")).unwrap();
        assert!(!dir.join("tree-old").exists());
        assert!(dir.join("tree-new").exists());
        assert!(dir.join("image-old").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
