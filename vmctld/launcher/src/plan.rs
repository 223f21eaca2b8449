//! Step 3: pick the VMM and turn a spec into its [`VmConfig`] (pure logic).

use std::path::PathBuf;

use vmctl_api::guest_credentials::GuestCredential;
use vmctl_api::spec::{Layout, VmmChoice};
use vmctl_vmm::{Accel, Credential, Disk, Driver, VmConfig, Vsock};

use crate::inputs::Inputs;

/// The driver for the spec's choice: `Auto` is cloud-hypervisor when it is
/// installed and KVM is usable, else QEMU (which picks KVM or TCG itself).
pub fn select_driver(choice: VmmChoice) -> Driver {
    match choice {
        VmmChoice::Auto => Driver::auto(),
        VmmChoice::Qemu => Driver::Qemu,
        VmmChoice::CloudHypervisor => Driver::CloudHypervisor,
    }
}

/// The guest kernel command line for VM `name` with machine ID `id`: the
/// guest takes the VM's name as its hostname.
pub fn kernel_cmdline(name: &str, id: &str) -> String {
    // `quiet` keeps the serial console (and so TCG boots) fast; systemd
    // still prints its status lines.
    format!(
        "console=ttyS0 root=/dev/vda rw systemd.firstboot=off systemd.machine_id={id} \
         systemd.hostname={name} panic=-1 quiet"
    )
}

/// The VMM's serial socket, which only the launcher connects to; console
/// clients use [`Layout::console_socket`], served by the launcher.
pub fn serial_socket(layout: &Layout, name: &str) -> PathBuf {
    layout.vm_runtime_dir(name).join("serial")
}

/// Where guest connections to host vsock port `port` arrive, next to the
/// hybrid-vsock socket `vsock`.
pub fn host_port_socket(vsock: &std::path::Path, port: u32) -> PathBuf {
    let mut s = vsock.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
}

/// vmctld's guest credentials (SSH keys, host key, hostname) in the form
/// the VMM passes them: their values span lines, so base64 (`.binary:`).
pub fn guest_credentials(creds: &[GuestCredential]) -> impl Iterator<Item = Credential> + '_ {
    creds.iter().map(|c| Credential::binary(&c.name, &c.value))
}

