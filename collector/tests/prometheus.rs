//! The Prometheus remote-write sink against a real Prometheus (Debian's
//! 2.42, started by the test on 127.0.0.1 with the remote-write receiver and
//! native histograms): PromQL's `histogram_count`, `histogram_sum`, the
//! count/sum/min/max series and a sum over series equal the truth computed
//! here from the raw readings (and Tributary's own stored answers) exactly;
//! `histogram_quantile` lies within one bucket of the sketch's scale of the
//! true quantile; a revision, which Prometheus cannot take, is refused,
//! counted and logged while the windows after it still arrive. Every query
//! of the Grafana dashboard (`config/grafana/`) runs and finds the data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod export_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use export_common::{start, MIN};
use serde_json::Value;
use tributary_collector::sinks::{SinkConfig, SinkCounters, SinkKind, Sinks};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Partial};
use tributary_core::{SeriesKey, Width};
use tributary_testkit::Prometheus;

/// The start of the first window: 20 minutes ago, on a minute.
fn t0() -> i64 {
    (tributary_runtime::now_ms() / MIN - 20) * MIN
}

fn key(device: &str) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), "north".to_string())]);
    SeriesKey::new("temperature", device, tags).unwrap()
}

/// The readings of (device, window), in ticks of 10⁻³: a device's own
/// pseudo-random numbers; device `d0` also has zeros and negatives.
fn readings(device: usize, window: i64, rng: &mut fastrand::Rng) -> Vec<i64> {
    let n = rng.usize(1..=60);
    (0..n)
        .map(|_| match (device, rng.u8(0..10)) {
            (0, 0) => 0,
            (0, 1) => -rng.i64(1..=50_000),
            _ => rng.i64(1..=100_000) + window * 7,
        })
        .collect()
}

fn partial(t0: i64, device: &str, window: i64, values: &[i64]) -> Partial {
    export_common::partial(key(device), t0 + window * MIN, values)
}

fn sink(prom: &Prometheus) -> SinkConfig {
    let mut s = SinkConfig::new(
        "prom",
        SinkKind::Prometheus,
        format!("{}/api/v1/write", prom.url()),
    );
    export_common::quick(&mut s);
    s.timeout_ms = 5_000;
    s.batch_size = 50;
    s
}

fn counters(s: &Sinks) -> Arc<SinkCounters> {
    s.metrics().get("prom").unwrap().clone()
}

/// Polls `cond` until true; panics after 30 s (a hang guard).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instant PromQL query at `t` (ms): the vector's values by `device`
/// label (`""` when the result has none).
async fn query(prom: &Prometheus, q: &str, t: i64) -> BTreeMap<String, f64> {
    let time = format!("{}.{:03}", t / 1000, t % 1000);
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", prom.url()),
        [("query", q), ("time", &time)],
    )
    .unwrap();
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let device = r["metric"]["device"].as_str().unwrap_or("").to_string();
            let value: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            (device, value)
        })
        .collect()
}

