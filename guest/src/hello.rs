//! The host's side of the guest agent's `hello`: read it with a size cap
//! and a deadline, and check every field strictly before anything uses it.
//!
//! Anyone in the guest can connect to host port [`crate::HELLO_PORT`], not
//! just the agent, so a hello is untrusted input. [`read_hello`] accepts a
//! frame of at most [`MAX_HELLO_FRAME`] bytes (far below the protocol's
//! 1 MiB) that arrives within the caller's deadline; [`check`] then allows:
//!
//! - `kernel_release`: 1 to 64 characters of `[A-Za-z0-9._+~-]`;
//! - `version`: the same rule;
//! - `boot_id`: 32 hexadecimal digits, either plain or in the canonical
//!   UUID form with its 4 dashes (8-4-4-4-12), which is what the agent
//!   reads from `/proc/sys/kernel/random/boot_id`; it is normalised to 32
//!   lowercase hex digits;
//! - `uptime_secs`: any number (the JSON decoder already insists on an
//!   unsigned integer).
//!
//! Error messages quote the offending value escaped (`{:?}`) and cut to
//! [`SHOWN_MAX`] characters, so they are safe to log.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::{read_frame, Control, Frame, Hello};

/// The largest hello frame accepted, length prefix included. A real hello
/// is about 150 bytes.
pub const MAX_HELLO_FRAME: usize = 4096;

/// Longest kernel release or agent version accepted.
pub const MAX_FIELD: usize = 64;

/// Characters of a rejected value quoted in an error message.
pub const SHOWN_MAX: usize = 80;

/// A hello whose every field passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedHello {
    /// The agent's version (`[A-Za-z0-9._+~-]{1,64}`).
    pub version: String,
    /// The guest kernel release (`[A-Za-z0-9._+~-]{1,64}`).
    pub kernel_release: String,
    /// The guest's boot ID: 32 lowercase hexadecimal digits.
    pub boot_id: String,
    /// Seconds since the guest booted.
    pub uptime_secs: u64,
}

/// Why a connection did not deliver a valid hello. The message is safe to
/// log: guest text in it is escaped and cut short.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// Nothing complete arrived before the deadline.
    #[error("no complete hello within {0:?}")]
    Timeout(Duration),
    /// The connection failed or closed early.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than [`MAX_HELLO_FRAME`] (or 0).
    #[error("frame of {0} bytes refused (a hello is at most {max} bytes)", max = MAX_HELLO_FRAME)]
    BadSize(u64),
    /// The frame is not a well-formed control message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A well-formed frame that is not a hello.
    #[error("not a hello but {0}")]
    NotHello(String),
    /// A hello with a field that breaks its rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong, with the value escaped.
        reason: String,
    },
}

/// `text` quoted and escaped for a log line, cut to [`SHOWN_MAX`] characters.
pub fn shown(text: &str) -> String {
    let mut cut: String = text.chars().take(SHOWN_MAX).collect();
    let more = cut.len() < text.len();
    cut = format!("{cut:?}");
    if more {
        cut.push_str("...");
    }
    cut
}

