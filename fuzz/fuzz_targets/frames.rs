//! Device link frames as the agent's serial source receives them: arbitrary
//! bytes pushed one at a time into the COBS frame decoder (which must never
//! panic or grow past its buffer), and any frame it accepts encodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_core::frame::{self, FrameDecoder, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::<MAX_FRAME>::new();
    for &b in data {
        if let Some(Ok(msg)) = decoder.push(b) {
            let mut buf = [0u8; MAX_FRAME];
            // A decoded frame is valid, so it fits a frame again.
            assert!(frame::encode(&msg, &mut buf).is_ok(), "{msg:?}");
        }
    }
    // The same bytes as one frame body, decoded in place.
    let mut body = data.to_vec();
    let _ = frame::decode_in_place(&mut body);
});
