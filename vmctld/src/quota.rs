//! Quotas: how many VMs, vCPUs, bytes of memory and of disk one user's VMs
//! may hold together.
//!
//! Defaults come from `[Quota]` in `/etc/vmctl/vmctl.conf` (`MaxVMs=`,
//! `MaxVCPUs=`, `MaxMemory=`, `MaxDisk=`; unset or `infinity`: no limit);
//! `vmctl quota set` stores per-user overrides in the store. Root is exempt
//! unless an override is set for uid 0. The check runs inside the store's
//! write transaction that inserts the VM (see
//! [`crate::store::Store::insert_creating`]), so concurrent creates cannot
//! together exceed a limit.

use std::path::Path;

use vmctl_api::{sizes::parse_size, spec::VmSpec, types::Quota};

use crate::{
    authz::Action,
    config_file::{self, ConfigError},
    store::{QuotaOverride, VolumeRow},
    Caller, Manager, ManagerError,
};

/// The limits in force for one user (`None`: unlimited).
pub type Limits = QuotaOverride;

/// What a user's VMs hold, or what one create asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of VMs.
    pub vms: u64,
    /// vCPUs.
    pub vcpus: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Disk in bytes.
    pub disk: u64,
}

impl Usage {
    /// What `uid` holds: its VMs among `vms` and its data volumes among
    /// `volumes` (attached or kept: a kept volume still takes space).
    pub fn of(uid: u32, vms: &[VmSpec], volumes: &[VolumeRow]) -> Self {
        let volume_bytes = volumes
            .iter()
            .filter(|v| v.owner_uid == uid)
            .fold(0u64, |sum, v| sum.saturating_add(v.size));
        vms.iter()
            .filter(|vm| vm.owner_uid == uid)
            .fold(Self::default(), |u, vm| u.plus(&Self::one(vm)))
            .plus(&Self::disk(volume_bytes))
    }

    /// `bytes` of disk and nothing else (a data volume, or growth).
    pub fn disk(bytes: u64) -> Self {
        Self {
            disk: bytes,
            ..Self::default()
        }
    }

    /// What one VM holds.
    pub fn one(vm: &VmSpec) -> Self {
        Self {
            vms: 1,
            vcpus: vm.vcpus.into(),
            memory: vm.memory_bytes,
            disk: vm.disk_bytes,
        }
    }

    fn plus(&self, other: &Self) -> Self {
        Self {
            vms: self.vms.saturating_add(other.vms),
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory: self.memory.saturating_add(other.memory),
            disk: self.disk.saturating_add(other.disk),
        }
    }
}

/// The limits of `uid`: its override where set, the `defaults` elsewhere.
/// Root has no limit that is not set explicitly for uid 0.
pub fn effective(uid: u32, defaults: &Limits, over: Option<&QuotaOverride>) -> Limits {
    let over = over.copied().unwrap_or_default();
    if uid == 0 {
        return over;
    }
    Limits {
        vms: over.vms.or(defaults.vms),
        vcpus: over.vcpus.or(defaults.vcpus),
        memory: over.memory.or(defaults.memory),
        disk: over.disk.or(defaults.disk),
    }
}

/// Whether `request` fits beside `usage` within `limits`; the error names
/// the first resource that would be exceeded, its limit and the total the
/// user would then hold.
pub fn check(limits: &Limits, usage: &Usage, request: &Usage) -> Result<(), ManagerError> {
    let after = usage.plus(request);
    for (resource, limit, total) in [
        ("vms", limits.vms, after.vms),
        ("vcpus", limits.vcpus, after.vcpus),
        ("memory_bytes", limits.memory, after.memory),
        ("disk_bytes", limits.disk, after.disk),
    ] {
        if let Some(limit) = limit {
            if total > limit {
                return Err(ManagerError::QuotaExceeded {
                    resource: resource.into(),
                    limit: saturating_i64(limit),
                    requested: saturating_i64(total),
                });
            }
        }
    }
    Ok(())
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads the defaults from `[Quota]` of `path`; a missing file has none.
pub fn load_defaults(path: &Path) -> Result<Limits, ConfigError> {
    match config_file::read(path)? {
        Some(text) => parse_defaults(&text, path),
        None => Ok(Limits::default()),
    }
}

/// Parses `[Quota]` of the configuration text (other sections are skipped;
/// an unknown key in `[Quota]` is an error).
pub fn parse_defaults(text: &str, path: &Path) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    for config_file::Entry { line, key, value } in
        config_file::section_entries(text, path, "Quota")?
    {
        let error = |message: String| ConfigError::at(path, line, message);
        let unlimited = value.is_empty() || value.eq_ignore_ascii_case("infinity");
        let count = || {
            value
                .parse::<u64>()
                .map_err(|_| error(format!("{key}={value}: not a number (or \"infinity\")")))
        };
        let size = || parse_size(key, value).map_err(|e| error(e.to_string()));
        let slot = match key {
            "MaxVMs" => &mut limits.vms,
            "MaxVCPUs" => &mut limits.vcpus,
            "MaxMemory" => &mut limits.memory,
            "MaxDisk" => &mut limits.disk,
            other => {
                return Err(error(format!(
                    "unknown key {other:?} in [Quota] (expected MaxVMs, MaxVCPUs, MaxMemory or MaxDisk)"
                )))
            }
        };
        *slot = if unlimited {
            None
        } else if matches!(key, "MaxMemory" | "MaxDisk") {
            Some(size()?)
        } else {
            Some(count()?)
        };
    }
    Ok(limits)
}

