//! PID-1 mode: in an image without an init (an imported container),
//! `/sbin/init` is the agent itself. As PID 1 it mounts what a Linux
//! userspace expects (`/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`,
//! `/run`, `/tmp`), sets the hostname from `systemd.hostname=` on the
//! kernel command line, runs the agent proper as its child (restarted if it
//! dies), reaps every orphan, and powers off on the ACPI power button,
//! `SIGUSR2` or `SIGTERM` (what the agent's shutdown request sends it;
//! `SIGINT`, ctrl-alt-del, reboots).
//!
//! The agent is a child, not PID 1 itself, so reaping orphans never takes
//! the exit status of a command the agent is waiting for.

use std::{
    fs,
    io::Read,
    path::Path,
    process::{Child, Command},
    thread,
    time::Duration,
};

use nix::{
    mount::{mount, MsFlags},
    sys::{
        reboot::{reboot, RebootMode},
        signal::{kill, SigSet, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{sethostname, sync, Pid},
};

/// Set in the agent's environment by PID 1: the agent's shutdown request
/// signals PID 1 instead of asking systemd.
pub const INIT_ENV: &str = "VMCTL_GUEST_INIT";

/// The `PATH` commands run with (the kernel gives PID 1 none).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Whether the agent runs under [`run`] (so shutdown goes to PID 1).
pub fn under_init() -> bool {
    std::env::var_os(INIT_ENV).is_some()
}

/// Asks PID 1 to power off (`reboot` false) or reboot.
pub fn request_shutdown(reboot: bool) -> nix::Result<()> {
    let signal = if reboot {
        Signal::SIGINT
    } else {
        Signal::SIGUSR2
    };
    kill(Pid::from_raw(1), signal)
}

/// Runs as PID 1; never returns.
pub fn run() -> ! {
    let signals = [
        Signal::SIGCHLD,
        Signal::SIGUSR2,
        Signal::SIGTERM,
        Signal::SIGINT,
    ];
    let mut set = SigSet::empty();
    for s in signals {
        set.add(s);
    }
    // Blocked here and taken with sigwait below; children get an empty
    // mask (std's spawn resets it).
    let _ = set.thread_block();
    mount_basics();
    if let Some(name) = cmdline_value("systemd.hostname") {
        let _ = sethostname(name);
    }
    watch_power_button();
    let mut agent = spawn_agent();
    loop {
        let Ok(signal) = set.wait() else { continue };
        match signal {
            Signal::SIGCHLD => {
                if reap(agent.as_ref().map(Child::id)) {
                    eprintln!("vmctl init: the agent exited; restarting it");
                    thread::sleep(Duration::from_secs(1));
                    agent = spawn_agent();
                }
            }
            Signal::SIGINT => shutdown(RebootMode::RB_AUTOBOOT),
            _ => shutdown(RebootMode::RB_POWER_OFF),
        }
    }
}

fn spawn_agent() -> Option<Child> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/sbin/init".into());
    match Command::new(exe)
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env(INIT_ENV, "1")
        .spawn()
    {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!("vmctl init: cannot start the agent: {e}");
            None
        }
    }
}

/// Reaps every exited child; true when `agent` was one of them.
fn reap(agent: Option<u32>) -> bool {
    let mut agent_gone = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                if Some(pid.as_raw() as u32) == agent {
                    agent_gone = true;
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return agent_gone,
            Ok(_) => {}
        }
    }
}

fn mount_basics() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>, u32); 7] = [
        ("/proc", "proc", nodev, None, 0o555),
        ("/sys", "sysfs", nodev, None, 0o555),
        (
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
            0o755,
        ),
        (
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
            0o755,
        ),
        (
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
            0o1777,
        ),
        (
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
            0o755,
        ),
        (
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
            0o1777,
        ),
    ];
    for (target, fstype, flags, data, mode) in mounts {
        if !Path::new(target).is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = fs::DirBuilder::new().mode(mode).create(target);
        }
        if let Err(e) = mount(Some(fstype), target, Some(fstype), flags, data) {
            // devtmpfs is mounted by the kernel already with
            // CONFIG_DEVTMPFS_MOUNT.
            if e != nix::errno::Errno::EBUSY {
                eprintln!("vmctl init: cannot mount {fstype} on {target}: {e}");
            }
        }
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
}

/// The value of `key=` on the kernel command line.
fn cmdline_value(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline_lookup(&cmdline, key)
}

fn cmdline_lookup(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|word| {
        word.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned)
    })
}

/// `KEY_POWER` presses on any input device send PID 1 `SIGUSR2`.
fn watch_power_button() {
    let Ok(entries) = fs::read_dir("/dev/input") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("event") {
            continue;
        }
        let path = entry.path();
        thread::spawn(move || {
            let Ok(mut dev) = fs::File::open(&path) else {
                return;
            };
            // struct input_event on 64-bit: timeval (16), type u16, code
            // u16, value i32.
            let mut ev = [0u8; 24];
            while dev.read_exact(&mut ev).is_ok() {
                let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                const EV_KEY: u16 = 1;
                const KEY_POWER: u16 = 116;
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    let _ = kill(Pid::from_raw(1), Signal::SIGUSR2);
                }
            }
        });
    }
}

/// Stops every process, syncs, remounts the root read-only and powers off
/// or reboots.
fn shutdown(mode: RebootMode) -> ! {
    eprintln!("vmctl init: stopping every process");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        reap(None);
        if kill_probe_none_left() {
            break;
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap(None);
    sync();
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    sync();
    let _ = reboot(mode);
    // reboot(2) returns only on failure; PID 1 must not exit.
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// True when no process but PID 1 is left (`kill(-1, 0)` finds none).
fn kill_probe_none_left() -> bool {
    kill(Pid::from_raw(-1), None) == Err(nix::errno::Errno::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_comes_from_the_kernel_command_line() {
        let c = "console=ttyS0 root=/dev/vda rw systemd.hostname=web1 panic=-1";
        assert_eq!(
            cmdline_lookup(c, "systemd.hostname").as_deref(),
            Some("web1")
        );
        assert_eq!(cmdline_lookup(c, "systemd.host"), None);
        assert_eq!(cmdline_lookup("quiet", "systemd.hostname"), None);
    }
}
