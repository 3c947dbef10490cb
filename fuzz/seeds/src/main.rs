//! Writes a seed corpus of valid encodings for every fuzz target into
//! `corpus/<target>/` (libFuzzer mutates from them, reaching the deeper
//! parts of each decoder sooner than from random bytes).
//!
//! `cargo run --release -p seeds` (from `fuzz/`; the config targets'
//! seeds are the documented example configs in `../config/`).

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
            hello_tick: Some(1_234),
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
    write(
        "batches",
        "confirm",
        &Confirm::new("gw-1", incarnation, vec![15, 16, 17]).encode(),
    )?;

    // What a gateway sends a device: Acks and TimeSyncs, back to back.
    let mut downlink = Vec::new();
    for m in &msgs[..2] {
        let mut buf = [0u8; MAX_FRAME];
        let n = frame::encode(m, &mut buf)?;
        downlink.extend_from_slice(&buf[..n]);
    }
    write("firmware_downlink", "ack_timesync", &downlink)?;
    write(
        "readings_json",
        "single",
        br#"{"v":1,"metric":"temperature","time":1700000000000,"value":21.5,"tags":{"room":"lab"}}"#,
    )?;
    write(
        "readings_json",
        "batch",
        br#"{"v":1,"boot":7,"seq":42,"readings":[{"metric":"t","time":1700000000000,"value":-1e-3},{"metric":"h","time":1700000000001,"value":55}]}"#,
    )?;
    // Found by this fuzzer (2026-12-03): a mantissa of ~300 digits, which
    // serde_json's default float parser read a few units in the last place
    // off; the agent now parses to the nearest double.
    let long = format!(
        r#"{{"v":1,"metric":"re","time":17000000000010,"value":99999999999966{}9921.5,"tags":{{"room":"lab"}}}}"#,
        "6".repeat(246)
    );
    write("readings_json", "long_mantissa", long.as_bytes())?;
    for (target, file) in [
        ("agent_config", "agent.toml"),
        ("collector_config", "collector.toml"),
    ] {
        let text = std::fs::read(Path::new("../config").join(file))?;
        write(target, file, &text)?;
        let mut with_env = text.clone();
        with_env.extend_from_slice(b"\0WINDOW_WIDTH_MS=60000\nMQTT_PORT=1884\n");
        write(target, "with_env", &with_env)?;
    }
    write(
        "agent_config",
        "minimal",
        b"agent_id = \"gw-1\"\n[simulated]\ndevices = 4\n",
    )?;
    for (i, q) in [
        "metric=temperature&from=1700000000000&to=1700003600000&width=60000",
        "metric=t&from=-5&to=100&width=10&step=30&stats=count,sum,p99,first&group_by=site&tag.site=berlin",
        "metric=t&from=9223372036854775000&to=9223372036854775807&width=86400000&stats=p0,p100,mean",
    ]
    .iter()
    .enumerate()
    {
        write("query_string", &format!("q{i}"), q.as_bytes())?;
    }
    Ok(())
}
