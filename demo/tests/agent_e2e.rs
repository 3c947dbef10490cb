//! End to end with the real agent library: an agent with simulated devices
//! publishes through a real mosquitto to the collector's ingest, and every
//! stored (series, window) total equals the devices' raw readings' exactly
//! and agrees with the oracle's statistics of them; nothing is counted twice
//! although the agent resends unconfirmed batches.
//! And the agent's local-broker source acknowledges devices' messages in
//! the order they arrived, which the embedded broker (rumqttd) enforces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod stored;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent_toml, sim_config, start_ms, truth, verdict, Totals};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::Width;
use tributary_demo::broker::{Embedded, EmbeddedOptions};
use tributary_testkit::{Mosquitto, MosquittoOptions};

const WIDTH: i64 = 5000;

async fn stored(store: &SqliteStore) -> Totals {
    stored::stored(store, WIDTH).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_partials_merge_exactly_into_the_store() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&cdir.path().join("c.db"), &[3_600_000]).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(ingest::run(
        IngestConfig {
            port: broker.port(),
            client_id: "collector-e2e".into(),
            ..IngestConfig::default()
        },
        store.clone(),
        counters.clone(),
        stop_rx,
    ));

    let adir = tempfile::tempdir().unwrap();
    let sim = sim_config(4, 40, start_ms(WIDTH), 0);
    let cfg = AgentConfig::from_toml(&agent_toml(adir.path(), broker.port(), &sim, "")).unwrap();
    let truth = truth(&sim, WIDTH);
    let expected: u64 = truth.values().map(|v| v.0).sum();
    assert!(expected > 1000, "the workload is not trivial: {expected}");
    let agent = Agent::start(cfg).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = stored(&store).await;
        let n: u64 = got.values().map(|v| v.0).sum();
        if n >= expected || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, truth);
    let windows = all_windows(&store, Width::new(WIDTH).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, w)| (k, w.summary))
        .collect();
    let v = verdict(&windows, &sim, WIDTH);
    assert_eq!(v.checked, truth.len());
    assert!(v.ok(), "{:#?}", v.problems);
    assert_eq!(agent.counters().readings_accepted, expected);
    agent.shutdown().await.unwrap();
    stop_tx.send(true).unwrap();
    ingest.await.unwrap();
    assert_eq!(
        stored(&store).await,
        truth,
        "nothing changed after the agent stopped"
    );
}

/// MQTT 3.1.1 §4.6: PUBACKs go in the order the PUBLISHes arrived. The
/// agent acks a good message after its commit and a refused one at once;
/// rumqttd drops a client whose acks come out of order, so with good and
/// refused messages interleaved the agent must stay connected throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_messages_are_acked_in_arrival_order() {
    let port = tributary_testkit::free_port();
    let broker = Embedded::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        None,
        EmbeddedOptions::default(),
    )
    .unwrap();
    let adir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::from_toml(&format!(
        "agent_id = \"gw-order\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n\
         [http]\nlisten = \"\"\n[local_mqtt]\nenabled = true\nport = {}\n",
        adir.path().display().to_string(),
        broker.addr().port()
    ))
    .unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let (client, mut events) = AsyncClient::new(
        MqttOptions::new("device-order", "127.0.0.1", broker.addr().port()),
        1000,
    );
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // The broker drops what nobody has subscribed to yet: publish a warm-up
    // reading until the agent has taken one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.counters().readings_accepted == 0 && Instant::now() < deadline {
        // Event times near the clock: the agent refuses readings outside its
        // `[limits]` time bounds.
        let warm = format!(
            r#"{{"v":1,"metric":"temperature","time":{},"value":1}}"#,
            tributary_runtime::now_ms()
        );
        client
            .publish(
                "tributary/v1/devices/warm-up/readings",
                QoS::AtLeastOnce,
                false,
                warm.clone(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = agent.counters().readings_accepted;
    assert!(before > 0, "the agent never received a reading");
    let good = 100u64;
    let t0 = tributary_runtime::now_ms() - 200_000;
    for i in 0..good {
        let t = t0 + i as i64 * 1000;
        let reading = format!(r#"{{"v":1,"metric":"temperature","time":{t},"value":21.5}}"#);
        // A refused message (no value) right after each good one.
        let refused = format!(r#"{{"v":1,"metric":"temperature","time":{t}}}"#);
        for payload in [reading, refused] {
            client
                .publish(
                    "tributary/v1/devices/dev-1/readings",
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
        if i % 10 == 0 {
            // Let commits interleave with arrivals.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.counters().readings_accepted < before + good && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait for the last acks, then check the connection never dropped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.counters().readings_accepted, before + good);
    assert_eq!(
        agent.counters().rejected,
        good,
        "every refused message counted"
    );
    assert_eq!(
        agent.metrics().local_connects.get(),
        1,
        "the broker dropped the agent's connection (acks out of order)"
    );
    agent.shutdown().await.unwrap();
}
