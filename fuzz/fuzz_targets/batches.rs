//! Agent → collector batches and confirmations as the collector and the
//! agent receive them from MQTT: any bytes, JSON or binary. A batch that
//! decodes is valid, and encodes and decodes again to itself in both
//! encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_core::batch::{Batch, Confirm, Encoding};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Batch::decode(data) {
        for e in [Encoding::Json, Encoding::Binary] {
            let again = Batch::decode(&b.encode(e));
            assert_eq!(again.as_ref().ok(), Some(&b), "{e:?}");
        }
    }
    if let Ok(c) = Confirm::decode(data) {
        assert_eq!(Confirm::decode(&c.encode()).ok(), Some(c));
    }
});
