//! Parsing of the `/run/vmctl/hosts` file.
//!
//! One VM per line: `NAME IPV4 [IPV6]`, fields separated by spaces or tabs.
//! `#` starts a comment that runs to the end of the line. Lines that do not
//! parse (bad name, bad address, missing IPv4) are ignored, so one bad line
//! never hides the others. Fields after the third are ignored (reserved for
//! future extensions). The first line for a given name wins.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest VM name: a single DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// One VM from the hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The VM name as written in the file (a single DNS label, no domain).
    pub name: &'a str,
    /// The VM's IPv4 address (always present).
    pub ipv4: Ipv4Addr,
    /// The VM's IPv6 address, if it has one.
    pub ipv6: Option<Ipv6Addr>,
}

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

/// Parses one line; `None` for blank, comment-only and malformed lines.
pub fn parse_line(line: &str) -> Option<Entry<'_>> {
    let data = line.split('#').next().unwrap_or("");
    let mut fields = data.split_ascii_whitespace();
    let name = fields.next()?;
    if !is_valid_vm_name(name) {
        return None;
    }
    let ipv4 = fields.next()?.parse::<Ipv4Addr>().ok()?;
    let ipv6 = match fields.next() {
        None => None,
        Some(field) => Some(field.parse::<Ipv6Addr>().ok()?),
    };
    Some(Entry { name, ipv4, ipv6 })
}

/// All well-formed entries of a hosts file, in file order.
pub fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(parse_line)
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
    fn parses_ipv4_only_and_dual_stack() {
        assert_eq!(
            parse_line("blog 10.0.0.2"),
            Some(Entry {
                name: "blog",
                ipv4: Ipv4Addr::new(10, 0, 0, 2),
                ipv6: None
            })
        );
        assert_eq!(
            parse_line("\tweb \t 10.0.0.3   fd00::3  "),
            Some(Entry {
                name: "web",
                ipv4: Ipv4Addr::new(10, 0, 0, 3),
                ipv6: Some("fd00::3".parse().unwrap())
            })
        );
    }

    #[test]
    fn comments_and_blank_lines() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("   "), None);
        assert_eq!(parse_line("# blog 10.0.0.2"), None);
        let entry = parse_line("blog 10.0.0.2 # the blog").unwrap();
        assert_eq!(entry.name, "blog");
        assert_eq!(entry.ipv6, None);
        let entry = parse_line("blog 10.0.0.2 fd00::2#x").unwrap();
        assert_eq!(entry.ipv6, Some("fd00::2".parse().unwrap()));
    }

    #[test]
    fn bad_lines_are_ignored() {
        for line in [
            "blog",
            "blog 10.0.0",
            "blog fd00::2",
            "blog 10.0.0.2 10.0.0.3",
            "blog 10.0.0.2 fd00::zz",
            "bad_name 10.0.0.2",
            "a.b 10.0.0.2",
            "10.0.0.2 blog",
        ] {
            assert_eq!(parse_line(line), None, "{line}");
        }
    }

    #[test]
    fn extra_fields_are_ignored() {
        let entry = parse_line("blog 10.0.0.2 fd00::2 future stuff").unwrap();
        assert_eq!(entry.ipv4, Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn entries_skips_bad_lines() {
        let text = "# vmctl hosts\nblog 10.0.0.2\ngarbage\n\nweb 10.0.0.3 fd00::3\r\n";
        let names: Vec<_> = entries(text).map(|e| e.name).collect();
        assert_eq!(names, ["blog", "web"]);
    }
}
