//! The InfluxDB line-protocol sink against a real server: Debian's
//! VictoriaMetrics (which takes InfluxDB's v2 write API, `/api/v2/write`),
//! started by the test on 127.0.0.1. The points are read back with
//! VictoriaMetrics' export API and compared with the truth from the raw
//! readings: count, min and max exactly; sum, mean and the quantiles to
//! VictoriaMetrics' storage precision (12 significant decimal digits, its
//! documented limit), and the quantiles also against Tributary's stored
//! answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod export_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use export_common::MIN;
use serde_json::Value;
use tributary_collector::sinks::{SinkConfig, SinkKind};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_oracle::{Ratio, Reading, Stats};
use tributary_testkit::VictoriaMetrics;

fn key(device: &str) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), "north pole".to_string())]);
    SeriesKey::new("temperature", device, tags).unwrap()
}

/// `(metric name, device) → {timestamp: value}` of everything stored.
async fn export(vm: &VictoriaMetrics) -> BTreeMap<(String, String), BTreeMap<i64, f64>> {
    let client = reqwest::Client::new();
    let flush = format!("{}/internal/force_flush", vm.url());
    client.get(flush).send().await.unwrap();
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/export", vm.url()),
        [("match[]", "{__name__=~\"temperature_.*\"}")],
    )
    .unwrap();
    let body = client.get(url).send().await.unwrap().text().await.unwrap();
    let mut out: BTreeMap<(String, String), BTreeMap<i64, f64>> = BTreeMap::new();
    for line in body.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["metric"]["site"], "north pole");
        let name = v["metric"]["__name__"].as_str().unwrap().to_string();
        let device = v["metric"]["device"].as_str().unwrap().to_string();
        let points = out.entry((name, device)).or_default();
        let ts = v["timestamps"].as_array().unwrap();
        for (t, x) in ts.iter().zip(v["values"].as_array().unwrap()) {
            points.insert(t.as_i64().unwrap(), x.as_f64().unwrap());
        }
    }
    out
}

/// Equal to 12 significant decimal digits (VictoriaMetrics' precision).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-11 * a.abs().max(b.abs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_read_back_from_victoria_metrics_equal_the_truth() {
    let vm = VictoriaMetrics::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let t0 = (tributary_runtime::now_ms() / MIN - 10) * MIN;
    let mut rng = fastrand::Rng::with_seed(3);
    let mut truth: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    let (devices, windows) = (4usize, 3i64);
    for w in 0..windows {
        let start = t0 + w * MIN;
        let mut partials = Vec::new();
        for d in 0..devices {
            let v: Vec<i64> = (0..rng.usize(2..=40))
                .map(|_| rng.i64(-30_000..=45_000))
                .collect();
            let device = format!("d{d}");
            partials.push(export_common::partial(key(&device), start, &v));
            truth.insert((device, w), v);
        }
        let seq = u64::try_from(w).unwrap() + 1;
        store
            .apply(&[Batch::new("gw", seq, start + MIN, partials)])
            .await
            .unwrap();
    }
    let mut cfg = SinkConfig::new("vm", SinkKind::Influx, vm.url());
    cfg.org = Some("tributary".into());
    cfg.bucket = Some("sensors".into());
    export_common::quick(&mut cfg);
    let (sinks, stop) = export_common::start(&cfg, &store);
    let c = sinks.metrics().get("vm").unwrap().clone();
    let total = devices as u64 * windows as u64;
    let t = Instant::now();
    while c.pushed.get() < total {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "pushed {}",
            c.pushed.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything pushed is answered 2xx; wait until it is searchable.
    let t = Instant::now();
    let got = loop {
        let got = export(&vm).await;
        let complete = got.get(&("temperature_count".into(), "d0".into()));
        if got.len() >= devices * 12 && complete.is_some_and(|p| p.len() == windows as usize) {
            break got;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not searchable: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for ((device, w), raw) in &truth {
        let start = t0 + w * MIN;
        let at = |field: &str| got[&(format!("temperature_{field}"), device.clone())][&start];
        let n = raw.len() as i64;
        let sum: i64 = raw.iter().sum();
        assert_eq!(at("count"), n as f64);
        let exact = |num: i64, den: i64| {
            Ratio::decimal(num, -3)
                .mul(&Ratio::new(1.into(), (den as u64).into()).unwrap())
                .to_f64()
        };
        assert_eq!(at("min"), exact(*raw.iter().min().unwrap(), 1));
        assert_eq!(at("max"), exact(*raw.iter().max().unwrap(), 1));
        assert!(close(at("sum"), exact(sum, 1)), "{device} {w}");
        assert!(close(at("mean"), exact(sum, n)), "{device} {w}");
        assert_eq!(at("revision"), 0.0);
        assert_eq!(at("final"), 1.0);
        let stored = store
            .windows(&key(device), Width::new(MIN).unwrap(), start, start + 1)
            .await
            .unwrap();
        // The stored estimate lies in the bucket of the right-ranked raw
        // reading at the sketch's scale (the oracle's check), and the
        // exported value is that estimate.
        let s = &stored[0].summary;
        let readings: Vec<Reading> = raw
            .iter()
            .map(|&ticks| Reading {
                time_ms: start,
                ticks,
            })
            .collect();
        let want = Stats::of(-3, &readings).unwrap();
        for (field, pct, q) in [("p50", "50", 0.5), ("p90", "90", 0.9), ("p99", "99", 0.99)] {
            let estimate = s.quantile(q).unwrap().value;
            want.check_quantile(pct, estimate, s.sketch().scale())
                .unwrap();
            assert!(close(at(field), estimate), "{field}");
        }
    }
    stop.send(true).unwrap();
    sinks.join().await.unwrap();
}
