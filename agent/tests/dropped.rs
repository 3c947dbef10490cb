//! Dropped readings (issue #12): when even the outbox's floor cannot hold
//! every series, the oldest are dropped — and counted durably. The count
//! survives a restart in `/metrics`, and reaches the collector exactly once
//! as per-batch deltas: what arrived plus what was reported dropped is
//! exactly what went in.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestCollector;
use tributary_agent::config::Config;
use tributary_agent::engine::Input;
use tributary_agent::{Agent, AgentHandle};
use tributary_core::{Quantum, SeriesKey};
use tributary_testkit::{free_port, Mosquitto, MosquittoOptions};

/// Series fed, and readings per series per window.
const SERIES: usize = 40;
const PER_WINDOW: i64 = 100;

fn config(dir: &std::path::Path, broker: u16, http: u16) -> Config {
    Config::from_toml(&format!(
        "agent_id = \"gw-drops\"\ndata_dir = {:?}\n\
[window]\nwidth_ms = 10000\nallowed_lateness_ms = 0\nidle_close_ms = 1000\n\
[outbox]\nmax_bytes = 8192\n\
[uplink]\nport = {broker}\nconfirm_timeout_ms = 1000\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
[http]\nlisten = \"127.0.0.1:{http}\"\n",
        dir.display().to_string()
    ))
    .unwrap()
}

/// Feeds `windows` windows of every series from window `first`, readings
/// spread over four decades (so a row of each series takes ~900 bytes, and
/// forty of them do not fit); returns how many readings went in.
async fn feed(agent: &AgentHandle, first: i64, windows: i64) -> u64 {
    let t0 = common::start_ms(3_600_000);
    let mut rng = fastrand::Rng::with_seed(first as u64);
    let mut n = 0;
    for s in 0..SERIES {
        let key = SeriesKey::new("flow", format!("dev-{s}"), BTreeMap::new()).unwrap();
        let points: Vec<(i64, i64)> = (first * PER_WINDOW..(first + windows) * PER_WINDOW)
            .map(|i| {
                let x = 10f64.powf(rng.f64() * 4.0 - 1.0);
                (t0 + i * 10_000 / PER_WINDOW, (x * 1e6) as i64)
            })
            .collect();
        n += points.len() as u64;
        let input = Input::Readings {
            key,
            quantum: Quantum::new(-6).unwrap(),
            points,
            done: None,
        };
        agent.engine().send(input).await.unwrap();
    }
    agent.sync().await;
    n
}

/// Waits until what the collector received and was told was dropped adds
/// up to `total` (or 60 s pass); returns (received, reported dropped).
async fn settle(collector: &TestCollector, total: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, dropped) = {
            let s = collector.state.lock().unwrap();
            (s.readings, s.dropped)
        };
        if got + dropped >= total || Instant::now() > deadline {
            return (got, dropped);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_readings_survive_a_restart_and_are_reported_exactly_once() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();

    let agent = Agent::start(config(dir.path(), broker.port(), http))
        .await
        .unwrap();
    let mut fed = feed(&agent, 0, 6).await;
    let first = agent.metrics().readings_dropped.get();
    assert!(first > 0, "the floor cannot hold forty wide series");
    agent.shutdown().await.unwrap();

    let agent = Agent::start(config(dir.path(), broker.port(), http))
        .await
        .unwrap();
    assert_eq!(
        agent.metrics().readings_dropped.get(),
        first,
        "counted durably"
    );
    let shown = tokio::task::spawn_blocking(move || {
        common::metric(http, "tributary_agent_readings_dropped_total")
    })
    .await
    .unwrap();
    assert_eq!(shown, Some(first as f64), "/metrics after the restart");
    fed += feed(&agent, 6, 6).await;

    let (got, reported) = settle(&collector, fed).await;
    let total = agent.metrics().readings_dropped.get();
    assert!(total > first);
    assert_eq!(reported, total, "every drop reported, once");
    assert_eq!(got + reported, fed, "what arrived and what was dropped");
    agent.shutdown().await.unwrap();
}
