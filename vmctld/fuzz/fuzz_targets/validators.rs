//! VM names and sizes as people and programs pass them (see README.md):
//! the validators never panic, and a name `validate_vm_name` accepts is
//! usable everywhere vmctl puts it: the NSS module accepts it, its D-Bus
//! object path is valid and unescapes back to it, and the object path of
//! its unit, as systemd escapes it, maps back to it in the event watch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmctl_api::{
    bus_label_escape, bus_label_unescape, sizes::parse_size, validate_vm_name, vm_object_path,
};
use vmctld::events::vm_of_unit_path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(
        bus_label_unescape(&bus_label_escape(text)).as_deref(),
        Some(text)
    );
    // Any path a (forged) signal could name: no panic.
    let _ = vm_of_unit_path(text);
    if validate_vm_name(text).is_ok() {
        assert!(nss_vmctl::parse::is_valid_vm_name(text), "{text:?}");
        let path = vm_object_path(text);
        assert!(
            zvariant::ObjectPath::try_from(path.as_str()).is_ok(),
            "{path:?}"
        );
        let label = path.rsplit('/').next().unwrap_or_default();
        assert_eq!(bus_label_unescape(label).as_deref(), Some(text));
        let unit = format!(
            "/org/freedesktop/systemd1/unit/{}",
            bus_label_escape(&format!("vm@{text}.service"))
        );
        assert_eq!(vm_of_unit_path(&unit).as_deref(), Some(text), "{unit:?}");
    }
    if let Ok(bytes) = parse_size("fuzz", text) {
        assert_eq!(parse_size("fuzz", &bytes.to_string()), Ok(bytes), "{text:?}");
    }
});
