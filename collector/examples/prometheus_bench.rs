//! Prometheus remote-write throughput: final windows per second pushed by
//! the `prometheus` sink into a real Prometheus (Debian's, started fresh on
//! 127.0.0.1 for every run with the remote-write receiver and native
//! histograms), beside a bare baseline in the same run: the same requests,
//! encoded beforehand, POSTed one after another by a plain HTTP client.
//! Median of `--runs`. Then the data in Prometheus is judged against the raw
//! readings: PromQL `histogram_count` and `histogram_sum` of every series
//! and window equal the truth exactly, `histogram_quantile` (p50, p99) lies
//! within one bucket width of the true quantile.
//!
//! ```text
//! cargo run --release -p tributary-collector --example prometheus_bench -- \
//!     [--series 1000] [--windows 60] [--readings 20] [--batch-size 500] [--runs 3]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use tokio::sync::watch;
use tributary_collector::finality::Finality;
use tributary_collector::sinks::{self, SinkConfig, SinkKind};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::{Changed, StoredWindow};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::Prometheus;

// Only its median here.
#[allow(dead_code)]
mod measure;

/// The window width: 10 s, so 60 windows span 10 minutes, well inside what
/// Prometheus' head accepts.
const W: i64 = 10_000;

#[derive(Debug, Parser)]
struct Args {
    /// Series (devices).
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// Windows per series.
    #[arg(long, default_value_t = 60)]
    windows: i64,
    /// Readings per series and window.
    #[arg(long, default_value_t = 20)]
    readings: usize,
    /// Windows per request (the sink's batch_size).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn key(d: usize) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), format!("s{}", d % 10))]);
    SeriesKey::new("temperature", format!("d{d}"), tags).unwrap()
}

/// The raw readings (ticks of 10⁻³) of every (window, series), sorted.
type Raw = Vec<Vec<Vec<i64>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t0 = (tributary_runtime::now_ms() / W - args.windows - 2) * W;
    let mut rng = fastrand::Rng::with_seed(42);
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000])?;
    let mut raw: Raw = Vec::new();
    let mut rows: Vec<Changed> = Vec::new();
    for w in 0..args.windows {
        let start = t0 + w * W;
        let window = Window::new(start, Width::new(W)?)?;
        let mut partials = Vec::new();
        let mut values = Vec::new();
        for d in 0..args.series {
            let mut s = Summary::new(Quantum::new(-3)?);
            let mut v: Vec<i64> = (0..args.readings)
                .map(|_| rng.i64(-5_000..=40_000) + (d as i64 % 7) * 1000)
                .collect();
            for (i, x) in v.iter().enumerate() {
                s.insert(start + i as i64, *x)?;
            }
            v.sort_unstable();
            values.push(v);
            rows.push(Changed {
                change: 0,
                series: key(d),
                stored: StoredWindow {
                    window,
                    summary: s.clone(),
                    revision: 0,
                },
            });
            partials.push(Partial {
                series: key(d),
                window,
                summary: s,
            });
        }
        raw.push(values);
        let seq = u64::try_from(w)? + 1;
        store
            .apply(&[Batch::new("gw", seq, start + W, partials)])
            .await?;
    }
    let bodies: Vec<Vec<u8>> = rows
        .chunks(args.batch_size)
        .map(sinks::prometheus_body)
        .collect::<Result<_, _>>()?;
    let total = rows.len();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let buckets: usize = rows
        .iter()
        .map(|r| {
            r.stored.summary.sketch().positive().iter().count()
                + r.stored.summary.sketch().negative().iter().count()
        })
        .sum();
    println!(
        "workload: {} series x {} windows of {} s = {total} windows, {} readings each; \
         {} requests of {} windows, {:.0} B/window snappy-compressed, {:.1} non-empty buckets/histogram; \
         per window 1 native histogram + 4 float samples",
        args.series,
        args.windows,
        W / 1000,
        args.readings,
        bodies.len(),
        args.batch_size,
        bytes as f64 / total as f64,
        buckets as f64 / total as f64,
    );

    let (mut sink_rates, mut bare_rates) = (Vec::new(), Vec::new());
    let mut last = None;
    for run in 0..args.runs {
        // The sink, from the store's change feed, into a fresh Prometheus.
        let prom = Prometheus::start(&[])?;
        let mut cfg = SinkConfig::new(
            format!("prom{run}"),
            SinkKind::Prometheus,
            format!("{}/api/v1/write", prom.url()),
        );
        cfg.batch_size = args.batch_size;
        cfg.width_ms = W;
        cfg.poll_ms = 10;
        cfg.timeout_ms = 30_000;
        cfg.lease_ms = 60_000;
        let (stop, stop_rx) = watch::channel(false);
        let finality = Finality {
            lateness_ms: 0,
            idle_timeout_ms: i64::MAX,
        };
        let t = Instant::now();
        let running = sinks::start(&[cfg.clone()], "bench", store.clone(), finality, stop_rx)?;
        let c = running.metrics().get(&cfg.name).unwrap().clone();
        while c.pushed.get() + c.rejected.get() < total as u64 {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "sink too slow");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sink_s = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            c.rejected.get() == 0,
            "{} windows refused",
            c.rejected.get()
        );
        stop.send(true)?;
        running.join().await?;

        // The bare baseline: the same requests, pre-encoded, into another
        // fresh Prometheus.
        let bare_prom = Prometheus::start(&[])?;
        let client = reqwest::Client::new();
        let url = format!("{}/api/v1/write", bare_prom.url());
        let t = Instant::now();
        for body in &bodies {
            let r = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .header("x-prometheus-remote-write-version", "0.1.0")
                .body(body.clone())
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "baseline: {}", r.status());
        }
        let bare_s = t.elapsed().as_secs_f64();
        let (sink_rate, bare_rate) = (total as f64 / sink_s, total as f64 / bare_s);
        println!(
            "run {}: sink {sink_rate:.0} windows/s ({sink_s:.2} s), bare POSTs {bare_rate:.0} windows/s ({bare_s:.2} s)",
            run + 1
        );
        sink_rates.push(sink_rate);
        bare_rates.push(bare_rate);
        last = Some(prom);
    }
    let (sink, bare) = (measure::median(sink_rates), measure::median(bare_rates));
    println!(
        "median of {}: sink {sink:.0} windows/s ({:.0} samples/s), bare {bare:.0} windows/s; sink/bare = {:.2}",
        args.runs,
        sink * 5.0,
        sink / bare
    );
    if let Some(prom) = last {
        judge(&prom, &args, t0, &raw).await?;
    }
    Ok(())
}

