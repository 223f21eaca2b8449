//! D-Bus object paths of VMs, escaped the way systemd escapes bus labels
//! (`bus_label_escape()`): every byte that is not an ASCII letter, or a
//! digit after the first position, becomes `_` plus two lowercase hex
//! digits; the empty string becomes `_`.

use crate::names::DBUS_VM_PATH_PREFIX;

/// Escapes `s` into a single D-Bus object path element.
pub fn bus_label_escape(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// Reverses [`bus_label_escape`]. Returns `None` for malformed escapes or
/// when the result is not UTF-8.
pub fn bus_label_unescape(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The D-Bus object path of the VM `name`: `/org/vmctl/VM/<escaped name>`.
pub fn vm_object_path(name: &str) -> String {
    format!("{DBUS_VM_PATH_PREFIX}/{}", bus_label_escape(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        // Same results as systemd's bus_label_escape().
        assert_eq!(bus_label_escape("blog"), "blog");
        assert_eq!(bus_label_escape("web-1"), "web_2d1");
        assert_eq!(bus_label_escape("1a"), "_31a");
        assert_eq!(bus_label_escape("a_b"), "a_5fb");
        assert_eq!(bus_label_escape("a.b"), "a_2eb");
        assert_eq!(bus_label_escape(""), "_");
        assert_eq!(bus_label_escape("é"), "_c3_a9");
    }

    #[test]
    fn round_trips() {
        for s in ["blog", "web-1", "1a", "a_b", "", "é/..", "x y"] {
            assert_eq!(bus_label_unescape(&bus_label_escape(s)).as_deref(), Some(s));
        }
    }

    #[test]
    fn rejects_bad_escapes() {
        assert_eq!(bus_label_unescape("a_zz"), None);
        assert_eq!(bus_label_unescape("a_2"), None);
    }

    #[test]
    fn object_path() {
        assert_eq!(vm_object_path("web-1"), "/org/vmctl/VM/web_2d1");
    }
}
