//! Network configuration (`/etc/vmctl/vmctl.conf`, section `[Network]`)
//! and the allocation of each VM's addresses and MAC.
//!
//! Allocation is a pure function of the configuration and the addresses
//! already in use (read from the stored specs), called by `Create` under
//! the manager's lock, so two creates can never pick the same address.
//! Keeping it here, apart from the file store, lets it move into the
//! transactional store later unchanged.
//!
//! Addresses are the lowest free host numbers of the configured subnets:
//! host 1 is the bridge (the guests' gateway), guests get 2 and up; an
//! address is free again once its VM is removed. The MAC is derived from
//! the CID, which is unique on the host: `02:76:6d` (locally administered,
//! "vm") followed by the CID's low 24 bits.

use std::{
    collections::HashSet,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use vmctl_api::spec::VmNetwork;

use crate::{config_file, ManagerError};

/// Where the configuration is read from.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmctl/vmctl.conf";

/// The configuration key of the IPv4 subnet.
pub const IPV4_KEY: &str = "IPv4Subnet";

/// The configuration key of the IPv6 subnet.
pub const IPV6_KEY: &str = "IPv6Subnet";

/// The first three bytes of every VM's MAC address.
pub const MAC_PREFIX: [u8; 3] = [0x02, 0x76, 0x6d];

/// An IPv4 subnet: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet4 {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// The prefix length, 8 to 30.
    pub prefix: u8,
}

/// An IPv6 subnet: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet6 {
    /// The network address (host bits zero).
    pub network: Ipv6Addr,
    /// The prefix length, 16 to 126.
    pub prefix: u8,
}

impl fmt::Display for Subnet4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Splits `ADDR/PREFIX` and checks the prefix range and that no host bit
/// is set; `bits` is 32 or 128.
fn split_subnet<A: FromStr>(text: &str, range: (u8, u8), bits: u8) -> Result<(A, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not ADDRESS/PREFIX"))?;
    let addr = addr.parse::<A>().map_err(|_| {
        format!(
            "{addr:?} is not an IPv{} address",
            if bits == 32 { 4 } else { 6 }
        )
    })?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("prefix length {prefix:?} is not a number"))?;
    if prefix < range.0 || prefix > range.1 {
        return Err(format!(
            "prefix length {prefix} is out of range ({} to {})",
            range.0, range.1
        ));
    }
    Ok((addr, prefix))
}

impl FromStr for Subnet4 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix): (Ipv4Addr, u8) = split_subnet(text, (8, 30), 32)?;
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(format!(
                "{text} has host bits set; the subnet is {network}/{prefix}"
            ));
        }
        Ok(Self { network, prefix })
    }
}

impl FromStr for Subnet6 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix): (Ipv6Addr, u8) = split_subnet(text, (16, 126), 128)?;
        let mask = u128::MAX << (128 - prefix);
        let network = Ipv6Addr::from(u128::from(addr) & mask);
        if network != addr {
            return Err(format!(
                "{text} has host bits set; the subnet is {network}/{prefix}"
            ));
        }
        Ok(Self { network, prefix })
    }
}

impl Subnet4 {
    /// Host number `n` in this subnet.
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// The highest usable host number (below the broadcast address).
    fn last_host(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The host number of `addr`, if it lies in this subnet.
    fn host_number(&self, addr: Ipv4Addr) -> Option<u32> {
        let mask = u32::MAX << (32 - self.prefix);
        (u32::from(addr) & mask == u32::from(self.network))
            .then(|| u32::from(addr) - u32::from(self.network))
    }
}

impl Subnet6 {
    /// Host number `n` in this subnet.
    pub fn host(&self, n: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) + n)
    }

    fn last_host(&self) -> u128 {
        // The all-ones host is avoided too, like IPv4's broadcast.
        (1u128 << (128 - self.prefix)) - 2
    }

    fn host_number(&self, addr: Ipv6Addr) -> Option<u128> {
        let mask = u128::MAX << (128 - self.prefix);
        (u128::from(addr) & mask == u128::from(self.network))
            .then(|| u128::from(addr) - u128::from(self.network))
    }
}

