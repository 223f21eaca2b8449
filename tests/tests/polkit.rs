//! Who may do what, end to end in the dev host: real polkitd, the real
//! system bus, real users (`ensure_test_users`), the installed vmctld with
//! the shipped policy and rules. One VM boots twice.
//!
//! - mallory (not in group `vmctl`) is refused `org.vmctl.vm.create` over
//!   varlink (`vmctl`) and D-Bus (`busctl`);
//! - alice (group `vmctl`) creates over both, starts her VM with
//!   `systemctl start vm@alice1` (the manage-units rule and the ownership
//!   record) and with `vmctl start`, stops it both ways, removes her VMs;
//! - bob (group `vmctl`) gets, for alice's VM, exactly the answer he gets
//!   for a VM that does not exist (describe, start, stop, restart, rm, over
//!   varlink and D-Bus), does not see it in `list`, cannot read its
//!   ownership record, and `systemctl start/stop vm@alice1` is refused;
//! - carol (group `vmadmins`, granted manage-any by a rule this test
//!   installs and removes) sees every VM with `vmctl list --all` and
//!   describes alice's; bob's `list --all` is refused naming manage-any;
//! - root does everything, and alice does not see root's VM.

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use vmctl_e2e::{ensure_test_users, host, host_as, host_uid, unit_property, Run};

const VM: &str = "alice1";
/// Alice's second VM, made and removed over D-Bus.
const VM_DBUS: &str = "alice2";
/// A name no VM has.
const MISSING: &str = "nosuch";
const ROOT_VM: &str = "rootpk1";
const ADMIN_RULE: &str = "/etc/polkit-1/rules.d/40-vmctl-test-admins.rules";

/// Removes the test's VMs and the admin rule.
fn cleanup() {
    for vm in [VM, VM_DBUS, ROOT_VM] {
        host(&["vmctl", "rm", vm]);
    }
    host(&["rm", "-f", ADMIN_RULE]);
}

/// Runs [`cleanup`] also when the test fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup();
    }
}

fn vmctl(user: &str, args: &[&str]) -> Run {
    let mut argv = vec!["vmctl"];
    argv.extend_from_slice(args);
    host_as(Some(user), &argv)
}

/// `busctl call` on the manager as `user` (`--timeout` for boots).
fn busctl(user: &str, method: &str, signature_and_args: &[&str]) -> Run {
    let mut argv = vec![
        "busctl",
        "--system",
        "--timeout=5min",
        "call",
        "org.vmctl.Manager1",
        "/org/vmctl/Manager1",
        "org.vmctl.Manager1",
        method,
    ];
    argv.extend_from_slice(signature_and_args);
    host_as(Some(user), &argv)
}

/// A `Manager1` method taking one name, called with `dbus-send`, which
/// prints the D-Bus error name (busctl prints only its text).
fn dbus_send(user: &str, method: &str, name: &str) -> Run {
    host_as(
        Some(user),
        &[
            "dbus-send",
            "--system",
            "--print-reply",
            "--reply-timeout=300000",
            "--dest=org.vmctl.Manager1",
            "/org/vmctl/Manager1",
            &format!("org.vmctl.Manager1.{method}"),
            &format!("string:{name}"),
        ],
    )
}

/// The exit code and output of `run`, with `name` replaced by `NAME`.
fn answer(run: &Run, name: &str) -> (Option<i32>, String, String) {
    (
        run.code,
        run.stdout.replace(name, "NAME"),
        run.stderr.replace(name, "NAME"),
    )
}

/// Runs `call` for alice's VM and for a missing one, asserts that they
/// fail and answer alike (names aside), and returns the answer.
#[track_caller]
fn like_missing(what: &str, call: impl Fn(&str) -> Run) -> (Option<i32>, String, String) {
    let hidden = call(VM);
    let missing = call(MISSING);
    assert_ne!(hidden.code, Some(0), "{what} succeeded: {hidden:#?}");
    assert_eq!(
        answer(&hidden, VM),
        answer(&missing, MISSING),
        "{what}: alice's VM answers unlike a missing one"
    );
    eprintln!("{what}: {:?}", hidden.stderr.trim());
    answer(&hidden, VM)
}

