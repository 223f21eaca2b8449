//! Bulk transfers over a VM's vsock, end to end in the dev host: 64 MiB
//! each way through `vmctl exec` (the default path through vmctld, and
//! root's `VMCTL_GUEST_PATH=direct`) and through `vmctl cp`, compared by
//! SHA-256 with what the other side holds.
//!
//! This guards the workaround for vhost-device-vsock dropping guest packets
//! whose data spans several descriptors (`VSOCK_TX_BUFFER_SIZE` in
//! `vmm/src/qemu/mod.rs`): without it, the first step (`vmctl exec VM --
//! cat` of 64 MiB) printed nothing and hung until its timeout.
//!
//! One VM serves every step, because a TCG boot costs tens of seconds.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::process::Stdio;
use vmctl_e2e::{host, vm_exec};
use xtask::host::DevHost;

const VM: &str = "bulk";
/// Bytes moved each way, each time.
const SIZE: usize = 64 << 20;
/// The longest one transfer may take (seconds, `timeout` in the host): a
/// stalled stream fails the test instead of hanging it.
const TIMEOUT: &str = "180";

fn dev() -> DevHost {
    DevHost::current().expect("the development host must be up (cargo xtask test)")
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The hash at the start of `sha256sum`'s output.
fn sum_of(output: &str) -> String {
    output
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no sha256sum output: {output:?}"))
        .to_owned()
}

/// Runs `vmctl exec VM -- argv` in the host as root with the extra
/// environment `env`, feeding it `input`; returns its standard output
/// as bytes. Panics with its standard error unless it exits 0.
fn exec_bytes(env: &[&str], argv: &[&str], input: Vec<u8>) -> Vec<u8> {
    let mut full = vec!["timeout", TIMEOUT, "env"];
    full.extend_from_slice(env);
    full.extend_from_slice(&["vmctl", "exec", VM, "--"]);
    full.extend_from_slice(argv);
    let mut child = dev()
        .command(&full, None)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run vmctl exec in the development host");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Written from a thread while the output is read, so that neither side
    // waits for the other; dropping stdin closes it.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("vmctl exec did not run");
    let written = writer.join().expect("the stdin writer panicked");
    assert!(
        out.status.success(),
        "{full:?} failed ({}) after {} bytes of output; stderr: {}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    written.expect("vmctl exec did not take all of its input");
    out.stdout
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn sixty_four_mib_each_way_arrive_intact() {
    host(&["vmctl", "create", VM, "--memory", "1G", "--disk", "4G"]).ok();
    host(&["systemctl", "start", &format!("vm@{VM}")]).ok();
    let result = std::panic::catch_unwind(|| {
        guest_to_host();
        host_to_guest();
    });
    let _ = host(&["vmctl", "rm", VM]);
    let _ = host(&["rm", "-f", "/var/tmp/bulk-out.bin", "/var/tmp/bulk-in.bin"]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn guest_to_host() {
    let made = vm_exec(
        VM,
        &[
            "sh",
            "-c",
            "head -c 67108864 /dev/urandom > /var/tmp/out.bin && sha256sum /var/tmp/out.bin",
        ],
    )
    .ok();
    let expected = sum_of(&made.stdout);

    for (path, env) in [
        ("through vmctld", &[][..]),
        ("direct", &["VMCTL_GUEST_PATH=direct"][..]),
    ] {
        let received = exec_bytes(env, &["cat", "/var/tmp/out.bin"], Vec::new());
        assert_eq!(
            received.len(),
            SIZE,
            "vmctl exec ({path}): bytes out of the guest"
        );
        assert_eq!(
            sha256_hex(&received),
            expected,
            "vmctl exec ({path}): content out of the guest"
        );
    }

    host(&[
        "timeout",
        TIMEOUT,
        "vmctl",
        "cp",
        &format!("{VM}:/var/tmp/out.bin"),
        "/var/tmp/bulk-out.bin",
    ])
    .ok();
    let copied = host(&["sha256sum", "/var/tmp/bulk-out.bin"]).ok();
    assert_eq!(
        sum_of(&copied.stdout),
        expected,
        "vmctl cp out of the guest"
    );
}

fn host_to_guest() {
    let mut input = vec![0u8; SIZE];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut input))
        .expect("cannot read /dev/urandom");
    let expected = sha256_hex(&input);

    for (path, env) in [
        ("through vmctld", &[][..]),
        ("direct", &["VMCTL_GUEST_PATH=direct"][..]),
    ] {
        let answer = exec_bytes(env, &["sha256sum"], input.clone());
        assert_eq!(
            sum_of(&String::from_utf8_lossy(&answer)),
            expected,
            "vmctl exec ({path}): content into the guest"
        );
    }

    let made = host(&[
        "sh",
        "-c",
        "head -c 67108864 /dev/urandom > /var/tmp/bulk-in.bin && sha256sum /var/tmp/bulk-in.bin",
    ])
    .ok();
    let expected = sum_of(&made.stdout);
    host(&[
        "timeout",
        TIMEOUT,
        "vmctl",
        "cp",
        "/var/tmp/bulk-in.bin",
        &format!("{VM}:/var/tmp/in.bin"),
    ])
    .ok();
    let copied = vm_exec(VM, &["sha256sum", "/var/tmp/in.bin"]).ok();
    assert_eq!(sum_of(&copied.stdout), expected, "vmctl cp into the guest");
}