/// Prometheus 2.42's quantile rank: the first element (1-based) whose
/// cumulative count reaches q·n, computed in `f64` as Prometheus does.
fn prom_rank(q: f64, n: usize) -> usize {
    let rank = q * n as f64;
    (1..=n).find(|k| *k as f64 >= rank).unwrap_or(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_gives_tributarys_counts_sums_and_bounded_quantiles() {
    let prom = Prometheus::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let t0 = t0();
    let (devices, windows) = (12usize, 6i64);
    let mut rng = fastrand::Rng::with_seed(13);
    let mut truth: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for w in 0..windows {
        let mut partials = Vec::new();
        for d in 0..devices {
            let v = readings(d, w, &mut rng);
            let name = format!("d{d}");
            partials.push(partial(t0, &name, w, &v));
            truth.insert((name, w), v);
        }
        let seq = u64::try_from(w).unwrap() + 1;
        let batch = Batch::new("gw", seq, t0 + (w + 1) * MIN, partials);
        store.apply(&[batch]).await.unwrap();
    }
    let (sinks, stop) = start(&sink(&prom), &store);
    let c = counters(&sinks);
    let total = devices as u64 * windows as u64;
    wait_until("every window pushed", || c.pushed.get() == total).await;
    assert_eq!(c.rejected.get(), 0);

    let mut worst = 0.0f64;
    for w in 0..windows {
        let end = t0 + (w + 1) * MIN;
        let count = query(&prom, "histogram_count(temperature)", end).await;
        let sum = query(&prom, "histogram_sum(temperature)", end).await;
        let plain_count = query(&prom, "temperature_count", end).await;
        let plain_sum = query(&prom, "temperature_sum", end).await;
        let min = query(&prom, "temperature_min", end).await;
        let max = query(&prom, "temperature_max", end).await;
        let merged = query(&prom, "histogram_count(sum(temperature))", end).await;
        let mut all = 0usize;
        for d in 0..devices {
            let name = format!("d{d}");
            let mut v = truth[&(name.clone(), w)].clone();
            v.sort_unstable();
            all += v.len();
            // The truth, from the raw ticks: n; the nearest f64 to Σv/1000
            // (an exact integer divided once, correctly rounded).
            let exact_sum = v.iter().sum::<i64>() as f64 / 1000.0;
            assert_eq!(count[&name], v.len() as f64, "{name} window {w}");
            assert_eq!(plain_count[&name], v.len() as f64);
            assert_eq!(sum[&name], exact_sum, "{name} window {w}");
            assert_eq!(plain_sum[&name], exact_sum);
            assert_eq!(min[&name], v[0] as f64 / 1000.0);
            assert_eq!(max[&name], v[v.len() - 1] as f64 / 1000.0);
            // Tributary's own stored answer agrees.
            let start = t0 + w * MIN;
            let stored = store
                .windows(&key(&name), Width::new(MIN).unwrap(), start, start + 1)
                .await
                .unwrap();
            let s = &stored[0].summary;
            assert_eq!(
                (s.count() as f64, s.sum()),
                (count[&name], Some(sum[&name]))
            );
            // Quantiles (positive-only devices): Prometheus interpolates
            // linearly inside the bucket holding its rank, so it is within
            // one bucket width of the true element: relative error at most
            // 2^(2^-scale) − 1 (twice the sketch's midpoint bound).
            if d == 0 {
                continue;
            }
            let scale = s.sketch().scale();
            let width = 2f64.powf(2f64.powi(-i32::from(scale))) - 1.0;
            for q in [0.5, 0.9, 0.99] {
                let pq = format!("histogram_quantile({q}, temperature{{device=\"{name}\"}})");
                let got = query(&prom, &pq, end).await[&name];
                let exact = v[prom_rank(q, v.len()) - 1] as f64 / 1000.0;
                let rel = (got - exact).abs() / exact;
                assert!(
                    rel <= width * (1.0 + 1e-9),
                    "{pq} = {got}, truth {exact}, scale {scale}"
                );
                worst = worst.max(rel);
            }
        }
        // Prometheus merges the native histograms of all devices exactly.
        assert_eq!(merged[""], all as f64, "window {w}");
    }
    println!("worst relative quantile error: {worst:.5}");

    // Every query of the Grafana dashboard runs and finds the data.
    let dashboard: Value = serde_json::from_str(include_str!(
        "../../config/grafana/tributary-dashboard.json"
    ))
    .unwrap();
    let end = t0 + windows * MIN;
    let mut n = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("${metric}", "temperature")
                .replace("$metric", "temperature")
                .replace("$device", "d1|d2");
            let got = query(&prom, &expr, end).await;
            assert!(!got.is_empty(), "{expr}: no data");
            assert!(got.values().all(|v| v.is_finite()), "{expr}: {got:?}");
            n += 1;
        }
    }
    assert!(n >= 8, "{n} dashboard queries");
    stop.send(true).unwrap();
    sinks.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_is_refused_and_counted_and_later_windows_still_arrive() {
    let prom = Prometheus::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let t0 = t0();
    let first = vec![
        partial(t0, "d1", 0, &[1000, 2000]),
        partial(t0, "d1", 1, &[3000]),
    ];
    store
        .apply(&[Batch::new("gw", 1, t0 + 2 * MIN, first)])
        .await
        .unwrap();
    let (sinks, stop) = start(&sink(&prom), &store);
    let c = counters(&sinks);
    wait_until("windows 0 and 1", || c.pushed.get() == 2).await;
    // Late readings for windows 0 (no longer the newest sample: out of
    // order) and 1 (the newest: a duplicate timestamp), and window 2.
    let late = vec![
        partial(t0, "d1", 0, &[500]),
        partial(t0, "d1", 1, &[600]),
        partial(t0, "d1", 2, &[4000, 5000, 6000]),
    ];
    store
        .apply(&[Batch::new("gw", 2, t0 + 3 * MIN, late)])
        .await
        .unwrap();
    wait_until("window 2", || c.pushed.get() == 3).await;
    wait_until("both revisions refused", || c.rejected.get() == 2).await;
    let count = |w: i64| {
        let prom = &prom;
        async move { query(prom, "histogram_count(temperature)", t0 + (w + 1) * MIN).await["d1"] }
    };
    // Prometheus keeps the first revision of windows 0 and 1.
    assert_eq!(count(0).await, 2.0);
    assert_eq!(count(1).await, 1.0);
    assert_eq!(count(2).await, 3.0);
    stop.send(true).unwrap();
    sinks.join().await.unwrap();
}
