//! The module's query-name matching (`lookup::vm_label`) on arbitrary
//! strings, as any program can pass them to `getaddrinfo`: never panics, and
//! what it accepts is exactly one valid DNS label followed by `.vm` (any
//! case, optionally a final dot), so the label is safe to use as a file
//! name under `name/` (no `/`, no `..`, no NUL).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nss_vmctl::lookup::vm_label;
use nss_vmctl::parse::is_valid_vm_name;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let trimmed = query.strip_suffix('.').unwrap_or(query);
    let expected = trimmed
        .len()
        .checked_sub(3)
        .and_then(|at| Some((trimmed.get(..at)?, trimmed.get(at..)?)))
        .filter(|(label, suffix)| suffix.eq_ignore_ascii_case(".vm") && is_valid_vm_name(label))
        .map(|(label, _)| label);
    let label = vm_label(query);
    assert_eq!(label, expected, "{query:?}");
    if let Some(label) = label {
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "{query:?}"
        );
    }
});
