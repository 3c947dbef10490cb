//! End to end with simulated devices, a real mosquitto and a stand-in
//! collector: the partials received upstream, de-duplicated by (agent, seq),
//! add up exactly to the readings the devices produced per series and window,
//! and their merges agree with the oracle's statistics of those readings.

mod common;

use std::time::Duration;

use common::*;
use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_testkit::{Mosquitto, MosquittoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_add_up_exactly_per_series_and_window() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(4, 60, start_ms(5000), 0);
    let cfg = Config::from_toml(&agent_toml(dir.path(), broker.port(), &sim, "")).unwrap();
    let truth = truth(&sim, 5000);
    let expected: u64 = truth.values().map(|v| v.0).sum();
    let agent = Agent::start(cfg).await.unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let n = collector.wait_for(expected, Duration::from_secs(60));
        (n, collector)
    })
    .await
    .unwrap();
    let (n, collector) = got;
    assert_eq!(n, expected);
    assert_eq!(collector.totals(), truth);
    let verdict = collector.verdict(&sim, 5000);
    assert!(verdict.ok(), "{:#?}", verdict.problems);
    let c = agent.counters();
    assert_eq!(c.readings_accepted, expected);
    assert_eq!(c.rejected, 0);
    agent.shutdown().await.unwrap();
}
