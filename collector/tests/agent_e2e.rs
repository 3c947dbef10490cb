//! End to end with the real agent library: an agent with simulated devices
//! publishes through a real mosquitto to the collector's ingest, and every
//! stored (series, window) total equals the devices' ground truth exactly;
//! nothing is counted twice although the agent resends unconfirmed batches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../agent/tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{agent_toml, sim_config, start_ms, truth, Totals};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::Width;
use tributary_testkit::{Mosquitto, MosquittoOptions};

const WIDTH: i64 = 5000;

fn stored(store: &SqliteStore) -> Totals {
    all_windows(store, Width::new(WIDTH).unwrap())
        .unwrap()
        .into_iter()
        .map(|((key, start), w)| {
            (
                (key.to_string(), start, WIDTH),
                (w.summary.count(), w.summary.sum_ticks()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_partials_merge_exactly_into_the_store() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let store = Arc::new(Mutex::new(
        SqliteStore::open(&cdir.path().join("c.db"), &[3_600_000]).unwrap(),
    ));
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
        let got = stored(&store.lock().unwrap());
        let n: u64 = got.values().map(|v| v.0).sum();
        if n >= expected || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, truth);
    assert_eq!(agent.counters().readings_accepted, expected);
    agent.shutdown().await.unwrap();
    stop_tx.send(true).unwrap();
    ingest.await.unwrap();
    assert_eq!(
        stored(&store.lock().unwrap()),
        truth,
        "nothing changed after the agent stopped"
    );
}
