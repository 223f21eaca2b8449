//! The `[Storage]` section of `/etc/vmctl/vmctl.conf`:
//!
//! ```ini
//! [Storage]
//! Backend=directory        # or lvm-thin
//! Pool=vg0/thinpool        # lvm-thin only: VG/thin pool LV
//! ```

use std::path::Path;

use crate::config_file::{self, ConfigError};

/// The configuration key naming the backend.
pub const BACKEND_KEY: &str = "Backend";

/// The configuration key naming the LVM thin pool.
pub const POOL_KEY: &str = "Pool";

/// Which backend holds the volumes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// Raw files under the state directory (the default).
    #[default]
    Directory,
    /// An LVM thin pool.
    LvmThin {
        /// `VG/thinpool`.
        pool: String,
    },
}

/// The `[Storage]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageConfig {
    /// The backend.
    pub backend: Backend,
}

impl StorageConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match config_file::read(path)? {
            Some(text) => Self::parse(&text, path),
            None => Ok(Self::default()),
        }
    }

    /// Parses the `[Storage]` section of the INI-like text of `path`
    /// (other sections are skipped; an unknown key in `[Storage]` is an
    /// error, so a typo is not silently ignored).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut backend: Option<(usize, String)> = None;
        let mut pool: Option<String> = None;
        let error = |line: usize, message: String| ConfigError::at(path, line, message);
        for config_file::Entry { line, key, value } in
            config_file::section_entries(text, path, "Storage")?
        {
            match key {
                BACKEND_KEY => backend = Some((line, value.to_string())),
                POOL_KEY => {
                    check_pool(value)
                        .map_err(|m| error(line, format!("{POOL_KEY}={value}: {m}")))?;
                    pool = Some(value.to_string());
                }
                other => {
                    return Err(error(
                        line,
                        format!(
                        "unknown key {other:?} in [Storage] (expected {BACKEND_KEY} or {POOL_KEY})"
                    ),
                    ))
                }
            }
        }
        let backend = match backend {
            None => Backend::Directory,
            Some((_, b)) if b == "directory" => Backend::Directory,
            Some((line, b)) if b == "lvm-thin" => Backend::LvmThin {
                pool: pool.ok_or_else(|| {
                    error(
                        line,
                        format!("{BACKEND_KEY}=lvm-thin needs {POOL_KEY}=VG/THINPOOL"),
                    )
                })?,
            },
            Some((line, other)) => {
                return Err(error(
                    line,
                    format!(
                        "{BACKEND_KEY}={other}: unknown backend (expected directory or lvm-thin)"
                    ),
                ))
            }
        };
        Ok(Self { backend })
    }
}

/// `VG/LV` with LVM's name characters.
fn check_pool(value: &str) -> Result<(), String> {
    let (vg, lv) = value
        .split_once('/')
        .ok_or("expected VG/THINPOOL".to_string())?;
    for part in [vg, lv] {
        let ok = !part.is_empty()
            && !part.starts_with('-')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c));
        if !ok || part == "." || part == ".." {
            return Err(format!("{part:?} is not an LVM name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StorageConfig, String> {
        StorageConfig::parse(text, Path::new("/etc/vmctl/vmctl.conf")).map_err(|e| e.to_string())
    }

    #[test]
    fn backends() {
        assert_eq!(parse("").unwrap().backend, Backend::Directory);
        assert_eq!(
            parse("[Network]\nIPv4Subnet=x\n[Storage]\nBackend=directory\n")
                .unwrap()
                .backend,
            Backend::Directory
        );
        assert_eq!(
            parse("[Storage]\nBackend = lvm-thin\nPool=vg0/thin\n")
                .unwrap()
                .backend,
            Backend::LvmThin {
                pool: "vg0/thin".into()
            }
        );
    }

    #[test]
    fn errors_name_the_line_and_key() {
        assert_eq!(
            parse("[Storage]\nBackend=zfs\n").unwrap_err(),
            "/etc/vmctl/vmctl.conf:2: Backend=zfs: unknown backend (expected directory or lvm-thin)"
        );
        assert!(parse("[Storage]\nBackend=lvm-thin\n")
            .unwrap_err()
            .contains(":2: Backend=lvm-thin needs Pool=VG/THINPOOL"));
        assert!(parse("[Storage]\nPool=vg0\n")
            .unwrap_err()
            .contains("expected VG/THINPOOL"));
        assert!(parse("[Storage]\nPool=vg0/../x\n")
            .unwrap_err()
            .contains("Pool=vg0/../x"));
        assert!(parse("[Storage]\nBackned=directory\n")
            .unwrap_err()
            .contains("unknown key \"Backned\""));
    }
}
