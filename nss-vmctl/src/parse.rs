//! The two record formats of the hosts directory (see the crate docs).
//!
//! - `name/<name>` holds `IPV4[ IPV6]\n`;
//! - `addr/<ip>` holds `NAME\n`.
//!
//! Parsing is strict: exactly one line, one space between fields, a final
//! newline. Records are only ever replaced whole (`rename`), so a record that
//! does not parse was damaged by something other than vmctld (a truncated
//! copy, an editor) and is treated as absent rather than guessed at.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest VM name: a single DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// Largest record the module reads; anything longer is corrupt. The longest
/// valid record is `255.255.255.255 ffff:…:ffff\n`, 56 bytes.
pub const MAX_RECORD_LEN: usize = 128;

/// Whether `name` is a valid VM name: one DNS label of 1 to 63 ASCII letters,
/// digits and hyphens, not starting or ending with a hyphen.
pub fn is_valid_vm_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// The single line of a record without its final newline; `None` when the
/// record is empty, too long, not UTF-8, lacks the final newline or has more
/// than one line.
fn single_line(record: &[u8]) -> Option<&str> {
    if record.len() > MAX_RECORD_LEN {
        return None;
    }
    let line = record.strip_suffix(b"\n")?;
    if line.is_empty() || line.contains(&b'\n') {
        return None;
    }
    std::str::from_utf8(line).ok()
}

/// Parses a `name/<name>` record: `IPV4\n` or `IPV4 IPV6\n`.
pub fn parse_name_record(record: &[u8]) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
    let line = single_line(record)?;
    let (v4, v6) = match line.split_once(' ') {
        Some((v4, v6)) => (v4, Some(v6.parse::<Ipv6Addr>().ok()?)),
        None => (line, None),
    };
    Some((v4.parse().ok()?, v6))
}

/// Renders a `name/<name>` record; [`parse_name_record`] reads it back.
pub fn format_name_record(ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> String {
    match ipv6 {
        Some(v6) => format!("{ipv4} {v6}\n"),
        None => format!("{ipv4}\n"),
    }
}

/// Parses an `addr/<ip>` record: `NAME\n` with a valid VM name.
pub fn parse_addr_record(record: &[u8]) -> Option<&str> {
    single_line(record).filter(|name| is_valid_vm_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["blog", "a", "web-1", "X9", &"a".repeat(63)] {
            assert!(is_valid_vm_name(name), "{name}");
        }
        for name in ["", "-a", "a-", "a.b", "a_b", "blög", "a b", &"a".repeat(64)] {
            assert!(!is_valid_vm_name(name), "{name}");
        }
    }

    #[test]
    fn name_records_round_trip() {
        let v4 = Ipv4Addr::new(10, 77, 0, 2);
        let v6: Ipv6Addr = "fd77:766d:6374::2".parse().unwrap();
        for v6 in [None, Some(v6), Some(Ipv6Addr::from([0xffff; 8]))] {
            let text = format_name_record(Ipv4Addr::BROADCAST, v6);
            assert!(text.len() <= MAX_RECORD_LEN);
            assert_eq!(
                parse_name_record(text.as_bytes()),
                Some((Ipv4Addr::BROADCAST, v6))
            );
        }
        assert_eq!(
            parse_name_record(b"10.77.0.2 fd77:766d:6374::2\n"),
            Some((v4, Some(v6)))
        );
    }

    #[test]
    fn damaged_name_records_are_refused() {
        for record in [
            &b""[..],
            b"\n",
            b"10.77.0.2",
            b"10.77.0.2 fd77:766d:6374::2",
            b"10.77.0.2 fd77:766d\n",
            b"10.77.0\n",
            b"10.77.0.2  fd77::2\n",
            b"10.77.0.2 fd77::2 x\n",
            b" 10.77.0.2\n",
            b"10.77.0.2\n\n",
            b"10.77.0.2\r\n",
            b"fd77::2\n",
            b"10.77.0.2 10.77.0.3\n",
            b"\xff\xfe\n",
            &[b'1'; 200],
        ] {
            assert_eq!(parse_name_record(record), None, "{record:?}");
        }
    }

    #[test]
    fn addr_records() {
        assert_eq!(parse_addr_record(b"blog\n"), Some("blog"));
        for record in [
            &b""[..],
            b"blog",
            b"blo",
            b"-blog\n",
            b"blog web\n",
            b"blog\nweb\n",
            b"a.b\n",
            b"\0\n",
        ] {
            assert_eq!(parse_addr_record(record), None, "{record:?}");
        }
    }
}
