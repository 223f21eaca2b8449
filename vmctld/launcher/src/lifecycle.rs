//! Steps 5 and 7: how waiting for the guest and running it can end, and
//! what exit code each outcome gives the unit.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How the VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (asked by us or by itself): the VMM exited 0.
    PoweredOff,
    /// The VMM exited with a non-zero code.
    VmmFailed(i32),
    /// A signal killed the VMM.
    VmmKilled(i32),
    /// The guest ignored the power button; the VMM was killed.
    StopTimedOut,
    /// The guest never said hello in time.
    BootTimedOut,
    /// Something else went wrong (the message says what).
    Error(String),
}

impl Outcome {
    /// Classifies the VMM's exit status.
    pub fn from_vmm_exit(status: ExitStatus) -> Outcome {
        match (status.code(), status.signal()) {
            (Some(0), _) => Outcome::PoweredOff,
            (Some(code), _) => Outcome::VmmFailed(code),
            (None, Some(sig)) => Outcome::VmmKilled(sig),
            (None, None) => Outcome::Error(format!("VMM ended with {status}")),
        }
    }

    /// The launcher's exit code: 0 only for a clean power-off, so that
    /// `Restart=on-failure` restarts a crashed VM and not a stopped one.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::PoweredOff => 0,
            Outcome::BootTimedOut => 2,
            Outcome::StopTimedOut => 3,
            Outcome::VmmFailed(_) | Outcome::VmmKilled(_) => 4,
            Outcome::Error(_) => 1,
        }
    }

    /// A sentence for the journal.
    pub fn describe(&self) -> String {
        match self {
            Outcome::PoweredOff => "the guest powered off".into(),
            Outcome::VmmFailed(c) => format!("the VMM exited with code {c}"),
            Outcome::VmmKilled(s) => format!("the VMM was killed by signal {s}"),
            Outcome::StopTimedOut => {
                "the guest did not power off in time; the VMM was killed".into()
            }
            Outcome::BootTimedOut => "the guest agent did not say hello in time".into(),
            Outcome::Error(e) => e.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            Outcome::from_vmm_exit(ExitStatus::from_raw(0)),
            Outcome::PoweredOff
        );
        // Wait statuses: exit code in the second byte, signal in the low bits.
        assert_eq!(
            Outcome::from_vmm_exit(ExitStatus::from_raw(1 << 8)),
            Outcome::VmmFailed(1)
        );
        assert_eq!(
            Outcome::from_vmm_exit(ExitStatus::from_raw(9)),
            Outcome::VmmKilled(9)
        );
        assert_eq!(Outcome::PoweredOff.exit_code(), 0);
        for bad in [
            Outcome::VmmFailed(1),
            Outcome::VmmKilled(9),
            Outcome::StopTimedOut,
            Outcome::BootTimedOut,
            Outcome::Error("x".into()),
        ] {
            assert_ne!(bad.exit_code(), 0, "{bad:?}");
        }
    }
}
