//! Stored and transmitted summaries (postcard): the agent's and the
//! collector's stores read them back, and devices send the fixed form.
//! What decodes is valid (decoding validates) and merges with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_core::{FixedSummary, Summary};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = postcard::from_bytes::<Summary>(data) {
        assert!(s.validate().is_ok());
        let mut twice = s.clone();
        let _ = twice.merge(&s);
    }
    if let Ok(f) = postcard::from_bytes::<FixedSummary>(data) {
        assert!(f.validate().is_ok());
        let mut twice = f.clone();
        let _ = twice.merge(&f);
    }
});
