//! Step 1: the VM's name, its stored spec, and the files it boots from.

use std::path::{Path, PathBuf};

use vmctl_api::spec::{Layout, VmSpec};

/// Everything the launcher reads from disk before it starts a VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The stored definition.
    pub spec: VmSpec,
    /// The image's kernel: `vmlinux` where the image has one, else `vmlinuz`.
    pub kernel: PathBuf,
    /// The image's initramfs (`initrd.img`), when the image has one.
    pub initrd: Option<PathBuf>,
    /// The VM's root disk.
    pub root_disk: PathBuf,
    /// The VM's data volume (the spec's `data_volume` in the directory
    /// pool), attached as the second disk.
    pub data_disk: Option<PathBuf>,
}

/// Reads and checks the spec of VM `name` and the files it needs.
///
/// Every error names the file and says what to do about it, because it ends
/// up in `journalctl -u vm@NAME` and nowhere else.
pub fn load(layout: &Layout, name: &str) -> Result<Inputs, String> {
    vmctl_api::validate_vm_name(name).map_err(|e| format!("invalid VM name {name:?}: {e}"))?;
    let spec_file = layout.spec_file(name);
    let text = std::fs::read_to_string(&spec_file).map_err(|e| {
        format!(
            "cannot read the spec of VM {name:?} at {}: {e}; create the VM with `vmctl create {name}` first",
            spec_file.display()
        )
    })?;
    let spec: VmSpec = serde_json::from_str(&text).map_err(|e| {
        format!(
            "invalid spec {}: {e}; it is written by vmctld, recreate the VM or fix the file",
            spec_file.display()
        )
    })?;
    if spec.name != name {
        return Err(format!(
            "spec {} is for VM {:?}, not {name:?}",
            spec_file.display(),
            spec.name
        ));
    }
    machine_id_bytes(&spec.id).ok_or_else(|| {
        format!(
            "spec {}: id {:?} is not 32 hex digits",
            spec_file.display(),
            spec.id
        )
    })?;
    let image_dir = layout.image_dir(&spec.image);
    // An uncompressed ELF kernel with a PVH entry point (vmctl's own image
    // ships one) boots directly, with no decompression, on QEMU and
    // cloud-hypervisor alike; `vmlinuz` (a bzImage) is the fallback.
    let kernel = match image_dir.join("vmlinux") {
        elf if elf.is_file() => elf,
        _ => image_dir.join("vmlinuz"),
    };
    require_file(&kernel, "the image's kernel", &spec.image)?;
    let initrd = image_dir.join("initrd.img");
    let initrd = initrd.is_file().then_some(initrd);
    let root_disk = layout.root_disk(name);
    require_file(&root_disk, "the VM's root disk", &spec.image)?;
    let data_disk = match &spec.data_volume {
        Some(volume) => {
            vmctl_api::validate_vm_name(volume).map_err(|e| {
                format!(
                    "spec {}: data volume {volume:?} is not a valid name: {e}",
                    spec_file.display()
                )
            })?;
            let path = layout.volume_file(volume);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Some(path),
                _ => {
                    return Err(format!(
                        "the VM's data volume {} is missing; see `vmctl volume list`",
                        path.display()
                    ))
                }
            }
        }
        None => None,
    };
    Ok(Inputs {
        spec,
        kernel,
        initrd,
        root_disk,
        data_disk,
    })
}

fn require_file(path: &Path, what: &str, image: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} {} is not a regular file", path.display())),
        Err(e) => Err(format!(
            "{what} {} is missing ({e}); import or rebuild image {image:?}, or recreate the VM",
            path.display()
        )),
    }
}

/// The 16 bytes of a 32-hex-digit machine ID, as systemd-machined wants them.
pub fn machine_id_bytes(id: &str) -> Option<[u8; 16]> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_vm(layout: &Layout, spec_json: &str) {
        std::fs::create_dir_all(layout.state_dir.join("vms")).unwrap();
        std::fs::write(layout.spec_file("blog"), spec_json).unwrap();
    }

    const SPEC: &str = r#"{"name":"blog","id":"0123456789abcdef0123456789abcdef","owner_uid":0,
        "vcpus":2,"memory_bytes":1073741824,"disk_bytes":4294967296,"image":"default","cid":3}"#;

    #[test]
    fn machine_id() {
        let b = machine_id_bytes("0123456789abcdef0123456789ABCDEF").unwrap();
        assert_eq!(b[0], 0x01);
        assert_eq!(b[15], 0xef);
        assert!(machine_id_bytes("0123").is_none());
        assert!(machine_id_bytes("g123456789abcdef0123456789abcdef").is_none());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path().join("state"), dir.path().join("run"));
        let err = load(&layout, "blog").unwrap_err();
        assert!(
            err.contains("vms/blog.json") && err.contains("vmctl create"),
            "{err}"
        );
        assert!(load(&layout, "-bad")
            .unwrap_err()
            .contains("invalid VM name"));

        write_vm(&layout, "{");
        assert!(load(&layout, "blog").unwrap_err().contains("invalid spec"));

        write_vm(&layout, SPEC);
        let err = load(&layout, "blog").unwrap_err();
        assert!(err.contains("images/default/vmlinuz"), "{err}");

        let img = layout.image_dir("default");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join("vmlinuz"), b"k").unwrap();
        let err = load(&layout, "blog").unwrap_err();
        assert!(err.contains("disks/blog/root.raw"), "{err}");

        std::fs::create_dir_all(layout.disk_dir("blog")).unwrap();
        std::fs::write(layout.root_disk("blog"), b"").unwrap();
        let inputs = load(&layout, "blog").unwrap();
        assert_eq!(inputs.initrd, None);
        std::fs::write(img.join("initrd.img"), b"i").unwrap();
        let inputs = load(&layout, "blog").unwrap();
        assert_eq!(inputs.initrd, Some(img.join("initrd.img")));
        assert_eq!(inputs.spec.cid, 3);
        assert_eq!(inputs.kernel, img.join("vmlinuz"));
        std::fs::write(img.join("vmlinux"), b"e").unwrap();
        assert_eq!(load(&layout, "blog").unwrap().kernel, img.join("vmlinux"));
        assert_eq!(inputs.data_disk, None);

        // A data volume in the spec must be there, and be a plain name.
        write_vm(
            &layout,
            &SPEC.replace(r#""cid":3"#, r#""cid":3,"data_volume":"db""#),
        );
        let err = load(&layout, "blog").unwrap_err();
        assert!(err.contains("volumes/db.raw is missing"), "{err}");
        std::fs::create_dir_all(layout.state_dir.join("volumes")).unwrap();
        std::fs::write(layout.volume_file("db"), b"").unwrap();
        let inputs = load(&layout, "blog").unwrap();
        assert_eq!(inputs.data_disk, Some(layout.volume_file("db")));
        write_vm(
            &layout,
            &SPEC.replace(r#""cid":3"#, r#""cid":3,"data_volume":"../db""#),
        );
        let err = load(&layout, "blog").unwrap_err();
        assert!(err.contains("not a valid name"), "{err}");
    }
}
