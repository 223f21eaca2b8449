//! Step 3: turn a spec into what the VMM is asked to run (pure logic).
//!
//! Stand-in for `vmctl_vmm::VmConfig` until that crate exports its drivers;
//! the fields mirror it one to one so the switch is mechanical.

use std::path::{Path, PathBuf};

use vmctl_api::spec::{Layout, VmmChoice};

use crate::inputs::Inputs;

/// The VMM that will run the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU with hardware acceleration.
    QemuKvm,
    /// QEMU with its software emulator (TCG).
    QemuTcg,
}

/// Picks the VMM for `choice`, given what the host offers.
///
/// cloud-hypervisor needs KVM and a driver this launcher does not have yet,
/// so `Auto` always lands on QEMU for now; an explicit `CloudHypervisor` is
/// an error that says so.
pub fn select_vmm(choice: VmmChoice, kvm_usable: bool) -> Result<Vmm, String> {
    let qemu = if kvm_usable {
        Vmm::QemuKvm
    } else {
        Vmm::QemuTcg
    };
    match choice {
        VmmChoice::Auto | VmmChoice::Qemu => Ok(qemu),
        VmmChoice::CloudHypervisor => Err(
            "the spec asks for cloud-hypervisor, which this launcher cannot drive yet; \
             set \"vmm\": \"auto\" or \"qemu\" in the spec"
                .into(),
        ),
    }
}

/// True when KVM can boot a normal guest: `/dev/kvm` opens read-write and a
/// hardware module (`kvm_intel`/`kvm_amd`) is loaded. `kvm_pvm` alone does
/// not count (guests spin forever on it).
pub fn kvm_usable() -> bool {
    let dev_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    dev_ok
        && (Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists())
}

/// One VM as the VMM will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    /// VM name.
    pub name: String,
    /// Which VMM.
    pub vmm: Vmm,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Kernel for direct boot.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Root disk, attached read-write as `vda`.
    pub root_disk: PathBuf,
    /// Guest vsock CID.
    pub cid: u32,
    /// Host side of the hybrid vsock.
    pub vsock_socket: PathBuf,
    /// The VM's runtime directory (QMP and vhost-user sockets).
    pub runtime_dir: PathBuf,
}

/// The guest kernel command line for machine ID `id`.
pub fn kernel_cmdline(id: &str) -> String {
    // `quiet` keeps the serial console (and so TCG boots) fast; systemd
    // still prints its status lines.
    format!(
        "console=ttyS0 root=/dev/vda rw systemd.firstboot=off systemd.machine_id={id} panic=-1 quiet"
    )
}

impl VmPlan {
    /// Builds the plan for `inputs` under `layout`.
    pub fn new(inputs: &Inputs, layout: &Layout, vmm: Vmm) -> VmPlan {
        let name = &inputs.spec.name;
        VmPlan {
            name: name.clone(),
            vmm,
            vcpus: inputs.spec.vcpus,
            memory_mib: inputs.spec.memory_bytes.div_ceil(1 << 20),
            kernel: inputs.kernel.clone(),
            initrd: inputs.initrd.clone(),
            cmdline: kernel_cmdline(&inputs.spec.id),
            root_disk: inputs.root_disk.clone(),
            cid: inputs.spec.cid,
            vsock_socket: layout.vsock_socket(name),
            runtime_dir: layout.vm_runtime_dir(name),
        }
    }

    /// Where guest connections to host vsock port `port` arrive.
    pub fn host_port_socket(&self, port: u32) -> PathBuf {
        let mut s = self.vsock_socket.clone().into_os_string();
        s.push(format!("_{port}"));
        s.into()
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.runtime_dir.join("qmp.sock")
    }

