//! The OTLP/HTTP sink against a receiver that decodes with code no one here
//! wrote: `tests/otlp_receiver.py`, a small Python HTTP server using PyPI's
//! `opentelemetry-proto` (started by the test on 127.0.0.1). Every data
//! point's count, sum, min, max, zero count and buckets equal the truth
//! computed from the raw readings by the oracle (exact sums; each reading's
//! bucket from the bucket definition), and Tributary's stored sketch; the
//! resource, scope, series attributes and window times are as documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod export_common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use export_common::MIN;
use serde_json::{json, Value};
use tributary_collector::sinks::{SinkConfig, SinkKind};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_oracle::{bucket, Ratio};

/// The Python receiver, killed on drop.
struct Receiver {
    child: Child,
    out: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("points.jsonl");
        let port = tributary_testkit::free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(&out)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 (./scripts/test.sh installs opentelemetry-proto)");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("otlp_receiver.py exited with {status}: is opentelemetry-proto installed?");
            }
            assert!(t.elapsed() < Duration::from_secs(30), "receiver not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Receiver {
            child,
            out,
            port,
            _dir: dir,
        }
    }

    fn points(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(device: &str) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), "north".to_string())]);
    SeriesKey::new("room.temperature", device, tags).unwrap()
}

/// Buckets as `{index: count}` of the non-empty ones.
fn nonzero(offset: i64, counts: &[Value]) -> BTreeMap<i64, u64> {
    counts
        .iter()
        .enumerate()
        .map(|(k, c)| (offset + k as i64, c.as_u64().unwrap()))
        .filter(|&(_, c)| c > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_points_equal_the_raw_truth_bucket_for_bucket() {
    let rx = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let t0 = (tributary_runtime::now_ms() / MIN - 10) * MIN;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut truth: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    let (devices, windows) = (5usize, 4i64);
    for w in 0..windows {
        let start = t0 + w * MIN;
        let mut partials = Vec::new();
        for d in 0..devices {
            let n = rng.usize(1..=80);
            // Zeros, negatives and values over six decades.
            let v: Vec<i64> = (0..n)
                .map(|_| match rng.u8(0..10) {
                    0 => 0,
                    1 => -rng.i64(1..=2_000_000),
                    _ => rng.i64(1..=2_000_000_000) / rng.i64(1..=1000),
                })
                .collect();
            let device = format!("d{d}");
            partials.push(export_common::partial(key(&device), start, &v));
            truth.insert((device, w), v);
        }
        let seq = u64::try_from(w).unwrap() + 1;
        let batch = Batch::new("gw", seq, start + MIN, partials);
        store.apply(&[batch]).await.unwrap();
    }
    let mut cfg = SinkConfig::new(
        "otel",
        SinkKind::Otlp,
        format!("http://127.0.0.1:{}/v1/metrics", rx.port),
    );
    export_common::quick(&mut cfg);
    cfg.batch_size = 7;
    let (sinks, stop) = export_common::start(&cfg, &store);
    let c = sinks.metrics().get("otel").unwrap().clone();
    let total = (devices as u64) * (windows as u64);
    let t = Instant::now();
    while c.pushed.get() < total {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "pushed {}",
            c.pushed.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let points = rx.points();
    assert_eq!(points.len() as u64, total, "each window once");
    for p in &points {
        assert_eq!(
            p["resource"],
            json!({"service.name": "tributary-collector", "tributary.sink": "otel"})
        );
        assert_eq!(p["scope"], "tributary");
        assert_eq!(p["metric"], "room.temperature");
        assert_eq!(p["data"], "exponential_histogram");
        assert_eq!(p["temporality"], 1, "DELTA");
        let device = p["attributes"]["device"].as_str().unwrap().to_string();
        assert_eq!(p["attributes"], json!({"device": device, "site": "north"}));
        let start_ms = i64::try_from(p["start_ns"].as_u64().unwrap() / 1_000_000).unwrap();
        let w = (start_ms - t0) / MIN;
        assert_eq!(p["start_ns"].as_u64().unwrap() % 1_000_000, 0);
        assert_eq!(
            p["time_ns"].as_u64().unwrap(),
            p["start_ns"].as_u64().unwrap() + 60_000_000_000
        );
        let raw = &truth[&(device.clone(), w)];

        // The truth from the raw ticks, by the oracle.
        let n = raw.len() as u64;
        let sum = Ratio::decimal(raw.iter().sum::<i64>(), -3).to_f64();
        let (lo, hi) = (raw.iter().min().unwrap(), raw.iter().max().unwrap());
        assert_eq!(p["count"], n);
        assert_eq!(p["sum"].as_f64().unwrap(), sum, "{device} window {w}");
        assert_eq!(p["min"].as_f64().unwrap(), Ratio::decimal(*lo, -3).to_f64());
        assert_eq!(p["max"].as_f64().unwrap(), Ratio::decimal(*hi, -3).to_f64());
        assert_eq!(p["zero_threshold"], 0.0);
        let scale = i8::try_from(p["scale"].as_i64().unwrap()).unwrap();
        let (mut pos, mut neg, mut zeros) = (BTreeMap::new(), BTreeMap::new(), 0u64);
        for &v in raw {
            match bucket::index(&Ratio::decimal(v, -3), scale) {
                None => zeros += 1,
                Some(i) if v > 0 => *pos.entry(i).or_insert(0u64) += 1,
                Some(i) => *neg.entry(i).or_insert(0u64) += 1,
            }
        }
        assert_eq!(p["zero_count"], zeros);
        let side = |name: &str| {
            let b = p[name].as_array().unwrap();
            nonzero(b[0].as_i64().unwrap(), b[1].as_array().unwrap())
        };
        assert_eq!(side("positive"), pos, "{device} window {w}");
        assert_eq!(side("negative"), neg, "{device} window {w}");

        // And Tributary's stored sketch, layout included.
        let stored = store
            .windows(
                &key(&device),
                Width::new(MIN).unwrap(),
                start_ms,
                start_ms + 1,
            )
            .await
            .unwrap();
        let sk = stored[0].summary.sketch();
        assert_eq!(i32::from(sk.scale()), p["scale"].as_i64().unwrap() as i32);
        let layout = |b: tributary_core::sketch::Buckets<'_, _>| {
            json!([b.offset(), b.counts().collect::<Vec<u64>>()])
        };
        assert_eq!(layout(sk.positive()), p["positive"]);
        assert_eq!(layout(sk.negative()), p["negative"]);
    }
    stop.send(true).unwrap();
    sinks.join().await.unwrap();
}
