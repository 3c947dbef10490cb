//! Batch identity through ingest, against a real mosquitto: an agent whose
//! database is replaced numbers from 1 again under a new incarnation, and
//! its batches are applied, not confirmed and discarded as replays; each
//! incarnation is confirmed its own sequences; a batch on an agent's topic
//! whose identity cannot be that agent's is refused, acknowledged and
//! counted by reason; a new incarnation of a known agent is counted; the
//! readings agents report dropped are counted once per new batch, shown per
//! agent on `/metrics` and in `/api/v1/agents`, as are the partials the
//! collector refused inside applied batches (a window beyond
//! `max_future_ms`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt;
use tributary_collector::finality::Finality;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters, Protocol, Refused};
use tributary_collector::query::{router, ApiState, DEFAULT_MAX_POINTS};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Confirm, Encoding, Partial};
use tributary_core::{topic, Incarnation, Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

const T0: i64 = 1_700_000_000_000;
const OLD: Incarnation = Incarnation::new(0x0123_4567_89ab_cdef);
const NEW: Incarnation = Incarnation::new(0xfedc_ba98_7654_3210);

/// Batch `seq` of `gw-1`'s incarnation `inc`: one reading, `dropped`
/// readings reported dropped, all batches below it confirmed.
fn batch(inc: Incarnation, seq: u64, dropped: u64) -> Batch {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(T0 + seq as i64, 1000).unwrap();
    let partial = Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::containing(T0, Width::new(60_000).unwrap()),
        summary: s,
    };
    let mut b = Batch::new("gw-1", seq, T0 + 60_000, vec![partial]).with_identity(inc, seq);
    b.dropped_readings = dropped;
    b
}

/// The confirmations an agent received: per incarnation, the sequences.
type Confirmed = Arc<Mutex<BTreeMap<Incarnation, Vec<u64>>>>;

