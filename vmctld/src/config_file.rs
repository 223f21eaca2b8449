//! `/etc/vmctl/vmctl.conf`: one INI-like file (`[Section]` headers,
//! `Key=Value` lines, `#` and `;` comments) whose sections belong to
//! different parts of vmctld (`[Network]` to [`crate::addresses`],
//! `[Storage]` to [`crate::storage`], `[Quota]` to [`crate::quota`]).
//!
//! This module reads the file and splits it into the entries of one
//! section; each owner interprets its keys and rejects unknown ones, so a
//! typo is never silently ignored. Written by hand because the format is
//! systemd's unit-file subset and the whole parser is a dozen lines.

use std::{fs, io, path::Path};

/// A configuration file that cannot be used; the message names the file,
/// the line and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// The line number (from 1; 0 when the file could not be read).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `line` of `path`.
    pub fn at(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            line,
            message: message.into(),
        }
    }
}

/// One `Key=Value` line of a section (key and value trimmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The line number, from 1.
    pub line: usize,
    /// The key.
    pub key: &'a str,
    /// The value (may be empty).
    pub value: &'a str,
}

/// The text of `path`; `None` when the file does not exist (every section
/// then has its defaults).
pub fn read(path: &Path) -> Result<Option<String>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::at(path, 0, format!("cannot read: {e}"))),
    }
}

/// The entries of `[section]` in `text` (the contents of `path`), in
/// order. A malformed section header anywhere, or a line of `[section]`
/// that is not `Key=Value`, is an error; other sections' lines are not
/// looked at.
pub fn section_entries<'a>(
    text: &'a str,
    path: &Path,
    section: &str,
) -> Result<Vec<Entry<'a>>, ConfigError> {
    let mut current = "";
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            current = name.strip_suffix(']').ok_or_else(|| {
                ConfigError::at(path, i + 1, format!("{line:?} is not a [Section] header"))
            })?;
            continue;
        }
        if current != section {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ConfigError::at(path, i + 1, format!("{line:?} is not Key=Value")))?;
        entries.push(Entry {
            line: i + 1,
            key: key.trim(),
            value: value.trim(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# comment\n[Network]\nIPv4Subnet = 10.0.0.0/8\n\
                        ; other comment\n[Quota]\nMaxVMs=\nnot an entry\n[Network]\nX=1\n";

    #[test]
    fn entries_of_one_section_in_order_with_lines() {
        let path = Path::new("/etc/vmctl/vmctl.conf");
        let network = section_entries(TEXT, path, "Network").unwrap();
        assert_eq!(
            network,
            [
                Entry {
                    line: 3,
                    key: "IPv4Subnet",
                    value: "10.0.0.0/8"
                },
                Entry {
                    line: 9,
                    key: "X",
                    value: "1"
                }
            ]
        );
        assert!(section_entries(TEXT, path, "Storage").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let path = Path::new("/etc/vmctl/vmctl.conf");
        let e = section_entries(TEXT, path, "Quota").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/vmctl/vmctl.conf:7: \"not an entry\" is not Key=Value"
        );
        let e = section_entries("[Network\n", path, "Quota").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("[Section] header"), "{e}");
    }

    #[test]
    fn a_missing_file_is_none_and_an_unreadable_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(&dir.path().join("absent")).unwrap(), None);
        let e = read(dir.path()).unwrap_err();
        assert_eq!(e.line, 0);
        assert!(e.message.starts_with("cannot read"), "{e}");
    }
}
