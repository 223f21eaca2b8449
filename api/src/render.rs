//! VM lists as people and programs see them, the same from `vmctl list`
//! and the SSH gateway's `ls` (same words as the CLI).

use crate::Vm;

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
                crate::sizes::format_size_short(vm.memory_bytes),
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
}