/// The VMM configuration for `inputs` under `layout`.
pub fn vm_config(inputs: &Inputs, layout: &Layout) -> VmConfig {
    let name = &inputs.spec.name;
    VmConfig {
        name: name.clone(),
        vcpus: inputs.spec.vcpus,
        // Drivers want whole MiB.
        memory_bytes: inputs.spec.memory_bytes.div_ceil(1 << 20) << 20,
        kernel: inputs.kernel.clone(),
        initrd: inputs.initrd.clone(),
        cmdline: kernel_cmdline(&inputs.spec.name, &inputs.spec.id),
        // Root first, data second: the guest finds them as /dev/vda and
        // /dev/vdb (the kernel command line and fstab.extra say so).
        disks: std::iter::once(&inputs.root_disk)
            .chain(&inputs.data_disk)
            .map(|path| Disk {
                path: path.clone(),
                read_only: false,
            })
            .collect(),
        net: Vec::new(),
        vsock: Some(Vsock {
            cid: inputs.spec.cid,
            socket: layout.vsock_socket(name),
        }),
        serial_socket: Some(serial_socket(layout, name)),
        // Guest systemd reports readiness and shutdown to the launcher.
        credentials: vec![crate::guest_notify::credential()],
        runtime_dir: layout.vm_runtime_dir(name),
        accel: Accel::Auto,
        machine: Default::default(),
        identity: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use vmctl_api::spec::VmSpec;

    fn inputs() -> Inputs {
        Inputs {
            spec: VmSpec {
                name: "blog".into(),
                id: "0123456789abcdef0123456789abcdef".into(),
                owner_uid: 0,
                vcpus: 2,
                memory_bytes: (1 << 30) + 1,
                disk_bytes: 4 << 30,
                image: "default".into(),
                vmm: VmmChoice::Auto,
                cid: 7,
                network: None,
                ssh_authorized_keys: Vec::new(),
                guest_user: None,
                data_volume: None,
                ephemeral: false,
            },
            kernel: "/s/images/default/vmlinuz".into(),
            initrd: Some("/s/images/default/initrd.img".into()),
            root_disk: "/s/disks/blog/root.raw".into(),
            data_disk: None,
        }
    }

    #[test]
    fn the_data_volume_is_the_second_disk() {
        let mut i = inputs();
        i.data_disk = Some("/s/volumes/blog.raw".into());
        let c = vm_config(&i, &Layout::under("/s", "/r"));
        c.validate().unwrap();
        let disks: Vec<_> = c
            .disks
            .iter()
            .map(|d| (d.path.as_path(), d.read_only))
            .collect();
        assert_eq!(
            disks,
            [
                (Path::new("/s/disks/blog/root.raw"), false),
                (Path::new("/s/volumes/blog.raw"), false)
            ]
        );
    }

    #[test]
    fn cmdline_has_machine_id_and_root() {
        let c = kernel_cmdline("blog", "0123456789abcdef0123456789abcdef");
        assert!(c.starts_with("console=ttyS0 root=/dev/vda rw systemd.firstboot=off "));
        assert!(c.contains(" systemd.machine_id=0123456789abcdef0123456789abcdef "));
        assert!(c.contains(" panic=-1"));
        assert!(c.contains(" systemd.hostname=blog "));
    }

    #[test]
    fn guest_credentials_render_like_vmctld_says() {
        let mut spec = inputs().spec;
        spec.ssh_authorized_keys = vec!["ssh-ed25519 AAAAC3Nza k@h".into()];
        let creds = vmctl_api::guest_credentials::for_spec(&spec, "PRIVATE\n", "ssh-ed25519 P");
        let mut c = vm_config(&inputs(), &Layout::under("/s", "/r"));
        c.credentials.extend(guest_credentials(&creds));
        c.validate().unwrap();
        let rendered = c.oem_strings();
        let expected: Vec<String> = creds.iter().map(|g| g.oem_string()).collect();
        assert_eq!(rendered[1..], expected[..]);
        assert!(rendered[1..].iter().all(|s| !s.contains('\n')));
    }

    #[test]
    fn explicit_choices() {
        assert_eq!(select_driver(VmmChoice::Qemu), Driver::Qemu);
        assert_eq!(
            select_driver(VmmChoice::CloudHypervisor),
            Driver::CloudHypervisor
        );
    }

    #[test]
    fn spec_to_vm_config() {
        let layout = Layout::under("/s", "/r");
        let c = vm_config(&inputs(), &layout);
        c.validate().unwrap();
        assert_eq!(c.memory_mib(), 1025, "rounded up to whole MiB");
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.kernel, Path::new("/s/images/default/vmlinuz"));
        assert_eq!(c.disks.len(), 1);
        assert!(!c.disks[0].read_only);
        assert_eq!(c.disks[0].path, Path::new("/s/disks/blog/root.raw"));
        let vsock = c.vsock.as_ref().unwrap();
        assert_eq!(vsock.cid, 7);
        assert_eq!(vsock.socket, Path::new("/r/vm/blog/vsock"));
        assert_eq!(
            host_port_socket(&vsock.socket, 1025),
            Path::new("/r/vm/blog/vsock_1025")
        );
        assert_eq!(
            c.serial_socket.as_deref(),
            Some(Path::new("/r/vm/blog/serial"))
        );
        assert_eq!(c.runtime_dir, Path::new("/r/vm/blog"));
        assert_eq!(
            c.oem_strings(),
            ["io.systemd.credential:vmm.notify_socket=vsock-stream:2:1026"]
        );
        assert_eq!(
            c.cmdline,
            kernel_cmdline("blog", "0123456789abcdef0123456789abcdef")
        );
    }
}
