//! Writes a seed corpus of valid encodings for every fuzz target into
//! `corpus/<target>/` (libFuzzer mutates from them, reaching the deeper
//! parts of each decoder sooner than from random bytes).
//!
//! `cargo run --release --bin seeds` (from `fuzz/`).

use std::collections::BTreeMap;
use std::path::Path;

use tributary_core::batch::{Batch, Confirm, Encoding, Partial};
use tributary_core::frame::{self, Ack, Message, ReadingFrame, TimeSync, MAX_FRAME};
use tributary_core::{Incarnation, Quantum, SeriesKey, Summary, Width, Window};

fn write(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn summary(values: &[i64]) -> Result<Summary, Box<dyn std::error::Error>> {
    let mut s = Summary::new(Quantum::new(-3)?);
    for (i, &v) in values.iter().enumerate() {
        s.insert(1_700_000_000_000 + i as i64 * 1000, v)?;
    }
    Ok(s)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let msgs = [
        Message::Ack(Ack { boot: 7, seq: 42 }),
        Message::TimeSync(TimeSync {
            unix_ms: 1_700_000_000_123,
        }),
        Message::Reading(ReadingFrame {
            boot: 7,
            seq: 43,
            channel: 1,
            tick: 123_456,
            value: -2_500,
        }),
    ];
    for (i, m) in msgs.iter().enumerate() {
        let mut buf = [0u8; MAX_FRAME];
        let n = frame::encode(m, &mut buf)?;
        write("frames", &format!("msg{i}"), &buf[..n])?;
    }
    let s = summary(&[1_500, -20, 0, 7_000_000, 1_500])?;
    write("summaries", "summary", &postcard::to_allocvec(&s)?)?;
    let tags = BTreeMap::from([("site".to_string(), "berlin".to_string())]);
    let partials = vec![Partial {
        series: SeriesKey::new("temperature", "dev-1", tags)?,
        window: Window::new(1_700_000_040_000, Width::new(60_000)?)?,
        summary: s,
    }];
    let incarnation = Incarnation::new(0x9f3a_0c1d_2e4b_5a67);
    let batch = Batch::new("gw-1", 17, 1_700_000_100_000, partials).with_identity(incarnation, 15);
    write("batches", "json", &batch.encode(Encoding::Json))?;
    write("batches", "binary", &batch.encode(Encoding::Binary))?;
    write("batches", "confirm", &Confirm::new("gw-1", incarnation, vec![15, 16, 17]).encode())?;
    Ok(())
}
