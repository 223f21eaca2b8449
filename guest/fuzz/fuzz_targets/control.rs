//! The control-message decoder (the JSON of a kind-1 frame) on arbitrary
//! bytes: never panics, and what it accepts encodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmctl_guest::protocol::{decode_control, Control, Frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(control) = decode_control(data) {
        // Stats carry floats, which serde_json need not round-trip bit for bit.
        if !matches!(control, Control::Stats(_)) {
            let encoded = Frame::Control(control.clone()).encode();
            assert_eq!(decode_control(&encoded[5..]).unwrap(), control);
        }
    }
});
