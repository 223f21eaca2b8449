//! A polkit authentication agent on the caller's terminal (`pkttyagent`,
//! from the polkitd package): an action that polkit allows only after
//! authentication then prompts here instead of being refused. Started the
//! way systemctl starts its agent ([`wanted`]).

use std::{
    io::{self, IsTerminal, Read},
    os::fd::AsRawFd,
    process::{Child, Command},
};

/// Whether to start the agent, as systemctl decides: not with
/// `--no-ask-password`, not for root (vmctld never asks polkit about
/// root), and only when stdin is a terminal (someone can answer) unless
/// `--ask-password` insists.
pub fn wanted(ask_password: bool, no_ask_password: bool) -> bool {
    decide(
        ask_password,
        no_ask_password,
        rustix::process::geteuid().is_root(),
        io::stdin().is_terminal(),
    )
}

fn decide(ask_password: bool, no_ask_password: bool, root: bool, terminal: bool) -> bool {
    !no_ask_password && !root && (terminal || ask_password)
}

/// A running `pkttyagent` registered for this process; stopped on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
}

impl Agent {
    /// Starts `pkttyagent` for this process and waits until it has
    /// registered with polkit (it closes its notify descriptor then).
    ///
    /// In a logind session it is registered with `--fallback`, as
    /// systemctl does: an agent the session already has (a desktop's)
    /// wins. Outside a session (`su`, `runuser`, ssh without
    /// `pam_systemd`, a container entered with `nsenter`) it is not:
    /// polkitd 126 looks up a fallback agent only through the subject's
    /// session and so never uses it there ("no agent is available"; seen
    /// in the dev host, where the same agent without `--fallback` prompts).
    pub fn start() -> io::Result<Agent> {
        let (mut ready, notify) = io::pipe()?;
        // pkttyagent must inherit the write end across exec. vmctl has no
        // other threads yet (this runs before the runtime starts), so no
        // other child can inherit it by accident.
        rustix::io::fcntl_setfd(&notify, rustix::io::FdFlags::empty())?;
        let mut command = Command::new("pkttyagent");
        command.args(["--notify-fd", &notify.as_raw_fd().to_string()]);
        if in_login_session() {
            command.arg("--fallback");
        }
        let spawned = command
            .args(["--process", &std::process::id().to_string()])
            .spawn();
        drop(notify);
        let mut child = spawned?;
        // End of file once pkttyagent registered (or died).
        ready.read_to_end(&mut Vec::new())?;
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("pkttyagent ended: {status}")));
        }
        Ok(Agent { child })
    }
}

/// Whether this process belongs to a logind session, decided as polkitd
/// decides it for a subject (`sd_pid_get_session`): below the slices of
/// its cgroup, the first unit is a `session-ID.scope`.
fn in_login_session() -> bool {
    std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|cgroups| session_cgroup(&cgroups))
}

/// [`in_login_session`] for the text of `/proc/PID/cgroup`: the unified
/// hierarchy (`0::PATH`) or, on a hybrid host, systemd's own
/// (`N:name=systemd:PATH`).
fn session_cgroup(cgroups: &str) -> bool {
    cgroups.lines().any(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        matches!(controllers, Some("" | "name=systemd"))
            && path
                .and_then(|path| {
                    path.split('/')
                        .find(|unit| !unit.is_empty() && !unit.ends_with(".slice"))
                })
                .is_some_and(|unit| unit.starts_with("session-") && unit.ends_with(".scope"))
    })
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::{decide, session_cgroup};

    #[test]
    fn asks_like_systemctl() {
        // (ask, no-ask, root, terminal) -> agent
        assert!(decide(false, false, false, true), "a user on a terminal");
        assert!(!decide(false, false, false, false), "no terminal");
        assert!(decide(true, false, false, false), "--ask-password insists");
        assert!(!decide(false, true, false, true), "--no-ask-password");
        assert!(!decide(false, false, true, true), "root is never asked");
    }

    #[test]
    fn a_session_is_the_first_unit_below_the_slices() {
        let unified = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert!(session_cgroup(unified));
        let hybrid = "9:name=systemd:/user.slice/user-1000.slice/session-c2.scope\n\
                      1:cpu:/\n0::/user.slice/user-1000.slice/session-c2.scope\n";
        assert!(session_cgroup(hybrid));
        // A user service manager's process, a system service, a process
        // from outside the container (the dev host's nsenter), cpu only.
        for cgroups in [
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope\n",
            "0::/system.slice/ssh.service\n",
            "9:name=systemd:/..\n0::/..\n",
            "1:cpu:/user.slice/user-1000.slice/session-3.scope\n0::/\n",
        ] {
            assert!(!session_cgroup(cgroups), "{cgroups}");
        }
    }
}
