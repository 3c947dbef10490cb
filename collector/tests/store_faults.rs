//! Faults of the store under a running collector (issue #12), with the
//! real parts: a mosquitto, a third-party client (`rumqttc`) playing an
//! agent, the whole collector service over SQLite on a small tmpfs that the
//! test fills up — a real full disk.
//!
//! While the disk is full every commit fails: ingest retries with a backoff
//! (not a hot loop), acknowledges nothing, `/health/ready` says 503 naming
//! the store and the ingest lag while `/health/live` stays 200. Once space
//! is freed ingest resumes by itself: every batch — also those behind the
//! broker's in-flight window, which a dropped group used to hold for good —
//! is applied exactly once and confirmed.
//!
//! A fault of one batch rather than of the database — here the store's
//! code panics on it, as a bug would — does not stall ingest: the batch is
//! refused whole, recorded durably for its agent, counted and confirmed,
//! and every other batch applies exactly once; a redelivery of it is a
//! duplicate; with only a redelivery of a stored batch beside it (nothing
//! new can arrive) it is refused too. A fault that hits every batch
//! refuses nothing: ingest stalls visibly and resumes with nothing lost
//! once the fault is gone.
//!
//! Mounting a tmpfs needs root (as the CI and the tests' PostgreSQL setup
//! run); the test fails with a clear message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_common::harness::{get_json as get, metrics_text, now_ms, sample, subscribed, Agent};
use serde_json::Value;
use tokio::sync::watch;
use tributary_collector::config::Config;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters, Refused};
use tributary_collector::service;
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::{all_windows, Answer, Refusal, Refusals, Report};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

const MIN: i64 = 60_000;

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("the `mount` program");
        assert!(
            out.status.success(),
            "mounting a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a file of zeros; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 512] {
            let zeros = vec![0u8; chunk];
            while f.write_all(&zeros).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Checkpoints the WAL of the database at `db` into it and truncates it to
/// nothing, from a connection of the test's own.
fn truncate_wal(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the WAL stays busy");
        std::thread::sleep(Duration::from_millis(10));
    }
    let wal = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL is truncated");
}

/// Batch `seq` of agent `agent-f`: one reading `1000 + seq` in minute `w`.
fn batch(w: i64, seq: u64) -> Batch {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(w + seq as i64, 1000 + seq as i64).unwrap();
    let partial = Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::new(w, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    };
    Batch::new("agent-f", seq, w, vec![partial])
}

