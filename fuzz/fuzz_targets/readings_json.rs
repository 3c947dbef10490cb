//! The JSON readings devices publish to the agent's local broker
//! (`tributary/v1/devices/{device}/readings`): any bytes. What parses has
//! finite values and a complete identity, written back as JSON it parses
//! again to the same message (the value exactly: the agent parses values
//! to the nearest double), and its values convert to ticks of any quantum
//! without a panic (a refusal is an error value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tributary_agent::link::json::{parse, JsonMessage};
use tributary_core::Quantum;

fn encode(m: &JsonMessage) -> Vec<u8> {
    let readings: Vec<_> = m
        .readings
        .iter()
        .map(|r| json!({"metric": r.metric, "time": r.time, "value": r.value, "tags": r.tags}))
        .collect();
    let mut v = json!({"v": 1, "readings": readings});
    if let Some((boot, seq)) = m.id {
        v["boot"] = json!(boot);
        v["seq"] = json!(seq);
    }
    v.to_string().into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse(data) else { return };
    let again = parse(&encode(&m)).expect("a parsed message, written back, parses");
    assert_eq!(again.id, m.id);
    assert_eq!(again.readings.len(), m.readings.len());
    for (a, b) in again.readings.iter().zip(&m.readings) {
        assert_eq!((&a.metric, a.time, &a.tags), (&b.metric, b.time, &b.tags));
        assert!(b.value.is_finite(), "{}", b.value);
        // The agent parses values to the nearest double (serde_json's
        // `float_roundtrip`), so the shortest text written back reads back
        // exactly.
        assert_eq!(
            a.value.to_bits(),
            b.value.to_bits(),
            "{} vs {}",
            a.value,
            b.value
        );
        for exp in [-9, -6, -3, 0, 3] {
            if let Ok(q) = Quantum::new(exp) {
                let _ = q.ticks(b.value);
            }
        }
    }
});
