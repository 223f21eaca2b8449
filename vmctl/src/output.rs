//! How results are shown: tables for people, JSON for programs.

use vmctl_api::VmDetails;

pub use vmctl_api::render::{vm_json, vm_table};

/// What `vmctl create` says about the new VM.
pub fn created(vm: &VmDetails) -> String {
    let network = match (&vm.ipv4, &vm.ipv6) {
        (Some(v4), Some(v6)) => format!("{}.vm, {v4}, {v6}", vm.name),
        _ => "none".to_string(),
    };
    let ssh = match (&vm.ipv4, &vm.ssh_user) {
        (Some(_), Some(user)) if !vm.ssh_authorized_keys.is_empty() => {
            format!(", then: ssh {user}@{}.vm", vm.name)
        }
        _ => String::new(),
    };
    format!(
        "Created VM {} ({}): {} vCPU{}, {} memory, {} disk from image {}.\n\
         Network: {network}\n\
         Start it with: vmctl start {} (or systemctl start vm@{}){ssh}\n",
        vm.name,
        vm.unit,
        vm.vcpus,
        if vm.vcpus == 1 { "" } else { "s" },
        human_bytes(vm.memory_bytes),
        human_bytes(vm.disk_bytes),
        vm.image,
        vm.name,
        vm.name,
    )
}

/// `vmctl describe`: one `key: value` line per field, aligned.
pub fn details(vm: &VmDetails) -> String {
    let rows = [
        ("Name", vm.name.clone()),
        ("State", vm.state.clone()),
        ("Unit", vm.unit.clone()),
        ("Owner", format!("{} (uid {})", vm.owner, vm.owner_uid)),
        ("vCPUs", vm.vcpus.to_string()),
        ("Memory", human_bytes(vm.memory_bytes)),
        ("Disk", human_bytes(vm.disk_bytes)),
        ("Image", vm.image.clone()),
        ("VMM", vm.vmm.clone()),
        ("ID", vm.id.clone()),
        ("CID", vm.cid.to_string()),
        ("IPv4", vm.ipv4.clone().unwrap_or_else(|| "-".into())),
        ("IPv6", vm.ipv6.clone().unwrap_or_else(|| "-".into())),
        ("MAC", vm.mac.clone().unwrap_or_else(|| "-".into())),
        (
            "SSH user",
            vm.ssh_user.clone().unwrap_or_else(|| "-".into()),
        ),
        ("SSH keys", vm.ssh_authorized_keys.len().to_string()),
        ("Shared", shared_with(&vm.shared_with)),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:>8}: {v}\n", k))
        .collect()
}

/// The users a VM's site is shared with, or `-`.
fn shared_with(users: &[String]) -> String {
    if users.is_empty() {
        "-".into()
    } else {
        users.join(", ")
    }
}

/// Bytes in binary units, e.g. `512M`, `2G`, `1.5G`.
pub fn human_bytes(bytes: u64) -> String {
    vmctl_api::sizes::format_size_short(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes() {
        let vm = VmDetails {
            name: "blog".into(),
            state: "stopped".into(),
            owner_uid: 0,
            owner: "root".into(),
            vcpus: 2,
            memory_bytes: 1 << 30,
            disk_bytes: 4 << 30,
            image: "default".into(),
            vmm: "auto".into(),
            id: "ab".repeat(16),
            cid: 3,
            unit: "vm@blog.service".into(),
            ipv4: Some("10.77.0.2".into()),
            ipv6: Some("fd77:766d:6374::2".into()),
            mac: Some("02:76:6d:00:00:03".into()),
            ssh_user: Some("root".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA a".into()],
            shared_with: vec!["bob".into(), "carol".into()],
        };
        let text = details(&vm);
        assert!(
            text.starts_with("    Name: blog\n   State: stopped\n"),
            "{text}"
        );
        assert!(text.contains("  Memory: 1G\n"), "{text}");
        assert!(
            text.contains("    IPv6: fd77:766d:6374::2\n     MAC: 02:76:6d:00:00:03\n"),
            "{text}"
        );
        assert!(text.contains("SSH user: root\nSSH keys: 1\n"), "{text}");
        assert!(text.contains("  Shared: bob, carol\n"), "{text}");
        assert!(created(&vm).contains("2 vCPUs, 1G memory, 4G disk"));
        assert!(created(&vm).contains("then: ssh root@blog.vm"));
        assert!(created(&vm).contains("\nNetwork: blog.vm, 10.77.0.2, fd77:766d:6374::2\n"));
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512 << 20), "512M");
        assert_eq!(human_bytes(3 << 29), "1.5G");
    }
}