/// The `[Network]` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `IPv4Subnet=`, default `10.77.0.0/16`.
    pub ipv4: Subnet4,
    /// `IPv6Subnet=`, default `fd77:766d:6374::/64`.
    pub ipv6: Subnet6,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ipv4: Subnet4 {
                network: Ipv4Addr::new(10, 77, 0, 0),
                prefix: 16,
            },
            ipv6: Subnet6 {
                network: Ipv6Addr::new(0xfd77, 0x766d, 0x6374, 0, 0, 0, 0, 0),
                prefix: 64,
            },
        }
    }
}

pub use crate::config_file::ConfigError;

impl NetworkConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match config_file::read(path)? {
            Some(text) => Self::parse(&text, path),
            None => Ok(Self::default()),
        }
    }

    /// Parses the INI-like text of `path`: `[Section]` headers, `Key=Value`
    /// lines, `#` and `;` comments. Only `[Network]` is read here; other
    /// sections belong to other parts of vmctl and are skipped. An unknown
    /// key in `[Network]` is an error, so a typo is not silently ignored.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for config_file::Entry { line, key, value } in
            config_file::section_entries(text, path, "Network")?
        {
            let error = |message: String| ConfigError::at(path, line, message);
            match key {
                IPV4_KEY => {
                    config.ipv4 = value
                        .parse()
                        .map_err(|e| error(format!("{IPV4_KEY}={value}: {e}")))?
                }
                IPV6_KEY => {
                    config.ipv6 = value
                        .parse()
                        .map_err(|e| error(format!("{IPV6_KEY}={value}: {e}")))?
                }
                other => {
                    return Err(error(format!(
                        "unknown key {other:?} in [Network] (expected {IPV4_KEY} or {IPV6_KEY})"
                    )))
                }
            }
        }
        Ok(config)
    }
}

/// The MAC address of the VM with vsock CID `cid`.
pub fn mac_for_cid(cid: u32) -> String {
    let [_, a, b, c] = cid.to_be_bytes();
    let [p, q, r] = MAC_PREFIX;
    format!("{p:02x}:{q:02x}:{r:02x}:{a:02x}:{b:02x}:{c:02x}")
}

/// The network of a new VM with vsock CID `cid`: the lowest free
/// addresses of `config`'s subnets given the networks in `used`.
/// `config_path` only names the file in the error when a subnet is full.
pub fn allocate<'a>(
    config: &NetworkConfig,
    config_path: &Path,
    used: impl IntoIterator<Item = &'a VmNetwork>,
    cid: u32,
) -> Result<VmNetwork, ManagerError> {
    let mut used4 = HashSet::new();
    let mut used6 = HashSet::new();
    for net in used {
        used4.extend(config.ipv4.host_number(net.ipv4));
        used6.extend(config.ipv6.host_number(net.ipv6));
    }
    let full = |subnet: String, key: &str| ManagerError::NoFreeAddress {
        subnet,
        setting: format!("{key}= in [Network] of {}", config_path.display()),
    };
    let n4 = (2..=config.ipv4.last_host())
        .find(|n| !used4.contains(n))
        .ok_or_else(|| full(config.ipv4.to_string(), IPV4_KEY))?;
    // At most used6.len() numbers are taken, so the search is short.
    let n6 = (2..=config.ipv6.last_host())
        .find(|n| !used6.contains(n))
        .ok_or_else(|| full(config.ipv6.to_string(), IPV6_KEY))?;
    Ok(VmNetwork {
        ipv4: config.ipv4.host(n4),
        ipv4_prefix: config.ipv4.prefix,
        ipv6: config.ipv6.host(n6),
        ipv6_prefix: config.ipv6.prefix,
        mac: mac_for_cid(cid),
        gateway4: config.ipv4.host(1),
        gateway6: config.ipv6.host(1),
    })
}

