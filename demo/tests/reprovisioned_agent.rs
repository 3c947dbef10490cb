//! An agent whose data directory is lost and replaced under the same agent
//! id (a new disk, a re-provisioned gateway): its new database numbers its
//! batches from 1 again. With the real agent, a real mosquitto and the
//! collector's ingest, the new database's batches are applied — not
//! confirmed and discarded as replays of the old one's — and the store
//! holds exactly both runs' readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../agent/tests/common/mod.rs"]
mod common;
mod stored;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent_toml, sim_config, start_ms, truth, Totals};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::sqlite::SqliteStore;
use tributary_testkit::{Mosquitto, MosquittoOptions};

const WIDTH: i64 = 5000;

async fn stored(store: &SqliteStore) -> Totals {
    stored::stored(store, WIDTH).await
}

/// Waits (up to 60 s) until the store holds `n` readings; returns what it
/// holds.
async fn wait_for(store: &SqliteStore, n: u64) -> Totals {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = stored(store).await;
        if got.values().map(|v| v.0).sum::<u64>() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprovisioned_agents_batches_are_applied_not_taken_for_replays() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&cdir.path().join("c.db"), &[3_600_000]).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(ingest::run(
        IngestConfig {
            port: broker.port(),
            client_id: "collector-reprovisioned".into(),
            ..IngestConfig::default()
        },
        store.clone(),
        counters.clone(),
        stop_rx,
    ));

    // The first life of agent `gw-test`.
    let first = sim_config(2, 20, start_ms(WIDTH), 0);
    let mut want = truth(&first, WIDTH);
    let n1: u64 = want.values().map(|v| v.0).sum();
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::from_toml(&agent_toml(dir.path(), broker.port(), &first, "")).unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    assert_eq!(wait_for(&store, n1).await, want);
    agent.shutdown().await.unwrap();
    let batches = counters.batches_new.get();
    assert!(batches > 1, "{batches} batches");

    // Its data directory is lost; the same agent id starts on a new one,
    // numbering its batches from 1 again, with an hour later's readings.
    drop(dir);
    let second = sim_config(2, 20, start_ms(WIDTH) + 3_600_000, 0);
    for (k, v) in truth(&second, WIDTH) {
        let e = want.entry(k).or_default();
        e.0 += v.0;
        e.1 += v.1;
    }
    let n: u64 = want.values().map(|v| v.0).sum();
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::from_toml(&agent_toml(dir.path(), broker.port(), &second, "")).unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let got = wait_for(&store, n).await;
    assert_eq!(
        got.values().map(|v| v.0).sum::<u64>(),
        n,
        "the new database's readings arrive ({} new batches, {} duplicates)",
        counters.batches_new.get(),
        counters.batches_duplicate.get()
    );
    assert_eq!(got, want, "both lives' readings, each once");
    agent.shutdown().await.unwrap();
    stop_tx.send(true).unwrap();
    ingest.await.unwrap();
}
