//! Degraded mode (issue #12): the scenario of the issue with real parts —
//! 14 devices publishing JSON readings to a local mosquitto (42 series, ~480
//! readings/s of event time, values over four decades so a partial is ~900
//! bytes), 10 s windows, `outbox.max_bytes = 100000`, the default coarsening
//! ladder (5 min, 1 h), and the uplink broker (another mosquitto) stopped
//! for 60 s and for 150 s of input. Nothing may be dropped: every reading
//! reaches the stand-in collector, exact at whatever width it ended up in,
//! judged against the readings the test published.
//!
//! The devices publish ten times faster than real time (event time is theirs
//! to set), so "a 60 s outage" is 60 s of input: the uplink broker is stopped
//! before the input of second 30 and started again 60 s of input later.

#![allow(clippy::unwrap_used)]

mod common;
mod json_fleet;

use std::time::{Duration, Instant};

use common::*;
use json_fleet::{assert_exact_where_they_landed, Fleet, Publisher};
use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_testkit::{Mosquitto, MosquittoOptions};

/// Devices (three series each).
const DEVICES: usize = 14;
/// A reading per series every 87 ms: 42 series, ~483 readings/s.
const PERIOD_MS: i64 = 87;
/// Event-time seconds of input before the outage and after it.
const BEFORE_S: i64 = 30;
const AFTER_S: i64 = 90;
/// Wall-clock time per second of input.
const PACE: Duration = Duration::from_millis(100);

fn agent_config(dir: &std::path::Path, uplink: u16, local: u16) -> Config {
    Config::from_toml(&format!(
        "agent_id = \"gw-degraded\"\ndata_dir = {:?}\n\
[window]\nwidth_ms = 10000\nidle_close_ms = 1500\n\
[outbox]\nmax_bytes = 100000\n\
[uplink]\nport = {uplink}\nconfirm_timeout_ms = 2000\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
[local_mqtt]\nenabled = true\nport = {local}\n\
[http]\nlisten = \"\"\n",
        dir.display().to_string(),
    ))
    .unwrap()
}

/// Runs the scenario with an outage of `outage_s` seconds of input and a
/// collector that confirms each batch `confirm_after` after it arrived.
async fn outage_drops_nothing(outage_s: i64, confirm_after: Duration) {
    let mut uplink = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let local = Mosquitto::start(MosquittoOptions {
        max_inflight_messages: Some(1000),
        max_queued_messages: Some(100_000),
        port: None,
    })
    .unwrap();
    let collector = TestCollector::start_confirming_after(uplink.port(), confirm_after);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(agent_config(dir.path(), uplink.port(), local.port()))
        .await
        .unwrap();
    let m = agent.metrics().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.local_subscribed.get() != 1 {
        assert!(Instant::now() < deadline, "the agent did not subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Aligned to an hour, so the outage lies in one 5-minute window.
    let mut fleet = Fleet::new(DEVICES, start_ms(3_600_000), PERIOD_MS, 12);
    let publisher = Publisher::start(local.port());
    let t0 = Instant::now();
    let mut max_outbox = 0;
    let mut dropped_by_reconnect = 0;
    for s in 0..BEFORE_S + outage_s + AFTER_S {
        if s == BEFORE_S {
            uplink.stop();
        }
        if s == BEFORE_S + outage_s {
            dropped_by_reconnect = m.readings_dropped.get();
            uplink.restart().unwrap();
        }
        for (topic, payload) in fleet.chunk(s * 1000, (s + 1) * 1000) {
            publisher.publish(&topic, payload);
        }
        max_outbox = max_outbox.max(m.outbox_bytes.get());
        let next = t0 + PACE * (s as u32 + 1);
        tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
    }
    let expected = fleet.readings.len() as u64;

    // Everything arrives, or what did not was dropped (and counted).
    let m2 = m.clone();
    let (got, collector) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n = collector.readings();
            if n + m2.readings_dropped.get() >= expected || Instant::now() > deadline {
                return (n, collector);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let dropped = m.readings_dropped.get();
    let during = expected as i64 * outage_s / (BEFORE_S + outage_s + AFTER_S);
    eprintln!(
        "outage of {outage_s} s ({during} readings during it): {got} of {expected} readings \
         arrived, {dropped} dropped ({:.1} % of all, {:.1} % of the outage's; {} of them \
         after the uplink returned), {} partials coarsened, outbox at most {max_outbox} bytes",
        dropped as f64 * 100.0 / expected as f64,
        dropped as f64 * 100.0 / during as f64,
        dropped - dropped_by_reconnect,
        m.partials_coarsened.get(),
    );
    assert_eq!(dropped, 0, "readings dropped");
    assert_eq!(got, expected, "readings arrived");
    assert_eq!(collector.state.lock().unwrap().dropped, 0, "drops reported");
    let widths = assert_exact_where_they_landed(&collector.totals(), &fleet.readings);
    eprintln!("partials received per width (ms): {widths:?}");
    assert!(
        widths.keys().any(|&w| w >= 300_000),
        "the outage was survived by coarsening: {widths:?}"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_outage_with_a_small_outbox_drops_nothing() {
    outage_drops_nothing(60, Duration::ZERO).await;
}

/// After the outage, batches formed but not yet confirmed (by a collector
/// slow to confirm: 1.5 s, as a busy one with slow commits) must not make
/// the agent drop the partials that keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_confirming_collector_after_the_outage_makes_nothing_drop() {
    outage_drops_nothing(60, Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_s_outage_with_a_small_outbox_drops_nothing() {
    outage_drops_nothing(150, Duration::ZERO).await;
}