/// The configuration path used by a daemon given no `--config`.
pub fn default_config_path() -> PathBuf {
    PathBuf::from(DEFAULT_CONFIG_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("/etc/vmctl/vmctl.conf")
    }

    fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(text, path())
    }

    #[test]
    fn defaults_and_a_full_file() {
        assert_eq!(parse("").unwrap(), NetworkConfig::default());
        let c = parse(
            "# vmctl\n[Quota]\nVMs=3\n\n[Network]\nIPv4Subnet = 192.168.50.0/24\n; ula\nIPv6Subnet=fd00:1::/112\n",
        )
        .unwrap();
        assert_eq!(c.ipv4.to_string(), "192.168.50.0/24");
        assert_eq!(c.ipv6.to_string(), "fd00:1::/112");
        let missing = tempfile::tempdir().unwrap().path().join("vmctl.conf");
        assert_eq!(
            NetworkConfig::load(&missing).unwrap(),
            NetworkConfig::default()
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (text, expected) in [
            (
                "[Network]\nIPv4Subnet=10.77.0.0/33",
                "vmctl.conf:2: IPv4Subnet=10.77.0.0/33: prefix length 33 is out of range (8 to 30)",
            ),
            (
                "[Network]\nIPv4Subnet=10.77.0.5/16",
                "host bits set; the subnet is 10.77.0.0/16",
            ),
            ("[Network]\nIPv4Subnet=10.77.0.0", "is not ADDRESS/PREFIX"),
            ("[Network]\nIPv4Subnet=fd00::/64", "is not an IPv4 address"),
            (
                "[Network]\nIPv6Subnet=fd00::/x",
                "prefix length \"x\" is not a number",
            ),
            (
                "[Network]\nIPv6Subnet=fd00::/127",
                "out of range (16 to 126)",
            ),
            (
                "[Network]\nIPv4Subnett=10.0.0.0/8",
                "unknown key \"IPv4Subnett\"",
            ),
            ("[Network]\nIPv4Subnet", "is not Key=Value"),
            (
                "[Network\n",
                "vmctl.conf:1: \"[Network\" is not a [Section] header",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/vmctl/vmctl.conf:"), "{e}");
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn macs_come_from_the_cid() {
        assert_eq!(mac_for_cid(3), "02:76:6d:00:00:03");
        assert_eq!(mac_for_cid(0x123456), "02:76:6d:12:34:56");
    }

    #[test]
    fn lowest_free_and_reuse_after_remove() {
        let c = NetworkConfig::default();
        let a = allocate(&c, path(), [], 3).unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(a.ipv6, "fd77:766d:6374::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!((a.ipv4_prefix, a.ipv6_prefix), (16, 64));
        assert_eq!(a.gateway4, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(a.gateway6, "fd77:766d:6374::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.mac, "02:76:6d:00:00:03");
        let b = allocate(&c, path(), [&a], 4).unwrap();
        assert_eq!(b.ipv4, Ipv4Addr::new(10, 77, 0, 3));
        let d = allocate(&c, path(), [&a, &b], 5).unwrap();
        assert_eq!(d.ipv4, Ipv4Addr::new(10, 77, 0, 4));
        // a removed: its addresses are the lowest free again.
        let e = allocate(&c, path(), [&b, &d], 6).unwrap();
        assert_eq!((e.ipv4, e.ipv6), (a.ipv4, a.ipv6));
    }

    #[test]
    fn a_full_subnet_names_itself_and_the_setting() {
        let c = parse("[Network]\nIPv4Subnet=10.9.0.0/30").unwrap();
        // /30: .1 is the bridge, .2 the only guest, .3 broadcast.
        let a = allocate(&c, path(), [], 3).unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 9, 0, 2));
        let e = allocate(&c, path(), [&a], 4).unwrap_err();
        assert_eq!(
            e,
            ManagerError::NoFreeAddress {
                subnet: "10.9.0.0/30".into(),
                setting: "IPv4Subnet= in [Network] of /etc/vmctl/vmctl.conf".into(),
            }
        );
        assert!(e.to_string().contains("10.9.0.0/30"), "{e}");
    }

    #[test]
    fn addresses_outside_the_current_subnet_do_not_count() {
        let c = NetworkConfig::default();
        let mut old = allocate(&c, path(), [], 3).unwrap();
        old.ipv4 = Ipv4Addr::new(192, 168, 0, 2);
        let a = allocate(&c, path(), [&old], 4).unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(a.ipv6, "fd77:766d:6374::3".parse::<Ipv6Addr>().unwrap());
    }
}
