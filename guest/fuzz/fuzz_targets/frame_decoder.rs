//! The agent frame decoder on arbitrary bytes, as a peer on the other end
//! of a vsock connection can send them: the streaming reader
//! (`read_frame`) and the in-memory decoder (`decode_frame`) must agree,
//! never panic, and never allocate past the frame limit; a decoded frame
//! encodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use vmctl_guest::protocol::{decode_frame, read_frame, Control, Frame};

/// Runs `read_frame` over the bytes: a byte slice never blocks, so one
/// poll finishes it.
fn read_from(mut bytes: &[u8]) -> (Result<Option<Frame>, String>, usize) {
    let total = bytes.len();
    let result = {
        let mut read = std::pin::pin!(read_frame(&mut bytes));
        match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.map_err(|e| e.to_string()),
            Poll::Pending => panic!("reading from a byte slice is never pending"),
        }
    };
    (result, total - bytes.len())
}

/// Stats carry floats, which serde_json need not round-trip bit for bit.
fn exact_round_trip(frame: &Frame) -> bool {
    !matches!(frame, Frame::Control(Control::Stats(_)))
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Every frame in the input, as a stream would deliver them.
    while !rest.is_empty() {
        let (streamed, consumed) = read_from(rest);
        match (decode_frame(rest), streamed) {
            (Ok(Some((frame, used))), Ok(Some(same))) => {
                assert_eq!(frame, same);
                assert_eq!(used, consumed);
                if exact_round_trip(&frame) {
                    let again = decode_frame(&frame.encode()).unwrap().unwrap().0;
                    assert_eq!(again, frame);
                }
                rest = &rest[used..];
            }
            // Incomplete in memory: the stream reports a cut-off frame.
            (Ok(None), Err(_)) | (Ok(None), Ok(None)) => break,
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b);
                break;
            }
            (a, b) => panic!("decoders disagree: {a:?} vs {b:?}"),
        }
    }
});