fn token(field: &'static str, value: &str) -> Result<(), HelloError> {
    let invalid = |reason: String| HelloError::Invalid { field, reason };
    if value.is_empty() {
        return Err(invalid("empty".into()));
    }
    if value.chars().count() > MAX_FIELD {
        return Err(invalid(format!(
            "{} characters (at most {MAX_FIELD}): {}",
            value.chars().count(),
            shown(value)
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._+~-".contains(*c)))
    {
        return Err(invalid(format!(
            "character {bad:?} outside [A-Za-z0-9._+~-] in {}",
            shown(value)
        )));
    }
    Ok(())
}

/// The boot ID as 32 lowercase hex digits, from either 32 hex digits or the
/// canonical UUID form `8-4-4-4-12`.
fn boot_id(value: &str) -> Result<String, HelloError> {
    let canonical_dashes = [8, 13, 18, 23];
    let digits: Option<String> = match value.len() {
        32 => Some(value.to_owned()),
        36 if value
            .char_indices()
            .all(|(i, c)| (c == '-') == canonical_dashes.contains(&i)) =>
        {
            Some(value.replace('-', ""))
        }
        _ => None,
    };
    match digits {
        Some(d) if d.len() == 32 && d.chars().all(|c| c.is_ascii_hexdigit()) => {
            Ok(d.to_ascii_lowercase())
        }
        _ => Err(HelloError::Invalid {
            field: "boot_id",
            reason: format!(
                "{} is not 32 hex digits (plain or as a UUID with 4 dashes)",
                shown(value)
            ),
        }),
    }
}

/// Checks every field of `hello` (rules in the module documentation).
pub fn check(hello: Hello) -> Result<CheckedHello, HelloError> {
    token("kernel_release", &hello.kernel_release)?;
    token("version", &hello.version)?;
    let boot_id = boot_id(&hello.boot_id)?;
    Ok(CheckedHello {
        version: hello.version,
        kernel_release: hello.kernel_release,
        boot_id,
        uptime_secs: hello.uptime_secs,
    })
}

/// Reads one hello frame from `stream` within `deadline` and checks it.
/// At most [`MAX_HELLO_FRAME`] bytes are read, whatever the peer announces.
pub async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Result<CheckedHello, HelloError> {
    let hello = tokio::time::timeout(deadline, read_capped(stream))
        .await
        .map_err(|_| HelloError::Timeout(deadline))??;
    check(hello)
}

async fn read_capped<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Hello, HelloError> {
    let mut frame = vec![0u8; 4];
    stream.read_exact(&mut frame).await?;
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    if len == 0 || len as usize > MAX_HELLO_FRAME - 4 {
        return Err(HelloError::BadSize(u64::from(len) + 4));
    }
    frame.resize(4 + len as usize, 0);
    stream.read_exact(&mut frame[4..]).await?;
    // The whole frame is in memory: the protocol's decoder cannot read more.
    match read_frame(&mut frame.as_slice()).await {
        Ok(Some(Frame::Control(Control::Hello(hello)))) => Ok(hello),
        Ok(Some(Frame::Control(other))) => {
            let kind = serde_json::to_value(&other)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
                .unwrap_or_default();
            Err(HelloError::NotHello(format!("a {} message", shown(&kind))))
        }
        Ok(Some(_)) => Err(HelloError::NotHello("a data frame".into())),
        Ok(None) => Err(HelloError::Malformed("empty".into())),
        Err(e) => Err(HelloError::Malformed(shown(&e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(kernel_release: &str, boot_id: &str) -> Hello {
        Hello {
            version: "0.1.0".into(),
            kernel_release: kernel_release.into(),
            boot_id: boot_id.into(),
            uptime_secs: 12,
        }
    }

    const UUID: &str = "0b3f2a4e-9c1d-4e5f-8a7b-6c5d4e3f2a1b";

    #[test]
    fn validation_table() {
        let good = check(hello("6.12.57+deb13-cloud-amd64", UUID)).unwrap();
        assert_eq!(good.boot_id, "0b3f2a4e9c1d4e5f8a7b6c5d4e3f2a1b");
        assert_eq!(good.kernel_release, "6.12.57+deb13-cloud-amd64");
        assert!(check(hello("6.1~rc1_x", &"AB".repeat(16))).is_ok());
        assert_eq!(
            check(hello("6.1", &"AB".repeat(16))).unwrap().boot_id,
            "ab".repeat(16)
        );
        assert!(check(hello(&"a".repeat(64), UUID)).is_ok());

        let bad = [
            (
                "newline in release",
                hello("6.1\nMAINPID=1\nSTATUS=x", UUID),
                "kernel_release",
            ),
            (
                "65 characters",
                hello(&"a".repeat(65), UUID),
                "kernel_release",
            ),
            ("empty release", hello("", UUID), "kernel_release"),
            ("unicode", hello("6.1-ü", UUID), "kernel_release"),
            (
                "escape sequence",
                hello("6.1\u{1b}[2J", UUID),
                "kernel_release",
            ),
            ("space", hello("6.1 x", UUID), "kernel_release"),
            ("NUL", hello("6.1\0", UUID), "kernel_release"),
            ("short boot id", hello("6.1", "0b3f2a4e"), "boot_id"),
            ("non-hex boot id", hello("6.1", &"g".repeat(32)), "boot_id"),
            ("33 digits", hello("6.1", &"a".repeat(33)), "boot_id"),
            (
                "dashes misplaced",
                hello("6.1", "0b3f2a4e9-c1d-4e5f-8a7b-6c5d4e3f2a1b"),
                "boot_id",
            ),
            (
                "36 characters with a newline",
                hello("6.1", "0b3f2a4e-9c1d-4e5f-8a7b-6c5d4e3f2a\n1"),
                "boot_id",
            ),
            ("empty boot id", hello("6.1", ""), "boot_id"),
        ];
        for (what, h, field) in bad {
            match check(h) {
                Err(HelloError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field, "{what}");
                    assert!(
                        !reason.chars().any(char::is_control),
                        "{what}: reason {reason:?} carries a control character"
                    );
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        let mut bad_version = hello("6.1", UUID);
        bad_version.version = "1.0\nSTATUS=x".into();
        assert!(matches!(
            check(bad_version),
            Err(HelloError::Invalid {
                field: "version",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn reads_a_hello_frame() {
        let bytes = Frame::Control(Control::Hello(hello("6.1", UUID))).encode();
        let got = read_hello(&mut bytes.as_slice(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.kernel_release, "6.1");
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_from_the_prefix() {
        // Announces 1 MiB (allowed by the protocol) and sends a little:
        // refused at once, nothing more is read.
        let mut bytes = ((1u32 << 20) + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[1, b'{']);
        let err = read_hello(&mut bytes.as_slice(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HelloError::BadSize(_)), "{err:?}");
        // A hello padded past the cap with a long release.
        let big = Frame::Control(Control::Hello(hello(&"a".repeat(5000), UUID))).encode();
        let err = read_hello(&mut big.as_slice(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HelloError::BadSize(_)), "{err:?}");
    }

    #[tokio::test]
    async fn other_frames_and_garbage_are_not_hellos() {
        let health = Frame::Control(Control::Health).encode();
        let err = read_hello(&mut health.as_slice(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HelloError::NotHello(_)), "{err:?}");
        let mut garbage = 8u32.to_be_bytes().to_vec();
        garbage.push(1);
        garbage.extend_from_slice(b"{\"\n\x1b[2J");
        let err = read_hello(&mut garbage.as_slice(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HelloError::Malformed(_)), "{err:?}");
        assert!(!err.to_string().chars().any(char::is_control), "{err}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (mut near, _far) = tokio::io::duplex(64);
        let err = read_hello(&mut near, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, HelloError::Timeout(_)), "{err:?}");
    }
}
