//! The one way the launcher talks to systemd: sd_notify messages checked
//! before they are sent.
//!
//! systemd reads a notification as newline-separated `KEY=VALUE` lines and
//! believes a root sender's `MAINPID=`: a newline inside a field would let
//! its text set any other field. So every field is refused if it holds a
//! newline or any other control character, and the message is not sent at
//! all (the refusal is logged, escaped). Guest text never goes into a field
//! in the first place: `STATUS=` only carries the launcher's own words.

use sd_notify::NotifyState;
use tracing::{info, warn};
use vmctl_vmm::escape_log_text;

/// Checks every field of a notification; the error says which one is
/// unsafe, escaped.
pub fn check(states: &[NotifyState]) -> Result<(), String> {
    for state in states {
        let line = state.to_string();
        if line.chars().any(char::is_control) {
            return Err(format!(
                "refusing to send {} to systemd: a field holds a newline or control character",
                escape_log_text(line.as_bytes())
            ));
        }
    }
    Ok(())
}

/// Sends `states` to systemd if every field passes [`check`]; outside
/// systemd (no `NOTIFY_SOCKET`) a no-op.
pub fn notify(states: &[NotifyState]) -> Result<(), String> {
    check(states)?;
    sd_notify::notify(false, states).map_err(|e| format!("sd_notify failed: {e}"))
}

/// [`notify`], logging a failure instead of returning it.
pub fn notify_or_warn(states: &[NotifyState]) {
    if let Err(e) = notify(states) {
        warn!("{e}");
    }
}

/// Logs `text` and makes it the unit's `STATUS=`.
pub fn status(text: &str) {
    info!("{}", escape_log_text(text.as_bytes()));
    notify_or_warn(&[NotifyState::Status(text)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn fields_with_newlines_or_control_characters_are_refused() {
        assert!(check(&[NotifyState::Ready, NotifyState::Status("Running")]).is_ok());
        assert!(check(&[NotifyState::Status("Starting Qemu with 2 vCPUs, 1024 MiB")]).is_ok());
        for bad in [
            "6.1\nMAINPID=1234\nSTATUS=x",
            "x\rMAINPID=1",
            "tab\there",
            "nul\0",
            "escape \u{1b}[2J",
            "del \u{7f}",
            "c1 \u{85}",
        ] {
            let err = check(&[NotifyState::Ready, NotifyState::Status(bad)]).unwrap_err();
            assert!(!err.chars().any(char::is_control), "{err:?}");
        }
        assert!(check(&[NotifyState::Custom("X_A=1\nMAINPID=1")]).is_err());
    }

    /// The real sender against a real notify socket: a refused message
    /// sends nothing at all (not even its harmless fields).
    #[test]
    fn a_refused_message_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        // No other test in this binary sets or reads NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let refused = notify(&[
            NotifyState::Ready,
            NotifyState::Status("6.1\nMAINPID=1\nSTATUS=x"),
        ]);
        notify(&[NotifyState::Status("Running")]).unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(refused.is_err());
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=Running\n");
        assert!(socket.recv(&mut buf).is_err(), "only one datagram was sent");
    }
}
