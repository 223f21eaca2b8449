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
