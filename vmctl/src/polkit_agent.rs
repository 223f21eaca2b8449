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
    /// `--fallback`: an agent the session already has (a desktop's) wins.
    pub fn start() -> io::Result<Agent> {
        let (mut ready, notify) = io::pipe()?;
        // pkttyagent must inherit the write end across exec. vmctl has no
        // other threads yet (this runs before the runtime starts), so no
        // other child can inherit it by accident.
        rustix::io::fcntl_setfd(&notify, rustix::io::FdFlags::empty())?;
        let spawned = Command::new("pkttyagent")
            .args([
                "--notify-fd",
                &notify.as_raw_fd().to_string(),
                "--fallback",
                "--process",
                &std::process::id().to_string(),
            ])
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

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn asks_like_systemctl() {
        // (ask, no-ask, root, terminal) -> agent
        assert!(decide(false, false, false, true), "a user on a terminal");
        assert!(!decide(false, false, false, false), "no terminal");
        assert!(decide(true, false, false, false), "--ask-password insists");
        assert!(!decide(false, true, false, true), "--no-ask-password");
        assert!(!decide(false, false, true, true), "root is never asked");
    }
}
