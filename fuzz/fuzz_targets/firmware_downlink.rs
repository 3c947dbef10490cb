//! What a device receives from its gateway over serial: any bytes into the
//! firmware's link (its hand-written postcard reader, not serde's). The
//! firmware must accept exactly the TimeSyncs that core's serde decoder
//! (`FrameDecoder`) finds in the same bytes, and release exactly the frames
//! those Acks name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_core::frame::{FrameDecoder, Message, MAX_FRAME};
use tributary_firmware::link::Link;

fuzz_target!(|data: &[u8]| {
    let mut link = Link::<4, MAX_FRAME>::new(1_000);
    let mut got = Vec::new();
    link.receive(data, |m| got.push(m));
    let mut decoder = FrameDecoder::<MAX_FRAME>::new();
    let mut want = Vec::new();
    for &b in data {
        if let Some(Ok(m @ Message::TimeSync(_))) = decoder.push(b) {
            want.push(m);
        }
    }
    assert_eq!(got, want);
});
