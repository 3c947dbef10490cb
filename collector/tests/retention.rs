//! Retention end to end (issue #16) on a running collector over real
//! MQTT (mosquitto) and HTTP: with agent windows kept 2 h, the retention
//! task deletes the older minutes it finds, ingest refuses a late partial
//! for an expired minute (counted as `expired`) and applies the rest of its
//! batch, and a query for minutes past their retention is answered from
//! the hour roll-ups and says so — values judged by plain integer sums of
//! the raw readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tributary_collector::config::Config;
use tributary_collector::ingest::PartialRefused;
use tributary_collector::service;
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

use mqtt_common::harness::{get_json, now_ms, Agent};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn key() -> SeriesKey {
    SeriesKey::new("temperature", "d1", BTreeMap::new()).unwrap()
}

/// The minute at `start` holding `values` (integer readings, quantum 1).
fn partial(start: i64, values: &[i64]) -> Partial {
    let mut s = Summary::new(Quantum::new(0).unwrap());
    for (i, v) in values.iter().enumerate() {
        s.insert(start + i as i64, *v).unwrap();
    }
    Partial {
        series: key(),
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    }
}

/// Polls `f` every 50 ms for up to 30 s.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_minutes_are_deleted_refused_and_served_from_hours() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[HOUR, 24 * HOUR]).unwrap();
    let now = now_ms();
    let hour0 = now / HOUR * HOUR - 5 * HOUR;
    // Raw readings by minute start: minutes 4–5 h old (past 2 h and the
    // task's grace) and minutes of the last hour.
    let mut raw: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for m in 0..6 {
        raw.insert(hour0 + m * 7 * MIN, vec![10 + m, 20 * m, 3]);
    }
    let recent = now / MIN * MIN - 30 * MIN;
    raw.insert(recent, vec![7, 8]);
    raw.insert(recent + MIN, vec![9]);
    let partials = raw.iter().map(|(&s, v)| partial(s, v)).collect();
    store
        .apply(&[Batch::new("seed", 1, now - 20 * MIN, partials)])
        .await
        .unwrap();

    let cfg = Config::from_toml(&format!(
        "rollups_ms = [3600000, 86400000]\n\
         [mqtt]\nport = {}\nclient_id = \"collector-retention\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [retention]\nwindows_ms = 7200000\ninterval_ms = 100\nbatch_rows = 2\n",
        broker.port()
    ))
    .unwrap();
    let running = service::start(&cfg, store.clone()).await.unwrap();
    let http = running.http_addr();
    let minute = Width::new(MIN).unwrap();

    // The task deletes the six old minutes, two per transaction; the
    // recent ones and the roll-ups stay.
    until("the old minutes to expire", || async {
        running.retention().expired(minute) == 6
    })
    .await;
    let left = store
        .windows(&key(), minute, i64::MIN, i64::MAX)
        .await
        .unwrap();
    let starts: Vec<i64> = left.iter().map(|w| w.window.start()).collect();
    assert_eq!(starts, [recent, recent + MIN]);
    assert_eq!(running.retention().lag_ms(minute), 0);

    // A late partial for an expired minute is refused and counted; the
    // live one in its batch applies, and the batch is confirmed.
    until("the subscription", || async {
        running.counters().subscribed.get() == 1
    })
    .await;
    let agent = Agent::connect("gw", broker.port(), None);
    let late = Batch::new(
        "gw",
        1,
        now,
        vec![partial(hour0, &[1000]), partial(recent, &[5])],
    );
    agent.publish(late.encode(Encoding::Json));
    assert_eq!(agent.confirmed(1).await, [1]);
    assert_eq!(
        running.counters().partials_refused(PartialRefused::Expired),
        1
    );
    let metrics = mqtt_common::harness::metrics_text(http).await;
    for line in [
        "tributary_collector_partials_refused_total{reason=\"expired\"} 1",
        "tributary_collector_retention_expired_rows_total{width=\"60000\"} 6",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    raw.get_mut(&recent).unwrap().push(5);
    let old = store
        .windows(&key(), minute, hour0, hour0 + MIN)
        .await
        .unwrap();
    assert!(old.is_empty(), "the refused partial recreated {old:?}");

    // Minutes from 6 h ago: past their retention, served from the hours.
    let from = hour0 - HOUR;
    let path = format!(
        "/api/v1/query?metric=temperature&width=60000&from={from}&to={now}&stats=count,sum"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::get(format!("http://{http}{path}")).await.unwrap();
    assert_eq!(
        resp.headers()["tributary-resolution"],
        "requested=60000; served=3600000; reason=retention"
    );
    let (status, body) = get_json(http, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resolution"],
        serde_json::json!({"requested": 60000, "served": 3600000, "reason": "retention"})
    );
    assert_eq!(body["step"], HOUR);
    let mut want: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    for (start, values) in &raw {
        let e = want.entry(start / HOUR * HOUR).or_default();
        e.0 += values.len() as u64;
        e.1 += values.iter().sum::<i64>();
    }
    let points = body["results"][0]["points"].as_array().unwrap();
    let got: BTreeMap<i64, (u64, i64)> = points
        .iter()
        .map(|p| {
            (
                p["t"].as_i64().unwrap(),
                (
                    p["count"].as_u64().unwrap(),
                    p["sum"].as_f64().unwrap() as i64,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Within the retention: the minutes themselves, no resolution field.
    let path = format!(
        "/api/v1/query?metric=temperature&width=60000&from={}&to={now}&stats=count",
        now - HOUR
    );
    let (status, body) = get_json(http, &path).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("resolution").is_none(), "{body}");
    assert_eq!(body["step"], MIN);
    let counts: Vec<u64> = body["results"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [3, 1]);
    running.stop().await.unwrap();
}
