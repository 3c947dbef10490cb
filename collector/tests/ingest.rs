//! Ingest against a real mosquitto: valid batches (JSON and binary) are
//! applied once and confirmed to their agent after the commit; a redelivered
//! batch is confirmed again but changes nothing; garbage, a batch on another
//! agent's topic and an oversized payload are refused and counted while the
//! valid traffic goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tributary_collector::ingest::{self, IngestConfig, IngestCounters, Refused};
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::Store;
use tributary_core::batch::{Batch, Confirm, Encoding, Partial};
use tributary_core::{topic, Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

fn batch(agent: &str, seq: u64, value: i64) -> Batch {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(1_700_000_000_000 + seq as i64, value).unwrap();
    let partial = Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::containing(1_700_000_000_000, Width::new(60_000).unwrap()),
        summary: s,
    };
    Batch::new(agent, seq, 1_700_000_000_000, vec![partial])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_apply_once_and_are_confirmed_after_commit() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Mutex::new(
        SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap(),
    ));
    let counters = Arc::new(IngestCounters::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let cfg = IngestConfig {
        port: broker.port(),
        client_id: "collector-test".into(),
        max_payload_bytes: 64 * 1024,
        ..IngestConfig::default()
    };
    let task = tokio::spawn(ingest::run(cfg, store.clone(), counters.clone(), stop_rx));

    // The test plays agent-a: it listens for confirmations and publishes.
    let confirmed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut o = MqttOptions::new("agent-a-test", "127.0.0.1", broker.port());
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 100);
    client
        .subscribe(topic::acks("agent-a"), QoS::AtLeastOnce)
        .unwrap();
    let got = confirmed.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let c = Confirm::decode(&p.payload).unwrap();
                    assert_eq!(c.agent, "agent-a");
                    got.lock().unwrap().extend(c.seqs);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // both subscribed

    let partials = topic::partials("agent-a");
    for seq in 0..5 {
        let enc = if seq % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Binary
        };
        client
            .publish(
                &partials,
                QoS::AtLeastOnce,
                false,
                batch("agent-a", seq, 1000 + seq as i64).encode(enc),
            )
            .unwrap();
    }
    client
        .publish(&partials, QoS::AtLeastOnce, false, b"{not json".to_vec())
        .unwrap();
    client
        .publish(
            &partials,
            QoS::AtLeastOnce,
            false,
            batch("agent-b", 9, 1).encode(Encoding::Json),
        )
        .unwrap();
    client
        .publish(&partials, QoS::AtLeastOnce, false, vec![b' '; 70 * 1024])
        .unwrap();
    // A redelivery of seq 2.
    client
        .publish(
            &partials,
            QoS::AtLeastOnce,
            false,
            batch("agent-a", 2, 1002).encode(Encoding::Json),
        )
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed.lock().unwrap().len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seqs: Vec<u64> = confirmed.lock().unwrap().clone();
    assert_eq!(
        seqs.len(),
        6,
        "five batches and one redelivery confirmed: {seqs:?}\n{}",
        counters.render()
    );
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..5).collect()
    );
    assert_eq!(counters.batches_new.load(Relaxed), 5);
    assert_eq!(counters.batches_duplicate.load(Relaxed), 1);
    assert_eq!(counters.refused(Refused::Malformed), 1);
    assert_eq!(counters.refused(Refused::AgentMismatch), 1);
    assert_eq!(counters.refused(Refused::Oversized), 1);

    {
        let st = store.lock().unwrap();
        let series = st.series().unwrap();
        assert_eq!(series.len(), 1);
        let w = st
            .windows(&series[0], Width::new(60_000).unwrap(), i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(w.len(), 1);
        let mut expected = Summary::new(Quantum::new(-3).unwrap());
        for seq in 0..5u64 {
            expected
                .insert(1_700_000_000_000 + seq as i64, 1000 + seq as i64)
                .unwrap();
        }
        assert_eq!(w[0].summary, expected);
    }

    // A batch that cannot merge into the stored window (another quantum) is
    // refused and counted; the valid batch next to it still applies.
    let mut poison = batch("agent-a", 10, 7);
    let mut other = Summary::new(Quantum::new(-1).unwrap());
    other.insert(1_700_000_000_000, 7).unwrap();
    poison.partials[0].summary = other;
    client
        .publish(
            &partials,
            QoS::AtLeastOnce,
            false,
            poison.encode(Encoding::Json),
        )
        .unwrap();
    client
        .publish(
            &partials,
            QoS::AtLeastOnce,
            false,
            batch("agent-a", 11, 1011).encode(Encoding::Json),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed.lock().unwrap().len() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        counters.refused(Refused::Unmergeable),
        1,
        "{}",
        counters.render()
    );
    assert_eq!(counters.batches_new.load(Relaxed), 6);
    {
        let st = store.lock().unwrap();
        let series = st.series().unwrap();
        let w = st
            .windows(&series[0], Width::new(60_000).unwrap(), i64::MIN, i64::MAX)
            .unwrap();
        assert_eq!(w[0].summary.count(), 6);
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    let _ = client.disconnect();
}
