//! Shared by the Modbus system tests: the points the pymodbus simulators
//! serve and the agent's registers for them, the collector side (a real
//! mosquitto and the collector's ingest into SQLite), and the judge that
//! checks stored windows against the simulators' logs of served values.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::Width;
use tributary_testkit::{Mosquitto, MosquittoOptions, Served};

pub const WIDTH: i64 = 1000;
pub const TIMEOUT_MS: i64 = 1000;

/// The points each simulated device serves, with the agent's register
/// config for the same points.
/// metric, address, type, byte order, word order, scale, offset, quantum.
pub type Point = (
    &'static str,
    u16,
    &'static str,
    &'static str,
    &'static str,
    f64,
    f64,
    i8,
);

pub const POINTS: &[Point] = &[
    // metric, address, type, byte order, word order, scale, offset, quantum
    ("temp", 0, "int16", "big", "big", 0.1, -40.0, -2),
    ("flow", 1, "uint32", "big", "little", 0.5, 0.0, -1),
    ("energy", 3, "int64", "little", "big", 1.0, 1000.0, 0),
    ("level", 7, "float32", "big", "big", 1.0, 0.0, -2),
    ("count", 9, "uint16", "big", "big", 1.0, 0.0, 0),
];

pub fn spec(seed: u32) -> String {
    let points: Vec<String> = POINTS
        .iter()
        .map(|(m, a, t, b, w, s, o, q)| {
            format!(
                r#"{{"metric":"{m}","address":{a},"type":"{t}","byte_order":"{b}","word_order":"{w}","scale":{s:?},"offset":{o:?},"quantum":{q}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"unit":1,"seed":{seed},"points":[{}]}}"#,
        points.join(",")
    )
}

pub fn registers() -> String {
    POINTS
        .iter()
        .map(|(m, a, t, b, w, s, o, q)| {
            format!(
                "[[modbus.registers]]\nmetric = \"{m}\"\naddress = {a}\ntype = \"{t}\"\n\
                 byte_order = \"{b}\"\nword_order = \"{w}\"\nscale = {s:?}\noffset = {o:?}\nquantum = {q}\n"
            )
        })
        .collect()
}

/// (metric, device) → windows in time order: (start, count, sum of ticks).
pub type Stored = BTreeMap<(String, String), Vec<(i64, u64, i128)>>;

pub async fn stored(store: &SqliteStore) -> Stored {
    let mut out = Stored::new();
    for ((key, start), w) in all_windows(store, Width::new(WIDTH).unwrap())
        .await
        .unwrap()
    {
        out.entry((key.metric().to_string(), key.device().to_string()))
            .or_default()
            .push((start, w.summary.count(), w.summary.sum_ticks()));
    }
    out
}

/// Checks the stored windows of one series against what the simulator
/// served, in order; returns the values checked.
pub fn judge(metric: &str, windows: &[(i64, u64, i128)], served: &[Served]) -> usize {
    let served: Vec<&Served> = served.iter().filter(|s| s.metric == metric).collect();
    let mut next = 0usize;
    for &(start, count, sum) in windows {
        let n = usize::try_from(count).unwrap();
        let run = served
            .get(next..next + n)
            .unwrap_or_else(|| panic!("{metric}: window {start} holds more than was served"));
        let want: i128 = run.iter().map(|s| s.ticks).sum();
        assert_eq!(sum, want, "{metric}: window {start}: sum of ticks");
        for s in run {
            assert!(
                s.at_ms >= start && s.at_ms < start + WIDTH + TIMEOUT_MS,
                "{metric}: a value served at {} stored in window {start}",
                s.at_ms
            );
        }
        next += n;
    }
    next
}

/// A real mosquitto and the collector's ingest into SQLite.
pub struct Collector {
    pub broker: Mosquitto,
    pub store: SqliteStore,
    stop: tokio::sync::watch::Sender<bool>,
    ingest: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Collector {
    pub fn start() -> Collector {
        let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let ingest = tokio::spawn(ingest::run(
            IngestConfig {
                port: broker.port(),
                client_id: "collector-modbus".into(),
                ..IngestConfig::default()
            },
            store.clone(),
            Arc::new(IngestCounters::default()),
            stop_rx,
        ));
        Collector {
            broker,
            store,
            stop,
            ingest,
            _dir: dir,
        }
    }

    /// The stored windows once every (metric, device) of `devices` ×
    /// [`POINTS`] holds at least `want` readings (or after `wait`).
    pub async fn wait_for(&self, devices: &[&str], want: u64, wait: std::time::Duration) -> Stored {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let got = stored(&self.store).await;
            let enough = devices.iter().all(|d| {
                POINTS.iter().all(|p| {
                    got.get(&(p.0.to_string(), d.to_string()))
                        .is_some_and(|w| w.iter().map(|x| x.1).sum::<u64>() >= want)
                })
            });
            if enough || std::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.ingest.await.unwrap();
    }
}

/// Judges every point of `device` against what `served` logged; at least
/// `want` values each.
pub fn judge_device(got: &Stored, device: &str, served: &[Served], want: u64) {
    for p in POINTS {
        let windows = got
            .get(&(p.0.to_string(), device.to_string()))
            .unwrap_or_else(|| panic!("no windows of {device}/{}", p.0));
        let checked = judge(p.0, windows, served);
        assert!(
            checked as u64 >= want,
            "{device}/{}: only {checked} values checked",
            p.0
        );
    }
}
