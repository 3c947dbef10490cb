//! The influx sink (`api = "v1"`) against a real InfluxDB 1.x (Debian's
//! `influxd`, started by the test on 127.0.0.1): the points read back with
//! InfluxQL equal the truth from the raw readings (count, sum, min, max
//! exactly, as InfluxDB stores `f64`s as they are) and Tributary's stored
//! statistics (every field); a revision overwrites its point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod export_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use export_common::MIN;
use serde_json::Value;
use tributary_collector::sinks::{InfluxApi, SinkConfig, SinkKind};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Partial};
use tributary_core::{SeriesKey, Width};
use tributary_oracle::{Ratio, Reading, Stats};
use tributary_testkit::InfluxDb;

fn key(device: &str) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), "north pole".to_string())]);
    SeriesKey::new("temperature", device, tags).unwrap()
}

fn partial(start: i64, device: &str, values: &[i64]) -> Partial {
    export_common::partial(key(device), start, values)
}

async fn influxql(db: &InfluxDb, q: &str) -> Value {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/query", db.url()),
        [("db", "sensors"), ("epoch", "ms"), ("q", q)],
    )
    .unwrap();
    let body = reqwest::Client::new()
        .post(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Every stored point: (device, time) → {field: value}.
async fn points(db: &InfluxDb) -> BTreeMap<(String, i64), BTreeMap<String, Value>> {
    let v = influxql(db, "SELECT * FROM temperature").await;
    let mut out = BTreeMap::new();
    let Some(series) = v["results"][0]["series"].as_array() else {
        return out;
    };
    for s in series {
        let cols: Vec<String> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        for row in s["values"].as_array().unwrap() {
            let fields: BTreeMap<String, Value> = cols
                .iter()
                .cloned()
                .zip(row.as_array().unwrap().iter().cloned())
                .collect();
            let device = fields["device"].as_str().unwrap().to_string();
            out.insert((device, fields["time"].as_i64().unwrap()), fields);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_read_back_from_influxdb_1_equal_the_truth_and_revisions_overwrite() {
    // reqwest is built without a crypto provider (the sinks install ring);
    // this test's client talks to InfluxDB before any sink starts.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = InfluxDb::start().unwrap();
    assert!(influxql(&db, "CREATE DATABASE sensors").await["results"][0]["error"].is_null());
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let t0 = (tributary_runtime::now_ms() / MIN - 10) * MIN;
    let mut rng = fastrand::Rng::with_seed(5);
    let mut truth: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for w in 0..3 {
        let start = t0 + w * MIN;
        let mut partials = Vec::new();
        for d in 0..3 {
            let v: Vec<i64> = (0..rng.usize(2..=30))
                .map(|_| rng.i64(-30_000..=45_000))
                .collect();
            partials.push(partial(start, &format!("d{d}"), &v));
            truth.insert((format!("d{d}"), start), v);
        }
        let seq = u64::try_from(w).unwrap() + 1;
        store
            .apply(&[Batch::new("gw", seq, start + MIN, partials)])
            .await
            .unwrap();
    }
    let mut cfg = SinkConfig::new("influx1", SinkKind::Influx, db.url());
    cfg.api = Some(InfluxApi::V1);
    cfg.bucket = Some("sensors".into());
    export_common::quick(&mut cfg);
    let (sinks, stop) = export_common::start(&cfg, &store);
    let c = sinks.metrics().get("influx1").unwrap().clone();
    let wait = |n: u64| {
        let c = c.clone();
        async move {
            let t = Instant::now();
            while c.pushed.get() < n {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "pushed {}",
                    c.pushed.get()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait(9).await;
    let got = points(&db).await;
    assert_eq!(got.len(), 9);
    let dec = |v: i64| Ratio::decimal(v, -3).to_f64();
    for ((device, start), raw) in &truth {
        let p = &got[&(device.clone(), *start)];
        assert_eq!(p["site"], "north pole");
        assert_eq!(p["count"], raw.len());
        assert_eq!(p["sum"].as_f64().unwrap(), dec(raw.iter().sum()));
        assert_eq!(p["min"].as_f64().unwrap(), dec(*raw.iter().min().unwrap()));
        assert_eq!(p["max"].as_f64().unwrap(), dec(*raw.iter().max().unwrap()));
        assert_eq!(p["revision"], 0);
        assert_eq!(p["final"], true);
        let stored = store
            .windows(&key(device), Width::new(MIN).unwrap(), *start, start + 1)
            .await
            .unwrap();
        let s = &stored[0].summary;
        // Mean and stddev exactly as the oracle computes them from the raw
        // readings; each quantile inside the bucket of the right-ranked
        // reading at the stored sketch's scale, and the stored estimate
        // itself (the point carries what the store holds).
        let want = oracle_stats(raw);
        assert_eq!(p["mean"].as_f64(), Some(want.mean()));
        assert_eq!(p["stddev"].as_f64(), want.stddev());
        for (field, pct, q) in [("p50", "50", 0.5), ("p99", "99", 0.99)] {
            let v = p[field].as_f64().unwrap();
            want.check_quantile(pct, v, s.sketch().scale()).unwrap();
            assert_eq!(v, s.quantile(q).unwrap().value, "{field}");
        }
    }

    // Late readings for d0's first window: a revision, same point.
    store
        .apply(&[Batch::new(
            "gw",
            4,
            t0 + 3 * MIN,
            vec![partial(t0, "d0", &[99_000])],
        )])
        .await
        .unwrap();
    wait(10).await;
    let got = points(&db).await;
    assert_eq!(got.len(), 9, "overwritten, not added");
    let p = &got[&("d0".to_string(), t0)];
    let mut raw = truth[&("d0".to_string(), t0)].clone();
    raw.push(99_000);
    assert_eq!(p["revision"], 1);
    assert_eq!(p["count"], raw.len());
    assert_eq!(p["sum"].as_f64().unwrap(), dec(raw.iter().sum()));
    assert_eq!(p["max"].as_f64().unwrap(), 99.0);
    stop.send(true).unwrap();
    sinks.join().await.unwrap();
}

/// The oracle's statistics of the values `raw` (ticks of 10⁻³; the
/// statistics compared here do not depend on the readings' times).
fn oracle_stats(raw: &[i64]) -> Stats {
    let rs: Vec<Reading> = raw
        .iter()
        .map(|&ticks| Reading { time_ms: 0, ticks })
        .collect();
    Stats::of(-3, &rs).unwrap()
}