impl Manager {
    /// The quota and usage of `uid` (default: the caller). Asking about
    /// another user needs the admin action.
    pub async fn get_quota(
        &self,
        caller: &Caller,
        uid: Option<u32>,
    ) -> Result<Quota, ManagerError> {
        let uid = uid.unwrap_or(caller.uid);
        if uid != caller.uid {
            self.authorize(caller, Action::Admin).await?;
        }
        self.quota_of(uid)
    }

    /// Sets the quota override of `uid` (admin only); an override without
    /// limits removes it.
    pub async fn set_quota(
        &self,
        caller: &Caller,
        uid: u32,
        over: QuotaOverride,
    ) -> Result<Quota, ManagerError> {
        self.authorize(caller, Action::Admin).await?;
        self.registry().store().set_quota(uid, &over)?;
        tracing::info!("quota of uid {uid} set to {over:?} by uid {}", caller.uid);
        self.quota_of(uid)
    }

    fn quota_of(&self, uid: u32) -> Result<Quota, ManagerError> {
        let defaults = load_defaults(self.config_path())
            .map_err(|e| ManagerError::internal(format!("bad configuration: {e}")))?;
        let over = self.registry().store().quota(uid)?;
        let limits = effective(uid, &defaults, over.as_ref());
        let vms: Vec<VmSpec> = self
            .registry()
            .store()
            .vms()?
            .into_iter()
            .map(|row| row.spec)
            .collect();
        let volumes = self.registry().store().volumes()?;
        let usage = Usage::of(uid, &vms, &volumes);
        Ok(Quota {
            uid,
            overridden: over.is_some(),
            max_vms: limits.vms,
            max_vcpus: limits.vcpus,
            max_memory_bytes: limits.memory,
            max_disk_bytes: limits.disk,
            vms: usage.vms,
            vcpus: usage.vcpus,
            memory_bytes: usage.memory,
            disk_bytes: usage.disk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::spec;
    use vmctl_api::sizes::GIB;

    fn path() -> &'static Path {
        Path::new("/etc/vmctl/vmctl.conf")
    }

    #[test]
    fn parses_the_quota_section_only() {
        let text = "[Network]\nIPv4Subnet=10.0.0.0/8\n[Quota]\nMaxVMs=2\nMaxVCPUs = 8\n\
                    MaxMemory=16G\nMaxDisk=infinity\n";
        let l = parse_defaults(text, path()).unwrap();
        assert_eq!(
            l,
            Limits {
                vms: Some(2),
                vcpus: Some(8),
                memory: Some(16 * GIB),
                disk: None
            }
        );
        assert_eq!(parse_defaults("", path()).unwrap(), Limits::default());
        for (text, expected) in [
            ("[Quota]\nMaxVM=2", "vmctl.conf:2: unknown key \"MaxVM\""),
            ("[Quota]\nMaxVMs=two", "MaxVMs=two: not a number"),
            ("[Quota]\nMaxMemory=lots", "invalid MaxMemory size \"lots\""),
            ("[Quota]\nMaxVMs", "is not Key=Value"),
        ] {
            let e = parse_defaults(text, path()).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn overrides_win_and_root_is_exempt_unless_set() {
        let defaults = Limits {
            vms: Some(2),
            vcpus: Some(4),
            ..Default::default()
        };
        let over = QuotaOverride {
            vms: Some(5),
            ..Default::default()
        };
        assert_eq!(effective(1000, &defaults, None), defaults);
        let l = effective(1000, &defaults, Some(&over));
        assert_eq!((l.vms, l.vcpus), (Some(5), Some(4)));
        assert_eq!(effective(0, &defaults, None), Limits::default());
        assert_eq!(effective(0, &defaults, Some(&over)), over);
    }

    #[test]
    fn usage_counts_only_the_owner() {
        let vms = [spec("a", 1000), spec("b", 1001), spec("c", 1000)];
        let volume = |name: &str, owner_uid, vm: Option<&str>| VolumeRow {
            name: name.into(),
            owner_uid,
            size: GIB,
            vm: vm.map(str::to_string),
            created: 0,
            state: crate::store::VolumeState::Ready,
        };
        let volumes = [
            volume("a", 1000, Some("a")),
            volume("kept", 1000, None),
            volume("b", 1001, Some("b")),
        ];
        let u = Usage::of(1000, &vms, &volumes);
        assert_eq!(
            (u.vms, u.vcpus, u.memory, u.disk),
            (2, 4, 2 * GIB, 22 * GIB)
        );
    }

    #[test]
    fn check_names_resource_limit_and_total() {
        let limits = Limits {
            vms: Some(2),
            memory: Some(3 * GIB),
            ..Default::default()
        };
        let one = Usage {
            vms: 1,
            vcpus: 1,
            memory: GIB,
            disk: GIB,
        };
        assert!(check(&limits, &Usage::default(), &one).is_ok());
        assert!(check(&limits, &one, &one).is_ok(), "exactly at the limit");
        let two = one.plus(&one);
        assert_eq!(
            check(&limits, &two, &one).unwrap_err(),
            ManagerError::QuotaExceeded {
                resource: "vms".into(),
                limit: 2,
                requested: 3
            }
        );
        let big = Usage {
            memory: 3 * GIB,
            ..one
        };
        assert_eq!(
            check(&limits, &one, &big).unwrap_err(),
            ManagerError::QuotaExceeded {
                resource: "memory_bytes".into(),
                limit: (3 * GIB) as i64,
                requested: (4 * GIB) as i64
            }
        );
        // No limits: nothing is too much.
        let huge = Usage {
            vms: u64::MAX,
            vcpus: u64::MAX,
            memory: u64::MAX,
            disk: u64::MAX,
        };
        assert!(check(&Limits::default(), &huge, &huge).is_ok());
    }
}
