//! Byte sizes as people write them (`512M`, `1G`, `1GiB`, `2048M`, plain
//! bytes) and as vmctl prints them (`1 GiB`, `23.4 GiB`).
//!
//! Suffixes are binary (K = 1024), as for `systemctl set-property
//! MemoryMax=1G`; a trailing `B`/`iB` is accepted and ignored.

use std::fmt;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// One tebibyte.
pub const TIB: u64 = 1 << 40;

/// A size that could not be parsed; says which value was meant and how to
/// write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSize {
    /// What the size is for, e.g. `memory`.
    pub what: String,
    /// The text as given.
    pub value: String,
}

impl fmt::Display for InvalidSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} size {:?}: expected a number with an optional K/M/G/T suffix, e.g. 2G",
            self.what, self.value
        )
    }
}

impl std::error::Error for InvalidSize {}

/// Parses `text` as a size in bytes; `what` names the value in the error.
pub fn parse_size(what: &str, text: &str) -> Result<u64, InvalidSize> {
    let invalid = || InvalidSize {
        what: what.to_string(),
        value: text.to_string(),
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let suffix = suffix.trim_start();
    let unit = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        "T" | "TB" | "TIB" => TIB,
        _ => return Err(invalid()),
    };
    number.checked_mul(unit).ok_or_else(invalid)
}

/// `bytes` in binary units for messages: `1 GiB`, `23.4 GiB`, `512 MiB`,
/// `100 B`.
pub fn format_size(bytes: u64) -> String {
    scaled(bytes, ["B", "KiB", "MiB", "GiB", "TiB"], " ")
}

/// `bytes` in the short form `--memory` and `--disk` accept and tables
/// show: `512M`, `2G`, `1.5G`.
pub fn format_size_short(bytes: u64) -> String {
    scaled(bytes, ["B", "K", "M", "G", "T"], "")
}

fn scaled(bytes: u64, units: [&str; 5], separator: &str) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value}{separator}{}", units[unit])
    } else {
        format!("{value:.1}{separator}{}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        let p = |t| parse_size("memory", t).unwrap();
        assert_eq!(p("512M"), 512 * MIB);
        assert_eq!(p("1G"), GIB);
        assert_eq!(p("1GiB"), GIB);
        assert_eq!(p("1gb"), GIB);
        assert_eq!(p("2048M"), 2 * GIB);
        assert_eq!(p("4096"), 4096);
        assert_eq!(p("100T"), 100 * TIB);
        assert_eq!(p("8K"), 8 * KIB);
    }

    #[test]
    fn rejects_nonsense_naming_the_value() {
        for bad in ["lots", "", "G", "1.5G", "-1G", "1X", "99999999999999999999"] {
            let e = parse_size("memory", bad).unwrap_err();
            assert_eq!(e.value, bad);
        }
        assert_eq!(
            parse_size("memory", "lots").unwrap_err().to_string(),
            "invalid memory size \"lots\": expected a number with an optional K/M/G/T suffix, e.g. 2G"
        );
        assert!(parse_size("disk", "16777216T").is_err(), "overflow");
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(GIB), "1 GiB");
        assert_eq!(format_size(100 * TIB), "100 TiB");
        assert_eq!(format_size(23 * GIB + 400 * MIB), "23.4 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