/// A test client publishing on `gw-1`'s topic and reading its
/// confirmations.
fn agent(port: u16) -> (Client, Confirmed) {
    let mut o = MqttOptions::new("gw-1-test", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 100);
    client
        .subscribe(topic::acks("gw-1"), QoS::AtLeastOnce)
        .unwrap();
    let confirmed = Confirmed::default();
    let got = confirmed.clone();
    let (suback, subscribed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = suback.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let c = Confirm::decode(&p.payload).unwrap();
                    got.lock()
                        .unwrap()
                        .entry(c.incarnation)
                        .or_default()
                        .extend(c.seqs);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    subscribed.recv_timeout(Duration::from_secs(10)).unwrap();
    (client, confirmed)
}

/// Waits (up to 20 s) until `inc` was confirmed `n` sequences.
async fn confirmed(c: &Confirmed, inc: Incarnation, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = c.lock().unwrap().get(&inc).cloned().unwrap_or_default();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until `f` holds of the counters.
async fn until(c: &IngestCounters, f: impl Fn(&IngestCounters) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(c) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f(c), "{}", c.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_agent_database_is_a_new_incarnation_and_spoofs_are_refused() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop, stop_rx) = watch::channel(false);
    let cfg = IngestConfig {
        port: broker.port(),
        protocol: Protocol::V5,
        client_id: "collector-identity".into(),
        ..IngestConfig::default()
    };
    let task = tokio::spawn(ingest::run(cfg, store.clone(), counters.clone(), stop_rx));
    until(&counters, |c| c.subscribed.get() == 1).await;
    let (client, got) = agent(broker.port());
    let publish = |payload: Vec<u8>| {
        client
            .publish(topic::partials("gw-1"), QoS::AtLeastOnce, false, payload)
            .unwrap()
    };

    // The first database: batches 1–5, one reading dropped in each.
    for seq in 1..=5 {
        publish(batch(OLD, seq, 1).encode(Encoding::Binary));
    }
    assert_eq!(confirmed(&got, OLD, 5).await, [1, 2, 3, 4, 5]);

    // Identities that cannot be gw-1's, on gw-1's topic.
    let mut other = batch(OLD, 6, 0);
    other.agent = "gw-2".into();
    publish(other.encode(Encoding::Json));
    let mut v: Value = serde_json::from_slice(&batch(OLD, 6, 0).encode(Encoding::Json)).unwrap();
    v["incarnation"] = "not-an-incarnation".into();
    publish(serde_json::to_vec(&v).unwrap());
    let mut ahead = batch(OLD, 6, 0);
    ahead.first_unconfirmed = 9;
    publish(ahead.encode(Encoding::Binary));
    until(&counters, |c| {
        c.refused(Refused::AgentMismatch) == 1 && c.refused(Refused::BadIdentity) == 2
    })
    .await;

    // Its data directory is lost: a new database numbers from 1 again.
    // Its batches apply; a late copy of the old database's batch 3 does
    // not, and each incarnation is confirmed its own. Its clock is a day
    // ahead for one device: batch `seq` carries a partial of `seq`
    // readings beyond `max_future_ms`, refused and counted.
    let ahead_start = tributary_runtime::now_ms() + 86_400_000;
    let (mut ahead_partials, mut ahead_readings) = (0u64, 0u64);
    for seq in 1..=5 {
        let mut b = batch(NEW, seq, 2);
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        for k in 0..seq {
            s.insert(ahead_start + k as i64, 1000).unwrap();
        }
        b.partials.push(Partial {
            series: SeriesKey::new("temperature", "dev-ahead", Default::default()).unwrap(),
            window: Window::containing(ahead_start, Width::new(60_000).unwrap()),
            summary: s,
        });
        ahead_partials += 1;
        ahead_readings += seq;
        publish(b.encode(Encoding::Json));
    }
    publish(batch(OLD, 3, 1).encode(Encoding::Json));
    assert_eq!(confirmed(&got, NEW, 5).await, [1, 2, 3, 4, 5]);
    assert_eq!(confirmed(&got, OLD, 6).await, [1, 2, 3, 4, 5, 3]);
    until(&counters, |c| c.batches_duplicate.get() == 1).await;
    assert_eq!(counters.batches_new.get(), 10, "{}", counters.render());
    let minute = Width::new(60_000).unwrap();
    let series = store.series().await.unwrap();
    let rows = store.windows_of(&series, minute, i64::MIN, i64::MAX).await;
    assert_eq!(
        rows.unwrap()[0][0].summary.count(),
        10,
        "both databases' readings, once"
    );

    // Counted: one new agent, one further incarnation of it; its drops,
    // once per new batch (the duplicate's are not counted again).
    assert_eq!(counters.incarnations(false), 1);
    assert_eq!(counters.incarnations(true), 1);
    assert_eq!(counters.dropped_readings("gw-1"), 5 + 10);
    let text = counters.render();
    for line in [
        "tributary_collector_agent_dropped_readings_total{agent=\"gw-1\"} 15",
        "tributary_collector_incarnations_total{kind=\"first\"} 1",
        "tributary_collector_incarnations_total{kind=\"another\"} 1",
        "tributary_collector_refused_total{reason=\"bad_identity\"} 2",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }

    // The API shows the agent, its incarnations and its drops, from the
    // store (which keeps them across restarts and instances).
    let app = router(ApiState {
        store: store.clone(),
        token: None,
        finality: Finality::default(),
        rollups_ms: vec![3_600_000],
        retention: Default::default(),
        max_points: DEFAULT_MAX_POINTS,
    });
    let req = Request::get("/api/v1/agents").body(Body::empty()).unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{v}");
    let a = &agents[0];
    assert_eq!(a["agent"], "gw-1");
    assert_eq!(a["watermark"], T0 + 60_000);
    assert_eq!(a["dropped_readings"], 15);
    let incs = a["incarnations"].as_array().unwrap();
    let shown: Vec<(&str, u64, u64, u64, u64)> = incs
        .iter()
        .map(|i| {
            (
                i["incarnation"].as_str().unwrap(),
                i["batches"].as_u64().unwrap(),
                i["dropped_readings"].as_u64().unwrap(),
                i["applied_below"].as_u64().unwrap(),
                i["remembered"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("0123456789abcdef", 5, 5, 6, 0),
            ("fedcba9876543210", 5, 10, 6, 0)
        ]
    );
    // The refused partials, durably per incarnation and summed per agent.
    let refused = serde_json::json!({
        "time_future": {"partials": ahead_partials, "readings": ahead_readings}
    });
    assert_eq!(a["refused"], refused, "{v}");
    assert_eq!(incs[0]["refused"], serde_json::json!({}), "{v}");
    assert_eq!(incs[1]["refused"], refused, "{v}");
    let last = a["last_seen_ms"].as_i64().unwrap();
    assert!(incs
        .iter()
        .all(|i| i["first_seen_ms"].as_i64().unwrap() <= last));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    let _ = client.disconnect();
}
