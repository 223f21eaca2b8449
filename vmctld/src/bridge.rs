//! The host side of the VM bridge `vmbr0` follows `/etc/vmctl/vmctl.conf`.
//!
//! systemd-networkd owns the bridge: the shipped
//! `/usr/lib/systemd/network/vmctl-vmbr0.network` gives it the gateway
//! addresses of the default subnets. When `[Network]` names other subnets,
//! vmctld writes a drop-in that replaces those addresses
//! (`/run/systemd/network/vmctl-vmbr0.network.d/50-vmctl-subnets.conf`)
//! and asks networkd to reload over D-Bus (`org.freedesktop.network1`,
//! `Manager.Reload`); with the default subnets the drop-in is removed
//! again. An administrator's own files under `/etc/systemd/network/` still
//! win over both, as networkd's precedence rules say.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::addresses::NetworkConfig;

/// Where networkd reads runtime drop-ins for the shipped bridge file.
pub const DEFAULT_DROPIN_DIR: &str = "/run/systemd/network/vmctl-vmbr0.network.d";

/// The drop-in's file name inside [`DEFAULT_DROPIN_DIR`].
pub const DROPIN_NAME: &str = "50-vmctl-subnets.conf";

/// The drop-in that gives the bridge the gateway (host 1) addresses of
/// `config`'s subnets, or `None` when they are the shipped defaults.
pub fn dropin(config: &NetworkConfig) -> Option<String> {
    if *config == NetworkConfig::default() {
        return None;
    }
    Some(format!(
        "# Written by vmctld from /etc/vmctl/vmctl.conf ([Network]); do not edit.\n\
         [Network]\n\
         # An empty Address= drops the shipped defaults.\n\
         Address=\n\
         Address={}/{}\n\
         Address={}/{}\n",
        config.ipv4.host(1),
        config.ipv4.prefix,
        config.ipv6.host(1),
        config.ipv6.prefix,
    ))
}

/// Makes the drop-in in `dir` match `config`; `Ok(true)` when the file
/// changed (so networkd must reload). Written to a temporary file and
/// renamed: networkd never reads half a file.
pub fn write_dropin(dir: &Path, config: &NetworkConfig) -> io::Result<bool> {
    let path = dir.join(DROPIN_NAME);
    let current = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let wanted = dropin(config);
    if current == wanted {
        return Ok(false);
    }
    match wanted {
        None => {
            fs::remove_file(&path)?;
            // Leave no empty directory behind; another file in it stays.
            let _ = fs::remove_dir(dir);
        }
        Some(text) => {
            // networkd runs as systemd-network: it must be able to read
            // what vmctld (UMask=0077) writes, so the modes are set, not
            // left to the umask.
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
            let tmp: PathBuf = dir.join(format!(".{DROPIN_NAME}.tmp"));
            let mut file = fs::File::create(&tmp)?;
            file.set_permissions(fs::Permissions::from_mode(0o644))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
        }
    }
    Ok(true)
}

/// Asks systemd-networkd to re-read its files (`networkctl reload`, over
/// D-Bus).
pub async fn reload_networkd(conn: &zbus::Connection) -> zbus::Result<()> {
    conn.call_method(
        Some("org.freedesktop.network1"),
        "/org/freedesktop/network1",
        Some("org.freedesktop.network1.Manager"),
        "Reload",
        &(),
    )
    .await
    .map(|_| ())
}

/// Brings the bridge's drop-in in line with `config` and reloads networkd
/// when it changed. Problems are logged, not fatal: VMs on the default
/// subnets do not need any of this, and the next start tries again.
pub async fn apply(dir: &Path, config: &NetworkConfig, conn: Option<&zbus::Connection>) {
    match write_dropin(dir, config) {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!(
                "bridge vmbr0: subnets {} and {} ({})",
                config.ipv4,
                config.ipv6,
                dir.join(DROPIN_NAME).display()
            );
            match conn {
                Some(conn) => {
                    if let Err(e) = reload_networkd(conn).await {
                        tracing::warn!(
                            "bridge vmbr0: cannot ask systemd-networkd to reload ({e}); \
                             run `networkctl reload` for the new subnets to apply"
                        );
                    }
                }
                None => tracing::warn!(
                    "bridge vmbr0: no system bus; run `networkctl reload` for the new subnets to apply"
                ),
            }
        }
        Err(e) => tracing::warn!(
            "bridge vmbr0: cannot write {}: {e}; the bridge keeps its current addresses",
            dir.join(DROPIN_NAME).display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom() -> NetworkConfig {
        NetworkConfig::parse(
            "[Network]\nIPv4Subnet=10.78.0.0/24\nIPv6Subnet=fd00:1:2:3::/64\n",
            Path::new("test.conf"),
        )
        .unwrap()
    }

    #[test]
    fn defaults_need_no_dropin() {
        assert_eq!(dropin(&NetworkConfig::default()), None);
    }

    #[test]
    fn other_subnets_replace_the_shipped_addresses() {
        let text = dropin(&custom()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Address=")).collect();
        assert_eq!(
            lines,
            [
                "Address=",
                "Address=10.78.0.1/24",
                "Address=fd00:1:2:3::1/64"
            ]
        );
    }

    #[test]
    fn writes_once_and_removes_when_back_to_defaults() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("vmctl-vmbr0.network.d");
        assert!(!write_dropin(&dir, &NetworkConfig::default()).unwrap());
        assert!(!dir.exists());
        assert!(write_dropin(&dir, &custom()).unwrap());
        assert!(
            !write_dropin(&dir, &custom()).unwrap(),
            "unchanged: no reload"
        );
        let written = fs::read_to_string(dir.join(DROPIN_NAME)).unwrap();
        assert!(written.contains("Address=10.78.0.1/24"));
        // The modes systemd-network needs (that they survive vmctld's
        // UMask=0077 is shown by the e2e test configured_subnets_*).
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&dir.join(DROPIN_NAME)), 0o644);
        assert!(write_dropin(&dir, &NetworkConfig::default()).unwrap());
        assert!(!dir.exists(), "the drop-in and its directory are gone");
    }
}