    /// The vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vhost_vsock_socket(&self) -> PathBuf {
        self.runtime_dir.join("vhost-vsock.sock")
    }

    /// Arguments of `vhost-device-vsock`.
    pub fn vhost_vsock_args(&self) -> Vec<String> {
        vec![
            "--guest-cid".into(),
            self.cid.to_string(),
            "--socket".into(),
            self.vhost_vsock_socket().display().to_string(),
            "--uds-path".into(),
            self.vsock_socket.display().to_string(),
        ]
    }

    /// Arguments of `qemu-system-x86_64`. The serial console is QEMU's
    /// standard input and output, which the launcher relays.
    pub fn qemu_args(&self) -> Vec<String> {
        let (accel, cpu) = match self.vmm {
            Vmm::QemuKvm => ("kvm", "host"),
            Vmm::QemuTcg => ("tcg", "max"),
        };
        let mem = self.memory_mib;
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("{},process=vmctl-{}", qemu_escape(&self.name), self.name),
            "-machine".into(),
            format!("q35,accel={accel}"),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            self.vcpus.to_string(),
            "-m".into(),
            format!("{mem}M"),
            // vhost-user needs guest memory shared with the helper.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-numa".into(),
            "node,memdev=mem".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            "stdio,id=serial0,signal=off".into(),
            "-serial".into(),
            "chardev:serial0".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
        ];
        if let Some(initrd) = &self.initrd {
            args.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        args.extend([
            "-append".into(),
            self.cmdline.clone(),
            "-drive".into(),
            format!(
                "file={},format=raw,if=virtio",
                qemu_escape(&self.root_disk.display().to_string())
            ),
            "-chardev".into(),
            format!(
                "socket,id=vsock0,path={}",
                qemu_escape(&self.vhost_vsock_socket().display().to_string())
            ),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock0".into(),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                qemu_escape(&self.qmp_socket().display().to_string())
            ),
        ]);
        args
    }
}

/// QEMU option values separate sub-options with `,`; a literal comma is `,,`.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmctl_api::spec::VmSpec;

    fn inputs() -> Inputs {
        Inputs {
            spec: VmSpec {
                name: "blog".into(),
                id: "0123456789abcdef0123456789abcdef".into(),
                owner_uid: 0,
                vcpus: 2,
                memory_bytes: 1 << 30,
                disk_bytes: 4 << 30,
                image: "default".into(),
                vmm: VmmChoice::Auto,
                cid: 7,
            },
            kernel: "/s/images/default/vmlinuz".into(),
            initrd: Some("/s/images/default/initrd.img".into()),
            root_disk: "/s/disks/blog/root.raw".into(),
        }
    }

    #[test]
    fn cmdline_has_machine_id_and_root() {
        let c = kernel_cmdline("0123456789abcdef0123456789abcdef");
        assert!(c.starts_with("console=ttyS0 root=/dev/vda rw systemd.firstboot=off "));
        assert!(c.contains(" systemd.machine_id=0123456789abcdef0123456789abcdef "));
        assert!(c.contains(" panic=-1"));
    }

    #[test]
    fn selection() {
        assert_eq!(select_vmm(VmmChoice::Auto, false), Ok(Vmm::QemuTcg));
        assert_eq!(select_vmm(VmmChoice::Auto, true), Ok(Vmm::QemuKvm));
        assert_eq!(select_vmm(VmmChoice::Qemu, false), Ok(Vmm::QemuTcg));
        assert!(select_vmm(VmmChoice::CloudHypervisor, true).is_err());
    }

    #[test]
    fn spec_to_plan_and_argv() {
        let layout = Layout::under("/s", "/r");
        let plan = VmPlan::new(&inputs(), &layout, Vmm::QemuTcg);
        assert_eq!(plan.memory_mib, 1024);
        assert_eq!(plan.vsock_socket, Path::new("/r/vm/blog/vsock"));
        assert_eq!(
            plan.host_port_socket(1025),
            Path::new("/r/vm/blog/vsock_1025")
        );
        let args = plan.qemu_args();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("-machine"), "q35,accel=tcg");
        assert_eq!(after("-smp"), "2");
        assert_eq!(after("-m"), "1024M");
        assert_eq!(after("-kernel"), "/s/images/default/vmlinuz");
        assert_eq!(after("-initrd"), "/s/images/default/initrd.img");
        assert_eq!(after("-append"), plan.cmdline);
        assert_eq!(
            after("-drive"),
            "file=/s/disks/blog/root.raw,format=raw,if=virtio"
        );
        assert_eq!(after("-qmp"), "unix:/r/vm/blog/qmp.sock,server=on,wait=off");
        assert_eq!(
            plan.vhost_vsock_args(),
            [
                "--guest-cid",
                "7",
                "--socket",
                "/r/vm/blog/vhost-vsock.sock",
                "--uds-path",
                "/r/vm/blog/vsock"
            ]
        );
        let kvm = VmPlan::new(&inputs(), &layout, Vmm::QemuKvm).qemu_args();
        assert!(kvm.contains(&"q35,accel=kvm".to_string()));
        assert_eq!(qemu_escape("/a,b"), "/a,,b");
    }
}