/// An instant query at `t` (ms): value by device.
async fn query(prom: &Prometheus, q: &str, t: i64) -> anyhow::Result<BTreeMap<String, f64>> {
    let time = format!("{}.{:03}", t / 1000, t % 1000);
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", prom.url()),
        [("query", q), ("time", &time)],
    )?;
    let v: Value = serde_json::from_str(&reqwest::get(url).await?.text().await?)?;
    anyhow::ensure!(v["status"] == "success", "{q}: {v}");
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let device = r["metric"]["device"].as_str().unwrap_or("").to_string();
        let value: f64 = r["value"][1].as_str().unwrap_or("NaN").parse()?;
        out.insert(device, value);
    }
    Ok(out)
}

/// Checks every series and window in Prometheus against the raw readings.
async fn judge(prom: &Prometheus, args: &Args, t0: i64, raw: &Raw) -> anyhow::Result<()> {
    let (mut checked, mut worst) = (0usize, 0f64);
    // Scale 6 for these readings (asserted through the bucket bound below
    // being that of scale 6).
    let width = 2f64.powf(1.0 / 64.0) - 1.0;
    for (w, values) in raw.iter().enumerate() {
        let end = t0 + (w as i64 + 1) * W;
        let count = query(prom, "histogram_count(temperature)", end).await?;
        let sum = query(prom, "histogram_sum(temperature)", end).await?;
        let p50 = query(prom, "histogram_quantile(0.5, temperature)", end).await?;
        let p99 = query(prom, "histogram_quantile(0.99, temperature)", end).await?;
        anyhow::ensure!(
            count.len() == args.series,
            "window {w}: {} series",
            count.len()
        );
        for (d, v) in values.iter().enumerate() {
            let name = format!("d{d}");
            let exact_sum = v.iter().sum::<i64>() as f64 / 1000.0;
            anyhow::ensure!(count[&name] == v.len() as f64, "count {name} {w}");
            anyhow::ensure!(sum[&name] == exact_sum, "sum {name} {w}");
            for (q, got) in [(0.5, p50[&name]), (0.99, p99[&name])] {
                let rank = q * v.len() as f64;
                let k = (1..=v.len()).find(|k| *k as f64 >= rank).unwrap_or(v.len());
                let truth = v[k - 1] as f64 / 1000.0;
                let rel = (got - truth).abs() / truth.abs();
                if truth != 0.0 {
                    anyhow::ensure!(
                        rel <= width * (1.0 + 1e-9),
                        "q{q} {name} {w}: {got} vs {truth}"
                    );
                    worst = worst.max(rel);
                }
            }
            checked += 1;
        }
    }
    println!(
        "judged {checked} series-windows in Prometheus against the raw readings: counts and sums equal, \
         p50/p99 within one bucket (worst relative error {:.3} %, bound {:.3} %)",
        worst * 100.0,
        width * 100.0
    );
    Ok(())
}
