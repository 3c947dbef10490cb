//! Outage, lossy broker and outbox coarsening, each with a real mosquitto.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_testkit::{Mosquitto, MosquittoOptions};

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn wait(collector: TestCollector, expected: u64, secs: u64) -> (u64, TestCollector) {
    tokio::task::spawn_blocking(move || {
        let n = collector.wait_for(expected, Duration::from_secs(secs));
        (n, collector)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outage_loses_nothing() {
    let mut broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(3, 120, start_ms(5000), 60);
    let cfg = Config::from_toml(&agent_toml(dir.path(), broker.port(), &sim, "")).unwrap();
    let truth = truth(&sim, 5000);
    let expected: u64 = truth.values().map(|v| v.0).sum();
    let agent = Agent::start(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = agent.counters();
    assert!(
        during.readings_accepted > 0,
        "devices go on during the outage"
    );
    broker.restart().unwrap();
    let (n, collector) = wait(collector, expected, 60).await;
    assert_eq!(n, expected);
    assert_eq!(collector.totals(), truth);
    assert!(agent.metrics().uplink_connects.get() >= 2);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_broker_is_healed_by_end_to_end_confirmations() {
    // One in-flight and one queued message per client: mosquitto PUBACKs the
    // agent's batches and then drops those the collector has no room for.
    let broker = Mosquitto::start(MosquittoOptions {
        max_queued_messages: Some(1),
        max_inflight_messages: Some(1),
        port: None,
    })
    .unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(4, 60, start_ms(5000), 0);
    let cfg = Config::from_toml_with_env(
        &agent_toml(dir.path(), broker.port(), &sim, ""),
        env(&[
            ("TRIBUTARY_UPLINK_MAX_IN_FLIGHT", "16"),
            ("TRIBUTARY_OUTBOX_BATCH_MAX_PARTIALS", "2"),
            ("TRIBUTARY_UPLINK_CONFIRM_TIMEOUT_MS", "700"),
        ]),
    )
    .unwrap();
    let truth = truth(&sim, 5000);
    let expected: u64 = truth.values().map(|v| v.0).sum();
    let agent = Agent::start(cfg).await.unwrap();
    let (n, collector) = wait(collector, expected, 90).await;
    assert_eq!(n, expected);
    assert_eq!(collector.totals(), truth);
    let resent = agent.metrics().batches_resent.get();
    assert!(
        resent > 0,
        "the broker dropped messages, so some were resent"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_coarsens_and_counts_stay_exact() {
    let mut broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let port = broker.port();
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(4, 100, start_ms(20_000), 0);
    let cfg = Config::from_toml_with_env(
        &agent_toml(dir.path(), port, &sim, ""),
        env(&[
            // Too small for the 5 s windows, big enough for the coarsest
            // (the sensors' noise and zero crossings make summaries of
            // a few hundred bytes; 11–16 kB coarsens without a drop).
            ("TRIBUTARY_OUTBOX_MAX_BYTES", "14000"),
            (
                "TRIBUTARY_OUTBOX_COARSEN_WIDTHS_MS",
                "[10000, 20000, 100000]",
            ),
            ("TRIBUTARY_UPLINK_MAX_IN_FLIGHT", "1"),
            ("TRIBUTARY_OUTBOX_BATCH_MAX_PARTIALS", "2"),
        ]),
    )
    .unwrap();
    let truth = truth(&sim, 5000);
    let expected: u64 = truth.values().map(|v| v.0).sum();
    let agent = Agent::start(cfg).await.unwrap();
    // The devices run their whole plan while the uplink is down.
    for _ in 0..300 {
        if agent.simulations_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // idle close
    agent.sync().await;
    let m = agent.metrics().clone();
    assert!(m.partials_coarsened.get() > 0);
    assert_eq!(m.readings_dropped.get(), 0);
    broker.restart().unwrap();
    let collector = TestCollector::start(port);
    let (n, collector) = wait(collector, expected, 60).await;
    assert_eq!(n, expected);
    let got = collector.totals();
    assert_eq!(per_series(&got), per_series(&truth));
    assert!(
        got.keys().any(|(_, _, w)| *w > 5000),
        "coarsened windows arrive as wider windows"
    );
    agent.shutdown().await.unwrap();
}
