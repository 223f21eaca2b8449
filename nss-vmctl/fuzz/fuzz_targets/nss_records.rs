//! The hosts-directory record parsers on arbitrary bytes, as a damaged or
//! hostile file could hold them: never panic; what they accept is in the
//! exact form the writer produces (so it renders back byte for byte), and
//! an accepted name is a valid VM name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nss_vmctl::parse::{
    format_name_record, is_valid_vm_name, parse_addr_record, parse_name_record, MAX_RECORD_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Some((ipv4, ipv6)) = parse_name_record(data) {
        assert!(data.len() <= MAX_RECORD_LEN);
        let rendered = format_name_record(ipv4, ipv6);
        // Non-canonical spellings (`010.0.0.1` is refused by std, but IPv6
        // has several) parse to the same addresses; the canonical form must
        // parse back to them.
        assert_eq!(
            parse_name_record(rendered.as_bytes()),
            Some((ipv4, ipv6)),
            "{data:?}"
        );
    }
    if let Some(name) = parse_addr_record(data) {
        assert!(is_valid_vm_name(name), "{data:?}");
        assert_eq!(format!("{name}\n").as_bytes(), data);
    }
});
