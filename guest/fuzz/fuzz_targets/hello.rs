//! The host's hello reader and validator (`vmctl_guest::hello`) on
//! arbitrary bytes, as any process in a guest can send them to host port
//! 1025: never panics; what it accepts obeys the field rules; what it
//! refuses is described by a message safe to log (no control characters).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use vmctl_guest::hello::{read_hello, MAX_FIELD};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

fn token_ok(text: &str) -> bool {
    (1..=MAX_FIELD).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    match runtime().block_on(read_hello(&mut stream, Duration::from_secs(5))) {
        Ok(hello) => {
            assert!(token_ok(&hello.kernel_release), "{hello:?}");
            assert!(token_ok(&hello.version), "{hello:?}");
            assert_eq!(hello.boot_id.len(), 32, "{hello:?}");
            assert!(
                hello
                    .boot_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{hello:?}"
            );
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.chars().any(char::is_control),
                "unsafe log text: {message:?}"
            );
        }
    }
});
