//! Ingest acknowledges batches in the order they arrived (MQTT 3.1.1 §4.6),
//! refused ones included: the embedded broker (rumqttd) drops a client whose
//! PUBACKs come out of order, so with refused payloads interleaved between
//! valid batches awaiting their commit the collector must stay connected
//! and apply every valid batch once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{topic, Quantum, SeriesKey, Summary, Width, Window};
use tributary_demo::broker::{Embedded, EmbeddedOptions};

const T0: i64 = 1_700_000_000_000;

fn batch(seq: u64) -> Batch {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(T0 + seq as i64, 1000 + seq as i64).unwrap();
    let partial = Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::containing(T0, Width::new(60_000).unwrap()),
        summary: s,
    };
    Batch::new("gw-1", seq, T0, vec![partial])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_payloads_between_valid_batches_keep_the_acks_in_order() {
    let port = tributary_testkit::free_port();
    let _broker = Embedded::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        None,
        EmbeddedOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[]).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(ingest::run(
        IngestConfig {
            port,
            client_id: "collector-order".into(),
            // A long group wait keeps valid batches pending while the
            // refused ones arrive behind them.
            group_wait: Duration::from_millis(200),
            ..IngestConfig::default()
        },
        store.clone(),
        counters.clone(),
        stop_rx,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while counters.subscribed.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counters.subscribed.get(), 1, "{}", counters.render());

    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("agent-gw-1", "127.0.0.1", port), 1000);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let good = 60u64;
    for seq in 0..good {
        let valid = batch(seq).encode(Encoding::Json);
        for payload in [valid, b"{not a batch".to_vec()] {
            client
                .publish(topic::partials("gw-1"), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        if seq % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.batches_new.get() < good && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counters.batches_new.get(), good);
    assert_eq!(counters.batches_duplicate.get(), 0);
    assert_eq!(
        counters.refused(ingest::Refused::Malformed),
        good,
        "every refused payload counted once"
    );
    assert_eq!(
        counters.connects_ok.get(),
        1,
        "the broker dropped the collector (acks out of order)"
    );
    stop.send(true).unwrap();
    ingest.await.unwrap();
}