/// Waits until `cond` holds (up to `secs`), polling.
async fn wait_until(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stalls_ingest_visibly_and_it_resumes_with_nothing_lost_or_doubled() {
    const N: u64 = 60;
    let fs = Tmpfs::mount("16m");
    let store = SqliteStore::open(&fs.path().join("collector.db"), &[3_600_000]).unwrap();
    // mosquitto's default in-flight window (20): more than that many
    // batches wait behind the failing group.
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cfg = Config::from_toml(&format!(
        "[mqtt]\nport = {}\nclient_id = \"collector-faults\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nready_max_lag_ms = 1000\n",
        broker.port()
    ))
    .unwrap();
    let running = service::start(&cfg, store.clone()).await.unwrap();
    let http = running.http_addr();
    let counters = running.counters().clone();
    let agent = Agent::connect("agent-f", broker.port(), None);
    subscribed(&counters).await;
    wait_until(10, "ready", async || {
        get(http, "/health/ready").await.0 == 200
    })
    .await;

    let w = (now_ms() - 3_600_000) / MIN * MIN;
    agent.publish(batch(w, 0).encode(Encoding::Json));
    assert_eq!(agent.confirmed(1).await, [0]);

    // The disk fills up; the batches behind keep coming. (SQLite reuses
    // its WAL file after a checkpoint, so commits that fit in it would
    // still succeed on a full disk for a while: it is truncated first, so
    // the next commit needs new space at once.)
    truncate_wal(&fs.path().join("collector.db"));
    let filler = fs.fill();
    for seq in 1..=N {
        agent.publish(batch(w, seq).encode(Encoding::Binary));
    }
    wait_until(10, "a commit failed", async || {
        counters.store_errors.get() >= 1
    })
    .await;
    let first_failure = Instant::now();
    wait_until(20, "five commits failed", async || {
        counters.store_errors.get() >= 5
    })
    .await;
    // Backoff 0.1 + 0.2 + 0.4 + 0.8 s between the first five attempts: a
    // hot loop would have made them in milliseconds.
    let took = first_failure.elapsed();
    assert!(
        took >= Duration::from_millis(1200),
        "5 attempts in {took:?}"
    );
    assert_eq!(counters.store_writable.get(), 0);
    wait_until(10, "readiness reports the lag", async || {
        let (status, body) = get(http, "/health/ready").await;
        status == 503 && body["checks"]["ingest_lag"]["ok"] == false
    })
    .await;
    let (status, body) = get(http, "/health/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["store"]["ok"], false, "{body}");
    assert!(body["checks"]["store"]["error"].is_string(), "{body}");
    assert_eq!(body["checks"]["subscription"]["ok"], true, "{body}");
    let (status, body) = get(http, "/health/live").await;
    assert_eq!((status, &body["status"]), (200, &Value::from("ok")));
    let (status, _) = get(http, "/health").await;
    assert_eq!(status, 200, "/health answers as before");
    let metrics = metrics_text(http).await;
    assert!(
        metrics.contains("tributary_collector_store_writable 0"),
        "{metrics}"
    );
    assert_eq!(
        agent.confirmed(1).await.len(),
        1,
        "nothing confirmed while failing"
    );
    assert_eq!(counters.batches_new.get(), 1);

    // Space comes back: ingest resumes by itself.
    std::fs::remove_file(filler).unwrap();
    let seqs = agent.confirmed(N as usize + 1).await;
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..=N).collect(),
        "every batch confirmed\n{}",
        counters.render()
    );
    assert_eq!(seqs.len(), N as usize + 1, "each confirmed once");
    assert_eq!(counters.batches_new.get(), N + 1);
    assert_eq!(counters.batches_duplicate.get(), 0);
    // Every transaction is timed, the failed ones too; every batch is in
    // exactly one committed group.
    let metrics = metrics_text(http).await;
    let value = |name: &str| sample(&metrics, &format!("tributary_collector_store_{name}"));
    assert_eq!(value("group_batches_sum"), (N + 1) as f64, "{metrics}");
    assert_eq!(
        value("commit_seconds_count"),
        value("group_batches_count") + counters.store_errors.get() as f64,
        "{metrics}"
    );
    assert!(value("commit_seconds_sum") > 0.0, "{metrics}");
    // Nothing lost, nothing doubled: the stored minute (and its hour) is
    // exactly the summary of the N + 1 readings.
    let mut want = Summary::new(Quantum::new(-3).unwrap());
    for seq in 0..=N {
        want.insert(w + seq as i64, 1000 + seq as i64).unwrap();
    }
    let series = store.series().await.unwrap();
    for width in [MIN, 3_600_000] {
        let rows = store
            .windows_of(&series, Width::new(width).unwrap(), i64::MIN, i64::MAX)
            .await
            .unwrap();
        let got: Vec<&Summary> = rows.iter().flatten().map(|r| &r.summary).collect();
        assert_eq!(got, [&want], "width {width}");
    }
    wait_until(10, "ready again", async || {
        get(http, "/health/ready").await.0 == 200
    })
    .await;
    assert_eq!(counters.store_writable.get(), 1);
    running.stop().await.unwrap();
    let _ = agent.client.disconnect();
}

/// The SQLite store with a bug: its code panics on the batches of
/// `poison` (by sequence) or, while `everything` is set, on every batch.
#[derive(Clone)]
struct Buggy {
    store: SqliteStore,
    poison: Arc<BTreeSet<u64>>,
    everything: Arc<AtomicBool>,
}

