//! The sizes a VM may have and the unit limits derived from them.
//!
//! Decisions (documented in `vmctl create --help` too):
//! - vCPUs: 1 to [`MAX_VCPUS`]. Not capped at the host's CPU count: like
//!   every hypervisor we allow overcommit, and the unit's CPU quota
//!   (`vcpus` x 1 s per second) bounds what the VM can take anyway.
//! - memory: [`MIN_MEMORY`] up to the host's `MemTotal`.
//! - disk: at least the image's `root.raw` size, at most [`MAX_DISK`].

use vmctl_api::sizes::{format_size, GIB, MIB, TIB};

use crate::ManagerError;

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;
/// The least memory a VM may have: a systemd guest needs about this much.
pub const MIN_MEMORY: u64 = 128 * MIB;
/// The largest root disk (a sparse file, so this bounds typos, not use).
pub const MAX_DISK: u64 = 16 * TIB;

/// Default vCPUs when `Create` gets none.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory when `Create` gets none.
pub const DEFAULT_MEMORY: u64 = GIB;
/// Default disk size when `Create` gets none (or the image size if larger).
pub const DEFAULT_DISK: u64 = 4 * GIB;

/// The unit properties of `vm@NAME.service` for a VM of this size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitLimits {
    /// `MemoryMax=` in bytes.
    pub memory_max: u64,
    /// `CPUQuotaPerSecUSec=` in microseconds.
    pub cpu_quota_per_sec_usec: u64,
    /// `TasksMax=`.
    pub tasks_max: u64,
}

impl UnitLimits {
    /// The limits for `vcpus` and `memory`:
    ///
    /// - `MemoryMax = memory + overhead`, overhead = 128 MiB (VMM binary,
    ///   device emulation, vhost-device-vsock, launcher) + memory / 16
    ///   (page tables, TCG translation cache growth), at most 512 MiB.
    /// - `CPUQuotaPerSecUSec = vcpus x 1 s`: the VM can use its vCPUs
    ///   fully and no more.
    /// - `TasksMax = 128 + 8 x vcpus`: QEMU runs a thread per vCPU plus a
    ///   pool of I/O worker threads (up to 64), and the launcher and the
    ///   vsock helper have a few each.
    pub fn for_vm(vcpus: u32, memory: u64) -> Self {
        let overhead = (128 * MIB + memory / 16).min(512 * MIB);
        Self {
            memory_max: memory.saturating_add(overhead),
            cpu_quota_per_sec_usec: u64::from(vcpus) * 1_000_000,
            tasks_max: 128 + 8 * u64::from(vcpus),
        }
    }
}

/// Checks `vcpus`.
pub fn check_vcpus(vcpus: u32) -> Result<(), ManagerError> {
    if (1..=MAX_VCPUS).contains(&vcpus) {
        Ok(())
    } else {
        Err(invalid(
            "vcpus",
            vcpus.to_string(),
            format!("{vcpus} vCPUs is outside 1 to {MAX_VCPUS}"),
        ))
    }
}

/// Checks `memory` against the minimum and the host's total memory
/// (`host_total`, `None` when unknown).
pub fn check_memory(memory: u64, host_total: Option<u64>) -> Result<(), ManagerError> {
    if memory < MIN_MEMORY {
        return Err(invalid(
            "memory",
            format_size(memory),
            format!(
                "memory {} is below the minimum of {}",
                format_size(memory),
                format_size(MIN_MEMORY)
            ),
        ));
    }
    if let Some(total) = host_total.filter(|total| memory > *total) {
        return Err(invalid(
            "memory",
            format_size(memory),
            format!(
                "memory {} exceeds this host's {}",
                format_size(memory),
                format_size(total)
            ),
        ));
    }
    Ok(())
}

/// Checks `disk` against the image's root disk size and [`MAX_DISK`].
pub fn check_disk(disk: u64, image_size: u64) -> Result<(), ManagerError> {
    if disk < image_size {
        return Err(invalid(
            "disk",
            format_size(disk),
            format!(
                "disk {} is smaller than the image's root disk ({})",
                format_size(disk),
                format_size(image_size)
            ),
        ));
    }
    if disk > MAX_DISK {
        return Err(invalid(
            "disk",
            format_size(disk),
            format!(
                "disk {} exceeds the limit of {}",
                format_size(disk),
                format_size(MAX_DISK)
            ),
        ));
    }
    Ok(())
}

/// The host's `MemTotal` from `/proc/meminfo`, `None` when unreadable.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn invalid(what: &str, value: String, reason: String) -> ManagerError {
    ManagerError::InvalidSize {
        what: what.into(),
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_stays_within_512_mib_of_memory() {
        for memory in [128 * MIB, GIB, 4 * GIB, 64 * GIB, TIB] {
            let max = UnitLimits::for_vm(1, memory).memory_max;
            assert!(max > memory && max <= memory + 512 * MIB, "{memory}: {max}");
        }
        assert_eq!(
            UnitLimits::for_vm(2, GIB),
            UnitLimits {
                memory_max: GIB + 192 * MIB,
                cpu_quota_per_sec_usec: 2_000_000,
                tasks_max: 144,
            }
        );
    }

    #[test]
    fn vcpus_range() {
        assert!(check_vcpus(1).is_ok() && check_vcpus(64).is_ok());
        assert!(check_vcpus(0).is_err() && check_vcpus(65).is_err());
    }

    #[test]
    fn memory_errors_name_sizes() {
        let e = check_memory(100 * TIB, Some(23 * GIB + 400 * MIB)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid memory: memory 100 TiB exceeds this host's 23.4 GiB"
        );
        assert!(check_memory(64 * MIB, None).is_err());
        assert!(check_memory(GIB, None).is_ok());
        assert!(check_memory(GIB, Some(2 * GIB)).is_ok());
    }

    #[test]
    fn disk_bounds() {
        assert!(check_disk(GIB, 2 * GIB).is_err());
        assert!(check_disk(2 * GIB, 2 * GIB).is_ok());
        assert!(check_disk(17 * TIB, GIB).is_err());
    }

    #[test]
    fn reads_mem_total() {
        assert_eq!(
            parse_mem_total("MemTotal:       24536812 kB\nMemFree: 1 kB\n"),
            Some(24536812 * 1024)
        );
        assert_eq!(parse_mem_total("nothing"), None);
    }
}
