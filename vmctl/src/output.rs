//! How results are shown: tables for people, JSON for programs.

use vmctl_api::{Vm, VmDetails};

/// The column headers of `vmctl list`.
pub const LIST_HEADER: [&str; 6] = ["NAME", "STATE", "OWNER", "VCPUS", "MEMORY", "IPV4"];

/// Renders VMs as an aligned table with a header line; an empty list is
/// just the header.
pub fn vm_table(vms: &[Vm]) -> String {
    let rows: Vec<[String; 6]> = vms
        .iter()
        .map(|vm| {
            [
                vm.name.clone(),
                vm.state.clone(),
                vm.owner_uid.to_string(),
                vm.vcpus.to_string(),
                human_bytes(vm.memory_bytes),
                vm.ipv4.clone().unwrap_or_else(|| "-".to_string()),
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
    format!(
        "Created VM {} ({}): {} vCPU{}, {} memory, {} disk from image {}.\n\
         Start it with: vmctl start {} (or systemctl start vm@{})\n",
        vm.name,
        vm.unit,
        vm.vcpus,
        if vm.vcpus == 1 { "" } else { "s" },
        human_bytes(vm.memory_bytes),
        human_bytes(vm.disk_bytes),
        vm.image,
        vm.name,
        vm.name
    )
}

/// `vmctl describe`: one `key: value` line per field, aligned.
pub fn details(vm: &VmDetails) -> String {
    let rows = [
        ("Name", vm.name.clone()),
        ("State", vm.state.clone()),
        ("Unit", vm.unit.clone()),
        ("Owner", vm.owner_uid.to_string()),
        ("vCPUs", vm.vcpus.to_string()),
        ("Memory", human_bytes(vm.memory_bytes)),
        ("Disk", human_bytes(vm.disk_bytes)),
        ("Image", vm.image.clone()),
        ("VMM", vm.vmm.clone()),
        ("ID", vm.id.clone()),
        ("CID", vm.cid.to_string()),
        ("IPv4", vm.ipv4.clone().unwrap_or_else(|| "-".into())),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:>7}: {v}\n", k))
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
            vcpus: 2,
            memory_bytes: 2 << 30,
            ipv4: ipv4.map(String::from),
        }
    }

    #[test]
    fn empty_table_is_header_only() {
        assert_eq!(vm_table(&[]), "NAME  STATE  OWNER  VCPUS  MEMORY  IPV4\n");
        assert_eq!(vm_json(&[]), "[]");
    }

    #[test]
    fn table_aligns_columns() {
        let t = vm_table(&[vm("blog", Some("10.77.0.2")), vm("a-longer-name", None)]);
        assert_eq!(
            t,
            "NAME           STATE    OWNER  VCPUS  MEMORY  IPV4\n\
             blog           running  1000   2      2G      10.77.0.2\n\
             a-longer-name  running  1000   2      2G      -\n"
        );
    }

    #[test]
    fn describes() {
        let vm = VmDetails {
            name: "blog".into(),
            state: "stopped".into(),
            owner_uid: 0,
            vcpus: 2,
            memory_bytes: 1 << 30,
            disk_bytes: 4 << 30,
            image: "default".into(),
            vmm: "auto".into(),
            id: "ab".repeat(16),
            cid: 3,
            unit: "vm@blog.service".into(),
            ipv4: None,
        };
        let text = details(&vm);
        assert!(
            text.starts_with("   Name: blog\n  State: stopped\n"),
            "{text}"
        );
        assert!(text.contains(" Memory: 1G\n"), "{text}");
        assert!(created(&vm).contains("2 vCPUs, 1G memory, 4G disk"));
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512 << 20), "512M");
        assert_eq!(human_bytes(3 << 29), "1.5G");
    }
}
