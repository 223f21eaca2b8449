//! A polkit authentication agent on the caller's terminal (`pkttyagent`,
//! from the polkitd package), for `vmctl --ask-password`: an action that
//! polkit allows only after authentication then prompts here instead of
//! being refused.

use std::{
    io::{self, Read},
    os::fd::AsRawFd,
    process::{Child, Command},
};

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