impl Ingest for Buggy {
    fn apply_refused(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> impl Future<Output = Answer<Report>> + Send {
        let bug =
            self.everything.load(Relaxed) || batches.iter().any(|b| self.poison.contains(&b.seq));
        async move {
            if bug {
                panic!("a bug in the store, met on these batches");
            }
            self.store.apply_refused(batches, refused).await
        }
    }

    fn record_refused(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> impl Future<Output = Answer<Report>> + Send {
        self.store.record_refused(batches, refused)
    }

    fn probe(&self) -> impl Future<Output = Answer<()>> + Send {
        self.store.probe()
    }
}

/// The stored windows of the test series at `width`: (count, sum of the
/// readings in ticks).
async fn stored(store: &SqliteStore, width: i64) -> Vec<(u64, i128)> {
    all_windows(store, Width::new(width).unwrap())
        .await
        .unwrap()
        .values()
        .map(|r| (r.summary.count(), r.summary.sum_ticks()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_store_fails_on_alone_is_refused_durably_and_ingest_goes_on() {
    const N: u64 = 24;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let poison = BTreeSet::from([5, 12, 40]);
    let everything = Arc::new(AtomicBool::new(false));
    let buggy = Buggy {
        store: store.clone(),
        poison: Arc::new(poison.clone()),
        everything: everything.clone(),
    };
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop, stop_rx) = watch::channel(false);
    let cfg = IngestConfig {
        port: broker.port(),
        client_id: "collector-buggy".into(),
        ..IngestConfig::default()
    };
    let task = tokio::spawn(ingest::run(cfg, buggy, counters.clone(), stop_rx));
    let agent = Agent::connect("agent-f", broker.port(), None);
    subscribed(&counters).await;

    // The judge: the readings (`1000 + seq` ticks) of the batches that are
    // not poison, counted and summed as integers.
    let w = (now_ms() - 3_600_000) / MIN * MIN;
    let want = |seqs: &mut dyn Iterator<Item = u64>| {
        let kept: Vec<u64> = seqs.filter(|s| !poison.contains(s)).collect();
        let sum: i128 = kept.iter().map(|&s| i128::from(1000 + s)).sum();
        (kept.len() as u64, sum)
    };
    for seq in 0..N {
        agent.publish(batch(w, seq).encode(Encoding::Binary));
    }
    // Every batch is confirmed, the poison too: refused for good.
    let seqs = agent.confirmed(N as usize).await;
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..N).collect(),
        "{}",
        counters.render()
    );
    assert_eq!(seqs.len(), N as usize, "each confirmed once");
    assert_eq!(counters.refused(Refused::StoreFailed), 2);
    assert_eq!(counters.batches_new.get(), N - 2);
    let (count, sum) = want(&mut (0..N));
    for width in [MIN, 3_600_000] {
        assert_eq!(stored(&store, width).await, [(count, sum)], "width {width}");
    }
    // Durably, for its agent: both batches' partials and readings.
    let refused_of = async || {
        let agents = store.agents().await.unwrap();
        assert_eq!(agents.len(), 1);
        agents[0].refused.get("store_failed").copied()
    };
    let two = Refusal {
        partials: 2,
        readings: 2,
    };
    assert_eq!(refused_of().await, Some(two));

    // A redelivery of a refused batch is a duplicate: confirmed again,
    // counted nowhere twice. (This bug strikes before de-duplication, so
    // the redelivery fails alone too, and waits for the next batch to show
    // the store works.)
    agent.publish(batch(w, 5).encode(Encoding::Json));
    agent.publish(batch(w, N).encode(Encoding::Binary));
    assert_eq!(agent.confirmed(N as usize + 2).await.len(), N as usize + 2);
    assert_eq!(counters.batches_duplicate.get(), 1);
    assert_eq!(counters.batches_new.get(), N - 1);
    assert_eq!(counters.refused(Refused::StoreFailed), 2);
    assert_eq!(refused_of().await, Some(two));

    // A bad batch with nothing new behind it, only a redelivery of a
    // stored batch (as when the broker's in-flight window is all
    // redeliveries): the duplicate shows the store works, so the bad batch
    // is refused rather than held for good.
    agent.publish(batch(w, 40).encode(Encoding::Binary));
    agent.publish(batch(w, 3).encode(Encoding::Binary));
    assert_eq!(agent.confirmed(N as usize + 4).await.len(), N as usize + 4);
    assert_eq!(counters.refused(Refused::StoreFailed), 3);
    assert_eq!(counters.batches_duplicate.get(), 2);
    let three = Refusal {
        partials: 3,
        readings: 3,
    };
    assert_eq!(refused_of().await, Some(three));

    // A fault on every batch refuses none: ingest stalls, visibly, and
    // resumes once the fault is gone.
    everything.store(true, Relaxed);
    let errors = counters.store_errors.get();
    for seq in N + 1..N + 4 {
        agent.publish(batch(w, seq).encode(Encoding::Binary));
    }
    wait_until(20, "three failed attempts", async || {
        counters.store_errors.get() >= errors + 3
    })
    .await;
    assert_eq!(counters.store_writable.get(), 0);
    assert_eq!(
        agent.confirmed(0).await.len(),
        N as usize + 4,
        "nothing confirmed"
    );
    assert_eq!(counters.refused(Refused::StoreFailed), 3, "nothing refused");
    everything.store(false, Relaxed);
    let seqs = agent.confirmed(N as usize + 7).await;
    assert_eq!(seqs.len(), N as usize + 7, "{}", counters.render());
    assert_eq!(counters.batches_new.get(), N + 2);
    assert_eq!(refused_of().await, Some(three));
    let (count, sum) = want(&mut (0..N + 4));
    for width in [MIN, 3_600_000] {
        assert_eq!(stored(&store, width).await, [(count, sum)], "width {width}");
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("ingest stops promptly")
        .unwrap();
    let _ = agent.client.disconnect();
}
