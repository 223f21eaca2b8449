//! How results are shown: tables for people, JSON for programs.

use vmctl_api::{Vm, VmDetails};

/// The column headers of `vmctl list`.
pub const LIST_HEADER: [&str; 8] = [
    "NAME", "STATE", "OWNER", "VCPUS", "MEMORY", "IPV4", "IPV6", "MAC",
];

/// Renders VMs as an aligned table with a header line; an empty list is
/// just the header.
pub fn vm_table(vms: &[Vm]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let rows: Vec<[String; 8]> = vms
        .iter()
        .map(|vm| {
            [
                vm.name.clone(),
                vm.state.clone(),
                vm.owner.clone(),
                vm.vcpus.to_string(),
                human_bytes(vm.memory_bytes),
                dash(&vm.ipv4),
                dash(&vm.ipv6),
                dash(&vm.mac),
            ]
        })
        .collect();
    let mut widths = LIST_HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = LIST_HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Renders VMs as a JSON array (`[]` when empty).
pub fn vm_json(vms: &[Vm]) -> String {
    if vms.is_empty() {
        return "[]".to_string();
    }
    serde_json::to_string_pretty(vms).expect("VM records always serialize")
}

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
    ];
    rows.iter()
        .map(|(k, v)| format!("{:>8}: {v}\n", k))
        .collect()
}

/// Bytes in binary units, e.g. `512M`, `2G`, `1.5G`.
pub fn human_bytes(bytes: u64) -> String {
    vmctl_api::sizes::format_size_short(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, ipv4: Option<&str>) -> Vm {
        Vm {
            name: name.into(),
            state: "running".into(),
            owner_uid: 1000,
            owner: "alice".into(),
            vcpus: 2,
            memory_bytes: 2 << 30,
            ipv4: ipv4.map(String::from),
            ipv6: ipv4.map(|_| "fd77:766d:6374::2".to_string()),
            mac: ipv4.map(|_| "02:76:6d:00:00:03".to_string()),
        }
    }

    #[test]
    fn empty_table_is_header_only() {
        assert_eq!(
            vm_table(&[]),
            "NAME  STATE  OWNER  VCPUS  MEMORY  IPV4  IPV6  MAC\n"
        );
        assert_eq!(vm_json(&[]), "[]");
    }

    #[test]
    fn table_aligns_columns() {
        let t = vm_table(&[vm("blog", Some("10.77.0.2")), vm("a-longer-name", None)]);
        assert_eq!(
            t,
            "NAME           STATE    OWNER  VCPUS  MEMORY  IPV4       IPV6               MAC\n\
             blog           running  alice  2      2G      10.77.0.2  fd77:766d:6374::2  02:76:6d:00:00:03\n\
             a-longer-name  running  alice  2      2G      -          -                  -\n"
        );
    }

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
