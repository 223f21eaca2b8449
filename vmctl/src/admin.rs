//! `vmctl quota` and `vmctl doctor`: quotas and the store's health.

use std::path::Path;

use anyhow::bail;
use serde_json::{json, Value};
use vmctl_api::{
    sizes::format_size_short,
    types::{DoctorReply, Quota, QuotaReply},
};

use crate::{client, method};

/// The limits `vmctl quota set` gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// `--vms`.
    pub vms: Option<u64>,
    /// `--vcpus`.
    pub vcpus: Option<u64>,
    /// `--memory`.
    pub memory: Option<u64>,
    /// `--disk`.
    pub disk: Option<u64>,
}

/// `vmctl quota show [USER]`.
pub async fn show(address: &Path, user: Option<&str>, json: bool) -> anyhow::Result<()> {
    let params = match user {
        Some(user) => Some(json!({ "uid": uid_of(user)? })),
        None => None,
    };
    let mut client = client::connect(address).await?;
    let reply: QuotaReply = client.call(&method("GetQuota"), params).await?;
    print_quota(&reply.quota, json)
}

/// `vmctl quota set USER ...`: replaces USER's override (no limit given:
/// USER is back on the defaults).
pub async fn set(
    address: &Path,
    user: &str,
    limits: &QuotaLimits,
    json: bool,
) -> anyhow::Result<()> {
    let params = json!({
        "uid": uid_of(user)?,
        "max_vms": limits.vms,
        "max_vcpus": limits.vcpus,
        "max_memory_bytes": limits.memory,
        "max_disk_bytes": limits.disk,
    });
    let mut client = client::connect(address).await?;
    let reply: QuotaReply = client.call(&method("SetQuota"), Some(params)).await?;
    print_quota(&reply.quota, json)
}

fn print_quota(quota: &Quota, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(quota)?);
    } else {
        print!("{}", quota_text(quota));
    }
    Ok(())
}

/// The quota as a table: resource, used, limit.
pub fn quota_text(q: &Quota) -> String {
    let limit = |v: Option<u64>, size: bool| match v {
        None => "unlimited".to_string(),
        Some(v) if size => format_size_short(v),
        Some(v) => v.to_string(),
    };
    let mut out = format!(
        "User {} ({}):\n{:<8} {:>10} {:>10}\n",
        crate::users::display_name(q.uid),
        if q.overridden { "override" } else { "defaults" },
        "RESOURCE",
        "USED",
        "LIMIT"
    );
    for (name, used, max) in [
        ("vms", q.vms.to_string(), limit(q.max_vms, false)),
        ("vcpus", q.vcpus.to_string(), limit(q.max_vcpus, false)),
        (
            "memory",
            format_size_short(q.memory_bytes),
            limit(q.max_memory_bytes, true),
        ),
        (
            "disk",
            format_size_short(q.disk_bytes),
            limit(q.max_disk_bytes, true),
        ),
    ] {
        out.push_str(&format!("{name:<8} {used:>10} {max:>10}\n"));
    }
    out
}

/// `vmctl doctor [--repair] [--json]`; exits 1 when something is left
/// unrepaired.
pub async fn doctor(address: &Path, repair: bool, json: bool) -> anyhow::Result<u8> {
    let mut client = client::connect(address).await?;
    let reply: DoctorReply = client
        .call(&method("Doctor"), Some(json!({ "repair": repair })))
        .await?;
    if json {
        let value: Value = serde_json::to_value(&reply)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if reply.findings.is_empty() {
        println!("Store and reality agree.");
    } else {
        for f in &reply.findings {
            let what = [f.vm.as_deref(), f.path.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            let done = if f.repaired { "repaired" } else { "found" };
            println!("{done:<8} {:<20} {what}: {}", f.kind, f.message);
        }
        if !repair {
            println!("(run vmctl doctor --repair to fix what can be fixed)");
        }
    }
    Ok(u8::from(reply.findings.iter().any(|f| !f.repaired)))
}

/// The uid of `user`: a user name, or a uid in decimal.
fn uid_of(user: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    if user.contains('\0') {
        bail!("a user name cannot contain NUL");
    }
    match crate::users::uid(user) {
        Some(uid) => Ok(uid),
        None => bail!("no user named {user:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_table() {
        let q = Quota {
            uid: 0,
            overridden: false,
            max_vms: Some(2),
            max_memory_bytes: Some(4 << 30),
            vms: 1,
            vcpus: 2,
            memory_bytes: 1 << 30,
            disk_bytes: 4 << 30,
            ..Default::default()
        };
        assert_eq!(
            quota_text(&q),
            "User root (defaults):\nRESOURCE       USED      LIMIT\n\
             vms               1          2\n\
             vcpus             2  unlimited\n\
             memory           1G         4G\n\
             disk             4G  unlimited\n"
        );
    }

    #[test]
    fn users_by_name_or_number() {
        assert_eq!(uid_of("root").unwrap(), 0);
        assert_eq!(uid_of("1234").unwrap(), 1234);
        assert!(uid_of("no-such-user-here").is_err());
    }
}
