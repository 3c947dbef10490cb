//! Hostile batches at the collector's ingest (issue #12), with the real
//! parts: a mosquitto, a third-party client (`rumqttc`) playing an agent,
//! ingest over SQLite. A batch nesting a field 10,000 deep is malformed
//! (it was counted as a duplicate of the batch around it), a 64 MiB payload
//! is oversized, partials stamped outside the time bounds or at the ends of
//! `i64` are refused by reason while the rest of their batch applies, a
//! watermark far ahead is clamped — and the batches behind all of them are
//! applied and confirmed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use std::collections::BTreeSet;

use mqtt_common::harness::{now_ms, sample, subscribed, Agent, Collector};
use tributary_collector::ingest::{IngestConfig, Refused};
use tributary_collector::store::prelude::*;
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const YEAR: i64 = 366 * 86_400_000;

/// A partial of the test series: one reading `v` at the start of the
/// minute starting at `start`.
fn partial(start: i64, v: i64) -> Partial {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(start, v).unwrap();
    Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    }
}

/// `{"a":{"a":…1…}}` nested `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_are_refused_by_reason_and_never_stall_ingest() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = Collector::start(IngestConfig {
        port: broker.port(),
        client_id: "collector-hostile".into(),
        ..IngestConfig::default()
    });
    let agent = Agent::connect("agent-h", broker.port(), None);
    subscribed(&collector.counters).await;

    let now = now_ms();
    let w = (now - 2 * HOUR) / HOUR * HOUR;
    let first = Batch::new("agent-h", 1, w + MIN, vec![partial(w, 1000)]);
    let json = String::from_utf8(first.encode(Encoding::Json)).unwrap();
    agent.publish(json.clone().into_bytes());
    // The same batch with an unknown field nested 10,000 deep: malformed,
    // not "a duplicate of seq 1".
    let deep = format!("{},\"x\":{}}}", json.trim_end_matches('}'), nested(10_000));
    agent.publish(deep.into_bytes());
    agent.publish(vec![b' '; 64 << 20]);
    // A watermark a year ahead, a partial a year ahead and partials at the
    // ends of i64 (no roll-up of them fits): refused one by one, the good
    // partial beside them applies.
    let near_min = (i64::MIN / MIN + 1) * MIN;
    let near_max = (i64::MAX / MIN - 1) * MIN;
    let ahead = (now + YEAR) / MIN * MIN;
    let hostile = Batch::new(
        "agent-h",
        2,
        now + YEAR,
        vec![
            partial(ahead, 7),
            partial(w + MIN, 2000),
            partial(near_max, 7),
            partial(near_min, 7),
        ],
    );
    agent.publish(hostile.encode(Encoding::Json));
    agent.publish(
        Batch::new("agent-h", 3, w + 3 * MIN, vec![partial(w + 2 * MIN, 3000)])
            .encode(Encoding::Binary),
    );

    let seqs = agent.confirmed(3).await;
    let c = &collector.counters;
    let text = c.render();
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (1..=3).collect(),
        "{text}"
    );
    assert_eq!(c.batches_new.get(), 3, "{text}");
    assert_eq!(c.batches_duplicate.get(), 0, "{text}");
    assert_eq!(c.refused(Refused::Malformed), 1, "{text}");
    assert_eq!(c.refused(Refused::Oversized), 1, "{text}");
    let refused = |reason: &str| {
        sample(
            &text,
            &format!("tributary_collector_partials_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("time_future"), 2.0, "{text}");
    assert_eq!(refused("time_past"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "tributary_collector_watermarks_clamped_total"),
        1.0
    );
    // Stored: the three good minutes, their hour, and a watermark no
    // further ahead than the bound (10 minutes by default).
    let store = &collector.store;
    let stored = |width: i64| async move {
        let series = store.series().await.unwrap();
        let rows = store
            .windows_of(&series, Width::new(width).unwrap(), i64::MIN, i64::MAX)
            .await
            .unwrap();
        rows.iter()
            .flatten()
            .map(|s| (s.window.start(), s.summary.count()))
            .collect::<Vec<(i64, u64)>>()
    };
    assert_eq!(stored(MIN).await, [(w, 1), (w + MIN, 1), (w + 2 * MIN, 1)]);
    assert_eq!(stored(HOUR).await, [(w, 3)]);
    let watermarks = collector.store.watermarks().await.unwrap();
    assert_eq!(watermarks.len(), 1);
    let (agent_id, wm) = &watermarks[0];
    assert_eq!(agent_id, "agent-h");
    assert!(*wm <= now_ms() + 600_000, "watermark {wm} not clamped");
    assert!(*wm >= now, "clamped to the bound, not dropped: {wm}");
    collector.stop().await;
    let _ = agent.client.disconnect();
}
