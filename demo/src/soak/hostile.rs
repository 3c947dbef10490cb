//! Hostile messages mixed into the soak's load, published by a third-party
//! MQTT client (`rumqttc`) to the broker the agents and the collector use:
//! junk and malformed batches on agents' partials topics (the collector's
//! input), and malformed, oversized, deeply nested and out-of-bounds JSON
//! readings — devices whose clocks jumped days ahead or years back — and
//! junk summaries on device topics (the agents' local input).
//!
//! Every reading in them has the metric `hostile`, which no simulated
//! device measures: one that reached a result would be a result the oracle
//! cannot explain, and the judge reports it.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{topic, Incarnation, Quantum, SeriesKey, Summary, Width, Window};

/// The messages of one burst: (topic, payload).
pub fn messages(now_ms: i64, agents: usize, burst: u64) -> Vec<(String, Vec<u8>)> {
    let day = 86_400_000i64;
    let dev = format!("hostile-{}", burst % 3);
    let readings = topic::readings(&dev);
    let reading = |t: i64, v: &str| {
        format!(r#"{{"v":1,"boot":1,"seq":{burst},"metric":"hostile","time":{t},"value":{v}}}"#)
            .into_bytes()
    };
    let mut out = vec![
        // A device clock jumped a day ahead, and thirty years back.
        (readings.clone(), reading(now_ms + day, "1.5")),
        (readings.clone(), reading(now_ms - 30 * 365 * day, "1.5")),
        (readings.clone(), reading(i64::MAX, "2")),
        (readings.clone(), reading(i64::MIN, "2")),
        // Out of range and malformed values.
        (readings.clone(), reading(now_ms, "1e999")),
        (readings.clone(), reading(now_ms, "\"NaN\"")),
        (
            readings.clone(),
            br#"{"v":9,"metric":"hostile","time":1,"value":1}"#.to_vec(),
        ),
        (readings.clone(), br#"{"v":1,"metric":"hostile""#.to_vec()),
        (readings.clone(), vec![0xff, 0xfe, 0x00, 0x7b]),
        // Nested 10,000 deep, and 2 MB of one reading's tags.
        (readings.clone(), "[".repeat(10_000).into_bytes()),
        (
            readings.clone(),
            format!(
                r#"{{"v":1,"metric":"hostile","time":{now_ms},"value":1,"tags":{{"x":"{}"}}}}"#,
                "y".repeat(2 << 20)
            )
            .into_bytes(),
        ),
        (topic::summaries(&dev), vec![0x00, 0x13, 0x37, 0x00]),
    ];
    for a in 0..agents {
        let partials = topic::partials(&format!("gw-{a}"));
        out.push((partials.clone(), b"\x00\x01junk".to_vec()));
        out.push((partials.clone(), br#"{"v":99,"agent":"gw-0"}"#.to_vec()));
        // A well-formed batch of another agent's id on this agent's topic
        // (a spoofed identity), in both encodings.
        if let Some(batch) = intruder(now_ms, burst) {
            out.push((partials.clone(), batch.encode(Encoding::Json)));
            out.push((partials.clone(), batch.encode(Encoding::Binary)));
        }
        out.push((partials, vec![b'{'; 1 << 20]));
    }
    out
}

/// A valid batch of one `hostile` reading from agent `intruder`.
fn intruder(now_ms: i64, burst: u64) -> Option<Batch> {
    let width = Width::new(5_000).ok()?;
    let start = now_ms.div_euclid(5_000) * 5_000;
    let mut summary = Summary::new(Quantum::new(-3).ok()?);
    summary.insert(start, 1_500).ok()?;
    let partial = Partial {
        series: SeriesKey::new("hostile", "intruder-dev", BTreeMap::new()).ok()?,
        window: Window::new(start, width).ok()?,
        summary,
    };
    Some(
        Batch::new("intruder", burst + 1, now_ms, vec![partial])
            .with_identity(Incarnation::new(burst | 1), 1),
    )
}

/// Publishes `msgs` at QoS 1 to the broker on `port` and waits (at most
/// `timeout`) until the broker acknowledged them all; returns how many it
/// acknowledged (a broker being restarted may take none).
pub fn publish(port: u16, msgs: &[(String, Vec<u8>)], timeout: Duration) -> usize {
    let mut o = MqttOptions::new("soak-hostile", "127.0.0.1", port);
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut conn) = Client::new(o, msgs.len() + 10);
    for (t, p) in msgs {
        if client
            .publish(t.clone(), QoS::AtLeastOnce, false, p.clone())
            .is_err()
        {
            break;
        }
    }
    let deadline = Instant::now() + timeout;
    let mut acked = 0;
    while acked < msgs.len() && Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    let _ = client.disconnect();
    acked
}
