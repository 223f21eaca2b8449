//! Helpers for the end-to-end tests in `tests/`, which run against the
//! systemd development host brought up by `cargo xtask test`.
//!
//! Every test there is `#[ignore]`d so that a plain `cargo test` does not
//! report them as passed without a host; `cargo xtask test` runs them with
//! `--ignored` after `cargo xtask host up`.

use std::process::Output;
use xtask::host::DevHost;

/// The result of a command run inside the host.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        self
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `argv` as root inside the development host.
pub fn host(argv: &[&str]) -> Run {
    host_as(None, argv)
}

/// Runs `argv` inside the development host as `user` (root when `None`).
pub fn host_as(user: Option<&str>, argv: &[&str]) -> Run {
    let dev = DevHost::current().expect("the development host must be up (cargo xtask test)");
    dev.output(argv, user)
        .expect("cannot run a command in the development host")
        .into()
}

/// Runs `argv` as root inside VM `vm`, through the host's `vmctl exec`.
pub fn vm_exec(vm: &str, argv: &[&str]) -> Run {
    let mut full = vec!["vmctl", "exec", vm, "--"];
    full.extend_from_slice(argv);
    host(&full)
}

/// One property of a unit in the host (`systemctl show -p NAME --value`).
pub fn unit_property(unit: &str, property: &str) -> String {
    host(&["systemctl", "show", unit, "-p", property, "--value"])
        .ok()
        .stdout
        .trim()
        .to_owned()
}

/// The overall exposure level `systemd-analyze security` gives `unit` in
/// the host (0.0 best, 10.0 worst). Panics with the tool's output when
/// no figure can be read.
pub fn exposure(unit: &str) -> f64 {
    let run = host(&["systemd-analyze", "security", "--no-pager", unit]).ok();
    let prefix = format!("Overall exposure level for {unit}: ");
    run.stdout
        .lines()
        .find_map(|l| l.split(prefix.as_str()).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure for {unit}: {run:#?}"))
}

/// Field `key` of VM `vm`'s stored spec (`/var/lib/vmctl/vms/VM.json`),
/// found at any depth (the addresses sit under `network`): a string as
/// it is, any other value as JSON. Panics naming the VM when it is absent.
pub fn vm_spec_field(vm: &str, key: &str) -> String {
    let text = host(&["cat", &format!("/var/lib/vmctl/vms/{vm}.json")])
        .ok()
        .stdout;
    let spec: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("the spec of {vm}: {e}: {text}"));
    match json_field(&spec, key) {
        Some(serde_json::Value::String(value)) => value.clone(),
        Some(value) => value.to_string(),
        None => panic!("no {key} in the spec of {vm}: {text}"),
    }
}

/// The first value named `key` in `value`, depth first.
fn json_field<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| json_field(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| json_field(v, key)),
        _ => None,
    }
}

/// Whether `path` exists in the host.
pub fn host_path_exists(path: &str) -> bool {
    host(&["test", "-e", path]).code == Some(0)
}

/// Copies `source` from this machine into VM `vm` at `guest_path`: staged
/// in the host's /var/tmp (its /tmp is a tmpfs that hides files copied
/// into the root), then `vmctl cp` as a user would.
pub fn copy_into_vm(vm: &str, source: &std::path::Path, guest_path: &str) {
    let staged = format!(
        "/var/tmp/{vm}-{}",
        source.file_name().unwrap().to_string_lossy()
    );
    DevHost::current()
        .expect("the development host must be up (cargo xtask test)")
        .copy_in(source, &staged)
        .expect("cannot copy a file into the development host");
    host(&["vmctl", "cp", &staged, &format!("{vm}:{guest_path}")]).ok();
}

/// Copies the test server `binary` (one of this crate's binaries, e.g.
/// `env!("CARGO_BIN_EXE_http-peer")`) into VM `vm` and starts it there as
/// the transient unit `unit`, listening on `listen`.
pub fn serve_in_vm(vm: &str, binary: &std::path::Path, unit: &str, listen: &str) {
    let guest_path = format!(
        "/usr/local/bin/{}",
        binary.file_name().unwrap().to_string_lossy()
    );
    copy_into_vm(vm, binary, &guest_path);
    vm_exec(vm, &["chmod", "0755", &guest_path]).ok();
    vm_exec(
        vm,
        &[
            "systemd-run",
            &format!("--unit={unit}"),
            &guest_path,
            listen,
        ],
    )
    .ok();
}

/// The test users and their supplementary groups: `alice` and `bob` may
/// use vmctl (group `vmctl`), `mallory` may not, `carol` is in `vmadmins`
/// (which `tests/polkit.rs` grants manage-any with a rule of its own).
pub const TEST_USERS: [(&str, &[&str]); 4] = [
    ("alice", &["vmctl"]),
    ("bob", &["vmctl"]),
    ("mallory", &[]),
    ("carol", &["vmadmins"]),
];

/// Makes the [`TEST_USERS`] in the development host (idempotent: existing
/// users are given the groups they lack), each with a home directory.
pub fn ensure_test_users() {
    host(&["groupadd", "-f", "vmadmins"]).ok();
    for (user, groups) in TEST_USERS {
        if host(&["id", "-u", user]).code != Some(0) {
            host(&["useradd", "-m", "-s", "/bin/bash", user]).ok();
        }
        for group in groups {
            host(&["usermod", "-a", "-G", group, user]).ok();
        }
    }
}

/// The uid of `user` in the development host.
pub fn host_uid(user: &str) -> u32 {
    let out = host(&["id", "-u", user]).ok().stdout;
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("id -u {user}: {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::json_field;

    #[test]
    fn json_field_finds_nested_keys() {
        let spec: serde_json::Value = serde_json::from_str(
            r#"{"name":"x","cid":7,"network":{"ipv4":"10.77.0.2","ipv6":"fd77::2"}}"#,
        )
        .unwrap();
        assert_eq!(json_field(&spec, "ipv4").unwrap(), "10.77.0.2");
        assert_eq!(json_field(&spec, "cid").unwrap(), 7);
        assert!(json_field(&spec, "mac").is_none());
    }
}