fn names(json: &str) -> Vec<String> {
    let vms: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    vms.as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until polkitd has loaded the admin rule (it reloads its rules when
/// the directory changes): carol's `list --all` succeeds.
fn wait_for_admin_rule() -> Run {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = vmctl("carol", &["list", "--all", "--json"]);
        if run.code == Some(0) || Instant::now() > deadline {
            return run;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn polkit_matrix() {
    ensure_test_users();
    cleanup();
    let _cleanup = Cleanup;
    let alice_uid = host_uid("alice");
    let unit = format!("vm@{VM}.service");

    // mallory: nothing, and the refusal names the action.
    let run = vmctl("mallory", &["create", "m1"]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr.contains("org.vmctl.vm.create")
            && run.stderr.contains("(io.vmctl.Manager.PermissionDenied)"),
        "{run:#?}"
    );
    let run = busctl("mallory", "Create", &["sa{sv}", "m1", "0"]);
    assert_ne!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stderr
            .contains("permission denied for action org.vmctl.vm.create"),
        "{run:#?}"
    );
    assert!(names(&vmctl("mallory", &["list", "--json"]).ok().stdout).is_empty());
    eprintln!("mallory refused: {}", run.stderr.trim());

    // alice creates over varlink and D-Bus; the VMs are hers, by name.
    vmctl("alice", &["create", VM, "--memory", "512M"]).ok();
    let run = busctl("alice", "Create", &["sa{sv}", VM_DBUS, "0"]).ok();
    assert!(run.stdout.contains(&format!("\"{VM_DBUS}\"")), "{run:#?}");
    let list: Value =
        serde_json::from_str(&vmctl("alice", &["list", "--json"]).ok().stdout).unwrap();
    let mine = list.as_array().unwrap();
    assert_eq!(mine.len(), 2, "{list:#}");
    for vm in mine {
        assert_eq!(vm["owner"], "alice", "{vm:#}");
        assert_eq!(vm["owner_uid"], alice_uid, "{vm:#}");
    }
    let describe = vmctl("alice", &["describe", VM]).ok().stdout;
    assert!(
        describe.contains(&format!("Owner: alice (uid {alice_uid})")),
        "{describe}"
    );

    // The ownership record for the systemd rule: polkitd reads it, bob
    // does not.
    let record = format!("/run/vmctl/owners/{VM}");
    let stat = host(&["stat", "-c", "%a %U %G", &record]).ok().stdout;
    assert_eq!(stat.trim(), "640 root polkitd");
    assert_eq!(host(&["cat", &record]).ok().stdout, "alice\n");
    let run = host_as(Some("bob"), &["cat", &record]);
    assert_ne!(run.code, Some(0), "bob read the ownership record: {run:#?}");

    // bob: alice's VM is indistinguishable from a missing one, on both
    // front ends, for every method.
    for method in ["describe", "start", "stop", "restart", "rm"] {
        let (_, _, stderr) = like_missing(&format!("bob: vmctl {method}"), |name| {
            vmctl("bob", &[method, name])
        });
        assert!(
            stderr.contains("(io.vmctl.Manager.NoSuchVM)"),
            "{method}: {stderr}"
        );
    }
    for method in ["Describe", "Start", "Stop", "Restart", "Remove"] {
        like_missing(&format!("bob: busctl {method}"), |name| {
            busctl("bob", method, &["s", name])
        });
        let (_, _, stderr) = like_missing(&format!("bob: dbus-send {method}"), |name| {
            dbus_send("bob", method, name)
        });
        assert!(
            stderr.contains("org.vmctl.Manager1.Error.NoSuchVM"),
            "{method}: {stderr}"
        );
    }
    assert!(names(&vmctl("bob", &["list", "--json"]).ok().stdout).is_empty());
    let run = vmctl("bob", &["list", "--all"]);
    assert!(
        run.code == Some(1)
            && run.stderr.contains("org.vmctl.vm.manage-any")
            && run.stderr.contains("(io.vmctl.Manager.PermissionDenied)"),
        "{run:#?}"
    );
    // systemd asks polkit too: the rule is for the owner only.
    let run = host_as(Some("bob"), &["systemctl", "start", &unit]);
    assert_ne!(run.code, Some(0), "bob started alice's VM: {run:#?}");
    eprintln!("bob: systemctl start: {}", run.stderr.trim());
    assert_eq!(unit_property(&unit, "ActiveState"), "inactive");

    // carol: manage-any through a group rule.
    host(&[
        "sh",
        "-c",
        &format!(
            "printf '%s\\n' 'polkit.addRule(function(action, subject) {{' \
             '  if (action.id == \"org.vmctl.vm.manage-any\" && subject.isInGroup(\"vmadmins\"))' \
             '    return polkit.Result.YES;' '}});' > {ADMIN_RULE}"
        ),
    ])
    .ok();
    let all = wait_for_admin_rule().ok().stdout;
    let listed = names(&all);
    assert!(
        listed.contains(&VM.to_string()) && listed.contains(&VM_DBUS.to_string()),
        "{all}"
    );
    assert!(all.contains("\"owner\": \"alice\""), "{all}");
    assert!(
        names(&vmctl("carol", &["list", "--json"]).ok().stdout).is_empty(),
        "without --all carol lists only her own VMs"
    );
    vmctl("carol", &["describe", VM]).ok();
    dbus_send("carol", "Describe", VM).ok();

    // alice starts her VM with systemctl (systemd asks polkit; the rule
    // reads the ownership record) and stops it; then with vmctl.
    host_as(Some("alice"), &["systemctl", "start", &unit]).ok();
    assert_eq!(unit_property(&unit, "ActiveState"), "active");
    // bob can stop it neither way while it runs.
    like_missing("bob: vmctl stop (running)", |name| {
        vmctl("bob", &["stop", name])
    });
    let run = host_as(Some("bob"), &["systemctl", "stop", &unit]);
    assert_ne!(run.code, Some(0), "bob stopped alice's VM: {run:#?}");
    assert_eq!(unit_property(&unit, "ActiveState"), "active");
    host_as(Some("alice"), &["systemctl", "stop", &unit]).ok();
    assert_eq!(unit_property(&unit, "ActiveState"), "inactive");
    vmctl("alice", &["start", VM]).ok();
    assert_eq!(unit_property(&unit, "ActiveState"), "active");
    vmctl("alice", &["stop", VM]).ok();
    assert_eq!(unit_property(&unit, "ActiveState"), "inactive");
    // Over D-Bus: alice's stop of her (stopped) VM is allowed.
    busctl("alice", "Stop", &["s", VM]).ok();
    // manage-any manages, too (a stop of the stopped VM: no boot).
    vmctl("carol", &["stop", VM]).ok();
    busctl("carol", "Stop", &["s", VM]).ok();

    // root: everything; alice does not see root's VM.
    host(&["vmctl", "create", ROOT_VM, "--memory", "512M"]).ok();
    let root_list = names(&host(&["vmctl", "list", "--json"]).ok().stdout);
    assert!(
        root_list.contains(&VM.to_string()) && root_list.contains(&ROOT_VM.to_string()),
        "{root_list:?}"
    );
    host(&["vmctl", "describe", VM]).ok();
    let hidden = vmctl("alice", &["describe", ROOT_VM]);
    assert!(
        hidden.code == Some(1) && hidden.stderr.contains("(io.vmctl.Manager.NoSuchVM)"),
        "{hidden:#?}"
    );
    host(&["vmctl", "rm", ROOT_VM]).ok();

    // alice removes her VMs, over both front ends; the records go.
    vmctl("alice", &["rm", VM]).ok();
    busctl("alice", "Remove", &["s", VM_DBUS]).ok();
    assert!(names(&vmctl("alice", &["list", "--json"]).ok().stdout).is_empty());
    let run = host(&["test", "-e", &record]);
    assert_ne!(run.code, Some(0), "the ownership record outlived the VM");
}

/// A rule that makes mallory's create need an administrator's password
/// (root's), so that polkit asks through an agent.
const PROMPT_RULE: &str = "/etc/polkit-1/rules.d/40-vmctl-test-prompt.rules";
const PROMPT_VM: &str = "prompt1";
/// The VM mallory creates from a login session.
const PROMPT_VM_SESSION: &str = "prompt2";

/// Runs `command` as `user` (root when `None`) on a terminal (`script`
/// gives it a pty as stdin), waits for a password prompt, types `password`
/// if one comes, and returns everything the terminal showed and the
/// command's exit status.
fn on_a_terminal(user: Option<&str>, command: &str, password: &str) -> (String, String) {
    let script = format!(
        r#"set -u
dir=$(mktemp -d); mkfifo "$dir/in"
( script -qfec "{command}; echo EXIT=\$?" /dev/null < "$dir/in" > "$dir/out" 2>&1 ) &
exec 3>"$dir/in"
for i in $(seq 100); do grep -q -e 'Password:' -e 'EXIT=' "$dir/out" && break; sleep 0.2; done
if grep -q 'Password:' "$dir/out"; then sleep 0.5; printf '%s\n' '{password}' >&3; fi
exec 3>&-
wait
cat "$dir/out"; rm -rf "$dir"
"#
    );
    let run = host_as(user, &["bash", "-c", &script]);
    let out = run.stdout.replace('\r', "");
    let status = out
        .lines()
        .find_map(|l| l.strip_prefix("EXIT="))
        .unwrap_or("none")
        .to_string();
    (out, status)
}

/// `vmctl ARGS` as mallory on a terminal, outside any logind session (as
/// every command the tests run in the host): see [`on_a_terminal`].
fn vmctl_on_a_terminal(args: &str, password: &str) -> (String, String) {
    on_a_terminal(Some("mallory"), &format!("vmctl {args}"), password)
}

/// The command lines of the agents polkitd registered since `since` (a
/// `journalctl --since` time).
fn agents_registered_since(since: &str) -> Vec<String> {
    let journal = host(&["journalctl", "-u", "polkit", "-o", "cat", "--since", since]).ok();
    journal
        .stdout
        .lines()
        .filter(|l| l.starts_with("Registered Authentication Agent"))
        .filter_map(|l| l.split_once('[')?.1.split_once(']'))
        .map(|(command, _)| command.to_string())
        .collect()
}

/// The dev host's clock, for [`agents_registered_since`].
fn host_now() -> String {
    host(&["date", "+@%s.%N"]).ok().stdout.trim().to_string()
}

/// vmctl on a terminal starts pkttyagent by itself (as systemctl does):
/// polkit's AUTH_ADMIN for mallory's create becomes a password prompt on
/// her terminal and root's password lets the create through;
/// `--no-ask-password` is refused naming the action, without a prompt.
/// Both where polkitd finds no logind session for vmctl (the agent is
/// registered for the process alone) and in a login session made by
/// `pam_systemd` (registered with `--fallback`, as systemctl does).
#[test]
#[ignore = "needs the systemd dev host: run `cargo xtask test`"]
fn password_prompt_on_a_terminal() {
    ensure_test_users();
    host(&["vmctl", "rm", PROMPT_VM]);
    host(&["vmctl", "rm", PROMPT_VM_SESSION]);
    let password = "vmctl-prompt-test";
    host(&["sh", "-c", &format!("echo 'root:{password}' | chpasswd")]).ok();
    let rule = r#"polkit.addRule(function(action, subject) {
    if (action.id == "org.vmctl.vm.create" && subject.user == "mallory")
        return polkit.Result.AUTH_ADMIN;
});
polkit.addAdminRule(function(action, subject) {
    if (action.id == "org.vmctl.vm.create" && subject.user == "mallory")
        return ["unix-user:root"];
});
"#;
    host(&[
        "sh",
        "-c",
        &format!("cat > {PROMPT_RULE} <<'EOF'\n{rule}EOF"),
    ])
    .ok();
    struct RemoveRule;
    impl Drop for RemoveRule {
        fn drop(&mut self) {
            host(&["rm", "-f", PROMPT_RULE]);
            host(&["vmctl", "rm", PROMPT_VM]);
            host(&["vmctl", "rm", PROMPT_VM_SESSION]);
            host(&["passwd", "-l", "root"]);
        }
    }
    let _cleanup = RemoveRule;
    // polkitd reloads its rules when the directory changes.
    thread::sleep(Duration::from_secs(2));

    let create = format!("create {PROMPT_VM} --memory 512M --network none");
    let (out, status) = vmctl_on_a_terminal(&format!("--no-ask-password {create}"), password);
    assert!(
        !out.contains("Password:"),
        "prompted despite --no-ask-password:\n{out}"
    );
    assert_eq!(status, "1", "{out}");
    assert!(out.contains("org.vmctl.vm.create"), "{out}");

    // Outside a session (runuser from nsenter): polkitd would ignore a
    // --fallback agent there ("no agent is available").
    let since = host_now();
    let (out, status) = vmctl_on_a_terminal(&create, password);
    assert!(
        out.contains("AUTHENTICATING FOR org.vmctl.vm.create"),
        "{out}"
    );
    assert!(out.contains("Password:"), "{out}");
    assert_eq!(
        status, "0",
        "root's password did not let the create through:\n{out}"
    );
    let owner = host(&["vmctl", "describe", PROMPT_VM, "--json"])
        .ok()
        .stdout;
    let owner: Value = serde_json::from_str(&owner).unwrap();
    assert_eq!(owner["owner"], "mallory", "{owner}");
    let agents = agents_registered_since(&since);
    assert!(
        agents.len() == 1
            && agents[0].starts_with("pkttyagent")
            && !agents[0].contains("--fallback"),
        "{agents:?}"
    );

    // In a logind session (pam_systemd through PAMName=login): the agent
    // is a fallback, and with no other agent in the session it prompts.
    let since = host_now();
    let (out, status) = on_a_terminal(
        None,
        &format!(
            "systemd-run --quiet --pty --wait -p PAMName=login -p User=mallory \
             vmctl create {PROMPT_VM_SESSION} --memory 512M --network none"
        ),
        password,
    );
    assert!(out.contains("Password:"), "{out}");
    assert_eq!(status, "0", "{out}");
    let owner = host(&["vmctl", "describe", PROMPT_VM_SESSION, "--json"])
        .ok()
        .stdout;
    let owner: Value = serde_json::from_str(&owner).unwrap();
    assert_eq!(owner["owner"], "mallory", "{owner}");
    let agents = agents_registered_since(&since);
    assert!(
        agents.len() == 1 && agents[0].contains("--fallback"),
        "{agents:?}"
    );
}
