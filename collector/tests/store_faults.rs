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
//! Whatever path applied a batch, its metrics count it once: when recording
//! a refusal fails once, and on PostgreSQL with lanes (a real server on
//! 127.0.0.1), where a batch that cannot merge fails its lane while the
//! other lanes commit and then come back as duplicates; and when the
//! connection to PostgreSQL is cut during `COMMIT` (a proxy on 127.0.0.1,
//! `commit_cut`) — after the server had it (it committed, the reply is
//! lost: the store asks the server and answers the group as applied) or
//! before (aborted: applied again), with and without lanes — or swallowed
//! with the server left waiting for it on a half-open connection (its
//! backend is ended: aborted, applied again).
//!
//! Mounting a tmpfs needs root (as the CI and the tests' PostgreSQL setup
//! run); the test fails with a clear message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod commit_cut;
mod mqtt_common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commit_cut::{CommitCut, Cut};
use mqtt_common::harness::{get_json as get, metrics_text, now_ms, sample, subscribed, Agent};
use serde_json::Value;
use tokio::sync::watch;
use tributary_collector::config::Config;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters, Refused};
use tributary_collector::service;
use tributary_collector::store::postgres::{
    CommitOutcome, IdleEnd, PostgresOptions, PostgresStore,
};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::{all_windows, Answer, Refusal, Refusals, Report, StoreError};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_sim::judge::judge_readings;
use tributary_testkit::{Mosquitto, MosquittoOptions, Postgres, PostgresOptions as Server};

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

/// Publishes batches 0..n of window `w` ([`batch`]) from `agent`, and waits
/// until each is confirmed; checks every sequence was, and answers the
/// confirmations in the order they came.
async fn publish_all_confirmed(
    agent: &Agent,
    counters: &IngestCounters,
    w: i64,
    n: u64,
) -> Vec<u64> {
    for seq in 0..n {
        agent.publish(batch(w, seq).encode(Encoding::Binary));
    }
    let seqs = agent.confirmed(n as usize).await;
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (0..n).collect(),
        "{}",
        counters.render()
    );
    seqs
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
    // exactly the summary of the N + 1 readings, as the oracle computes it
    // from them.
    let readings: Vec<(i64, i64)> = (0..=N)
        .map(|seq| (w + seq as i64, 1000 + seq as i64))
        .collect();
    let series = store.series().await.unwrap();
    for width in [MIN, 3_600_000] {
        let rows = store
            .windows_of(&series, Width::new(width).unwrap(), i64::MIN, i64::MAX)
            .await
            .unwrap();
        let got: Vec<&Summary> = rows.iter().flatten().map(|r| &r.summary).collect();
        assert_eq!(got.len(), 1, "width {width}: one window");
        let problems = judge_readings(got[0], -3, &readings);
        assert!(problems.is_empty(), "width {width}: {problems:?}");
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
/// `poison` (by sequence) or, while `everything` is set, on every batch;
/// and a database that fails the next `record_fails` records of refused
/// batches (before anything of them is written).
#[derive(Clone)]
struct Buggy {
    store: SqliteStore,
    poison: Arc<BTreeSet<u64>>,
    everything: Arc<AtomicBool>,
    record_fails: Arc<AtomicU64>,
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
        let fail = self
            .record_fails
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        async move {
            if fail {
                return Err(StoreError::Backend("the database failed (injected)".into()));
            }
            self.store.record_refused(batches, refused).await
        }
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
        record_fails: Arc::default(),
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
    // Every batch is confirmed, the poison too: refused for good.
    let seqs = publish_all_confirmed(&agent, &counters, w, N).await;
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

/// Ingest with groups of exactly `batches` batches (a group commits when
/// full; its wait is longer than any test) over `store`, as `client_id`.
fn one_group<S: Ingest + Clone + 'static>(
    broker: &Mosquitto,
    client_id: &str,
    batches: usize,
    store: S,
) -> (
    Arc<IngestCounters>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let counters = Arc::new(IngestCounters::default());
    let (stop, stop_rx) = watch::channel(false);
    let cfg = IngestConfig {
        port: broker.port(),
        client_id: client_id.into(),
        group_batches: batches,
        group_wait: Duration::from_secs(600),
        ..IngestConfig::default()
    };
    let task = tokio::spawn(ingest::run(cfg, store, counters.clone(), stop_rx));
    (counters, stop, task)
}

/// Stops ingest and waits for it (bounded).
async fn stop_ingest(stop: watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("ingest stops promptly")
        .unwrap();
}

/// Recording a refused batch fails once (a database error, nothing
/// written): the group is committed again, the refusal is counted once —
/// when its record commits — and the batches the failed round applied
/// alone are counted as new, once, although the round that commits finds
/// them applied. Judged from the batches sent: one reading each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refusal_record_is_retried_and_everything_counts_once() {
    const N: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let poison = BTreeSet::from([3]);
    let record_fails = Arc::new(AtomicU64::new(1));
    let buggy = Buggy {
        store: store.clone(),
        poison: Arc::new(poison.clone()),
        everything: Arc::default(),
        record_fails: record_fails.clone(),
    };
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    // One group of all N: the poison's round applies the others alone.
    let (counters, stop, task) = one_group(&broker, "collector-record", N as usize, buggy);
    let agent = Agent::connect("agent-f", broker.port(), None);
    subscribed(&counters).await;
    let w = (now_ms() - 3_600_000) / MIN * MIN;
    publish_all_confirmed(&agent, &counters, w, N).await;
    assert_eq!(record_fails.load(Relaxed), 0, "the record failed once");
    assert_eq!(counters.store_errors.get(), 1, "{}", counters.render());
    // Each batch holds one partial of one reading.
    let good = (0..N).filter(|s| !poison.contains(s)).count() as u64;
    assert_eq!(counters.batches_new.get(), good, "{}", counters.render());
    assert_eq!(counters.batches_duplicate.get(), 0);
    assert_eq!(counters.partials.get(), good);
    assert_eq!(counters.readings.get(), good);
    assert_eq!(counters.incarnations(false), 1);
    assert_eq!(counters.refused(Refused::StoreFailed), 1);
    let agents = store.agents().await.unwrap();
    assert_eq!(
        agents[0].refused.get("store_failed"),
        Some(&Refusal {
            partials: 1,
            readings: 1
        })
    );
    assert_eq!(agents[0].incarnations[0].batches, N, "the refused one too");
    stop_ingest(stop, task).await;
    let _ = agent.client.disconnect();
}

/// Batch `seq` of `agent`: `seq + i` readings (`100·seq + j` ticks, at
/// `w + j`) in each minute `w + i·MIN`, `i < minutes`, of its device's
/// series; it reports `seq` readings dropped.
fn agent_batch(agent: &str, w: i64, seq: u64, minutes: i64) -> Batch {
    let minute = Width::new(MIN).unwrap();
    let key = SeriesKey::new("temperature", format!("{agent}-dev"), Default::default()).unwrap();
    let partials = (0..minutes)
        .map(|i| {
            let start = w + i * MIN;
            let mut s = Summary::new(Quantum::new(-3).unwrap());
            for j in 0..seq as i64 + i {
                s.insert(start + j, 100 * seq as i64 + j).unwrap();
            }
            Partial {
                series: key.clone(),
                window: Window::new(start, minute).unwrap(),
                summary: s,
            }
        })
        .collect();
    let mut b = Batch::new(agent, seq, w, partials);
    b.dropped_readings = seq;
    b
}

/// What the batches a test sent add up to, from their readings (the
/// judge of what ingest counts and the store holds).
#[derive(Default)]
struct Sent {
    /// Per (device, minute start): the count and tick sum of the readings.
    windows: BTreeMap<(String, i64), (u64, i128)>,
    batches: u64,
    partials: u64,
    readings: u64,
    /// Readings each agent reported dropped.
    dropped: BTreeMap<String, u64>,
    agents: BTreeSet<String>,
}

impl Sent {
    /// Publishes [`agent_batch`]`(agent, w, seq, minutes)` from `client` and
    /// adds up its readings as that function makes them (not from the
    /// batch's summaries, which are code under test).
    fn publish(&mut self, client: &Agent, agent: &str, w: i64, seq: u64, minutes: i64) {
        client.publish(agent_batch(agent, w, seq, minutes).encode(Encoding::Binary));
        self.add(agent, w, seq, minutes);
    }

    /// Adds up the readings of [`agent_batch`]`(agent, w, seq, minutes)`
    /// as that function makes them.
    fn add(&mut self, agent: &str, w: i64, seq: u64, minutes: i64) {
        for i in 0..minutes {
            let n = seq as i64 + i;
            let e = self
                .windows
                .entry((format!("{agent}-dev"), w + i * MIN))
                .or_default();
            e.0 += n as u64;
            e.1 += (0..n)
                .map(|j| i128::from(100 * seq as i64 + j))
                .sum::<i128>();
            self.partials += 1;
            self.readings += n as u64;
        }
        self.batches += 1;
        *self.dropped.entry(agent.to_string()).or_default() += seq;
        self.agents.insert(agent.to_string());
    }

    /// Checks that ingest counted every batch sent once as new, with its
    /// partials, readings, dropped readings and its agent's (one)
    /// incarnation.
    fn counted_once(&self, counters: &IngestCounters) {
        assert_eq!(
            counters.batches_new.get(),
            self.batches,
            "{}",
            counters.render()
        );
        assert_eq!(counters.batches_duplicate.get(), 0);
        assert_eq!(counters.partials.get(), self.partials);
        assert_eq!(counters.readings.get(), self.readings);
        let agents = self.agents.len() as u64;
        assert_eq!(
            counters.incarnations(false),
            agents,
            "{}",
            counters.render()
        );
        for (agent, dropped) in &self.dropped {
            assert_eq!(counters.dropped_readings(agent), *dropped, "{agent}");
        }
    }
}

/// The stored one-minute windows of `store`, by (device, start): their
/// count and tick sum.
async fn minute_totals(store: &PostgresStore) -> BTreeMap<(String, i64), (u64, i128)> {
    all_windows(store, Width::new(MIN).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|((k, s), r)| {
            (
                (k.device().to_string(), s),
                (r.summary.count(), r.summary.sum_ticks()),
            )
        })
        .collect()
}

/// A batch fault on PostgreSQL with lanes: one agent's batch cannot merge
/// (another quantum than its stored window), so its lane fails while the
/// other agents' lanes commit, and the group is applied batch by batch,
/// where those come back as duplicates. Every batch that applied — in a
/// lane that committed, or alone — is counted once as new (its partials,
/// readings, dropped readings and the agent's new incarnation), the
/// unmergeable one is refused, and the store holds every good reading
/// once. Judged from the batches sent, as integers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fault_with_lanes_counts_each_applied_batch_once() {
    let pg = Postgres::start(Server::default()).unwrap();
    let url = pg.create_database("lanes_fault").unwrap();
    let options = PostgresOptions {
        pool_size: 4,
        ..PostgresOptions::new(&url)
    };
    let store = PostgresStore::open(&options, &[3_600_000])
        .await
        .unwrap()
        .with_lanes(4);
    let w = (now_ms() - 3_600_000) / 3_600_000 * 3_600_000;
    // The window the bad batch meets: stored at quantum 10^-3 before.
    let shared = SeriesKey::new("temperature", "shared-dev", Default::default()).unwrap();
    let partial_at = |q: i8| {
        let mut s = Summary::new(Quantum::new(q).unwrap());
        s.insert(w, 7).unwrap();
        Partial {
            series: shared.clone(),
            window: Window::new(w, Width::new(MIN).unwrap()).unwrap(),
            summary: s,
        }
    };
    store
        .apply(&[Batch::new("agent-seed", 1, w, vec![partial_at(-3)])])
        .await
        .unwrap();

    // Four agents, three batches each, in one group: agent-x's batch 2
    // holds the shared window at quantum 10^-2.
    let agents = ["agent-a", "agent-b", "agent-c", "agent-x"];
    let minutes = |agent: &str| if agent == "agent-b" { 3 } else { 2 };
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let (counters, stop, task) = one_group(&broker, "collector-lanes", 12, store.clone());
    let clients: Vec<Agent> = agents
        .iter()
        .map(|a| Agent::connect(a, broker.port(), None))
        .collect();
    subscribed(&counters).await;
    // The judge: what the good batches sent add up to.
    let mut sent = Sent::default();
    for (agent, client) in agents.iter().zip(&clients) {
        for seq in 1..=3u64 {
            if *agent == "agent-x" && seq == 2 {
                let bad = Batch::new(*agent, seq, w, vec![partial_at(-2)]);
                client.publish(bad.encode(Encoding::Binary));
                continue;
            }
            sent.publish(client, agent, w, seq, minutes(agent));
        }
    }
    for c in &clients {
        assert_eq!(c.confirmed(3).await.len(), 3, "{}", counters.render());
    }
    assert_eq!(counters.refused(Refused::Unmergeable), 1);
    sent.counted_once(&counters);
    assert_eq!(
        counters.store_errors.get(),
        0,
        "a batch fault, not a store error"
    );
    // The store holds every good reading once, and the shared window as
    // the seed stored it.
    let mut got = minute_totals(&store).await;
    assert_eq!(got.remove(&("shared-dev".to_string(), w)), Some((1, 7)));
    assert_eq!(got, sent.windows);
    stop_ingest(stop, task).await;
    for c in clients {
        let _ = c.client.disconnect();
    }
}

/// Ingest over a PostgreSQL store (with `lanes`) whose connections pass
/// through a [`CommitCut`] armed with `cut` before the one group of three
/// agents' batches commits (one `COMMIT` cut: the group's, or one lane's).
/// Every batch is counted once as new — its partials, readings, dropped
/// readings and its agent's new incarnation — the store holds every
/// reading once, and the lost reply's outcome is counted: committed after
/// [`Cut::AfterCommit`] (no store error), aborted after
/// [`Cut::BeforeCommit`] (one store error, then the retry) and after
/// [`Cut::SwallowCommit`] (the same, once the backend left waiting for the
/// `COMMIT` has been ended: within 10 s, not the 30 s of polling); unresolved
/// after [`Cut::AfterCommitThenDown`] (the database unreachable until
/// then: the retry finds the batches applied and they count as duplicates
/// — the known limit). Judged from the batches sent, as integers. Answers
/// the store.
async fn a_commit_cut(cut: Cut, lanes: usize) -> PostgresStore {
    let pg = Postgres::start(Server::default()).unwrap();
    pg.create_database("cut").unwrap();
    let proxy = CommitCut::start(pg.port()).await;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/cut",
        tributary_testkit::postgres::USER,
        proxy.port()
    );
    let options = PostgresOptions {
        pool_size: 4,
        ..PostgresOptions::new(&url)
    };
    let store = PostgresStore::open(&options, &[3_600_000])
        .await
        .unwrap()
        .with_lanes(lanes);
    let w = (now_ms() - 3_600_000) / 3_600_000 * 3_600_000;
    let agents = ["agent-a", "agent-b", "agent-c"];
    let minutes = |agent: &str| if agent == "agent-b" { 3 } else { 2 };
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let (counters, stop, task) = one_group(&broker, "collector-cut", 9, store.clone());
    let clients: Vec<Agent> = agents
        .iter()
        .map(|a| Agent::connect(a, broker.port(), None))
        .collect();
    subscribed(&counters).await;
    proxy.arm(cut);
    // The judge: what the batches sent add up to.
    let mut sent = Sent::default();
    for (agent, client) in agents.iter().zip(&clients) {
        for seq in 1..=3u64 {
            sent.publish(client, agent, w, seq, minutes(agent));
        }
    }
    if cut == Cut::SwallowCommit {
        // The server waits for the COMMIT on a connection it believes
        // open (and would until TCP keepalive or
        // idle_in_transaction_session_timeout): resolved by ending its
        // backend, well before the 30 s the store polls for.
        wait_until(
            10,
            "the swallowed COMMIT is resolved as aborted",
            async || store.commits_unknown(CommitOutcome::Aborted) == 1,
        )
        .await;
    }
    if cut == Cut::AfterCommitThenDown {
        wait_until(30, "the lost commit is left unresolved", async || {
            store.commits_unknown(CommitOutcome::Unresolved) == 1
        })
        .await;
        proxy.restore();
    }
    for c in &clients {
        assert_eq!(c.confirmed(3).await.len(), 3, "{}", counters.render());
    }
    assert_eq!(proxy.cuts(), 1, "one COMMIT cut");
    assert_eq!(
        minute_totals(&store).await,
        sent.windows,
        "every reading stored once"
    );
    let outcome = match cut {
        Cut::AfterCommit => CommitOutcome::Committed,
        Cut::BeforeCommit | Cut::SwallowCommit => CommitOutcome::Aborted,
        Cut::AfterCommitThenDown => CommitOutcome::Unresolved,
        Cut::Freeze => unreachable!("not a cut this test makes"),
    };
    match outcome {
        CommitOutcome::Committed => {
            sent.counted_once(&counters);
            assert_eq!(counters.store_errors.get(), 0, "{}", counters.render());
        }
        CommitOutcome::Aborted => {
            sent.counted_once(&counters);
            assert_eq!(counters.store_errors.get(), 1, "{}", counters.render());
        }
        CommitOutcome::Unresolved => {
            // As before the resolution: the retry finds the group applied.
            assert_eq!(counters.batches_new.get(), 0, "{}", counters.render());
            assert_eq!(counters.batches_duplicate.get(), sent.batches);
            assert!(counters.store_errors.get() >= 1, "{}", counters.render());
        }
    }
    for o in [
        CommitOutcome::Committed,
        CommitOutcome::Aborted,
        CommitOutcome::Unresolved,
    ] {
        let want = u64::from(o == outcome);
        assert_eq!(store.commits_unknown(o), want, "{}", o.name());
    }
    // A backend is ended only where it waited for the swallowed COMMIT
    // (elsewhere the server had ended the transaction before the client
    // saw the connection fail); the server then closed the connection the
    // proxy held.
    let swallowed = u64::from(cut == Cut::SwallowCommit);
    for e in [IdleEnd::Terminated, IdleEnd::Refused, IdleEnd::TimedOut] {
        let want = if e == IdleEnd::Terminated {
            swallowed
        } else {
            0
        };
        assert_eq!(store.commits_idle(e), want, "{}", e.name());
    }
    assert_eq!(proxy.held_closed_by_server() as u64, swallowed);
    stop_ingest(stop, task).await;
    for c in clients {
        let _ = c.client.disconnect();
    }
    store
}

/// The line of `series` (a metric's name and labels) in the store's
/// metrics as `/metrics` renders them.
fn store_metric(store: &PostgresStore, series: &str) -> String {
    let mut r = tributary_runtime::metrics::prometheus_client::registry::Registry::default();
    store.register_metrics(&mut r);
    let text = tributary_runtime::metrics::render(&r);
    let prefix = format!("{series} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .to_string()
}

/// The reply to the group's `COMMIT` is lost, the server committed: the
/// store learns it and answers the group as applied — no store error, no
/// retry that would find the batches applied and count them as
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_that_committed_counts_the_group_once() {
    let store = a_commit_cut(Cut::AfterCommit, 1).await;
    let series = "tributary_collector_store_commit_unknown_total{outcome=\"committed\"}";
    assert_eq!(store_metric(&store, series), format!("{series} 1"));
}

/// The connection is cut before the server has the `COMMIT`: it aborted,
/// the store says so (an error), and the retry applies the group, counted
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_before_the_server_had_it_is_applied_again_once() {
    a_commit_cut(Cut::BeforeCommit, 1).await;
}

/// The reply to the group's `COMMIT` is lost and the database is then
/// unreachable: the outcome cannot be learnt, is counted as unresolved,
/// and the group is retried once the database is back (its batches then
/// answer as duplicates; the stored windows stay exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_with_the_database_unreachable_is_counted_unresolved() {
    a_commit_cut(Cut::AfterCommitThenDown, 1).await;
}

/// With lanes, one lane's `COMMIT` reply is lost and it committed: the
/// group is a whole success, every lane's batches counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_commit_reply_is_lost_but_committed_counts_once() {
    a_commit_cut(Cut::AfterCommit, 3).await;
}

/// With lanes, one lane's `COMMIT` is cut before the server had it: the
/// other lanes committed ([`StoreError::Partly`]), the retry applies the
/// aborted lane's batches and finds the others applied — each counted
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_cut_before_its_commit_is_applied_again_once() {
    a_commit_cut(Cut::BeforeCommit, 3).await;
}

/// The group's `COMMIT` never reaches the server, and the connection dies
/// without the server noticing (half-open): its transaction waits for the
/// `COMMIT`, holding the group's sender rows. The store finds the backend
/// idle in that transaction, ends it, learns the transaction aborted —
/// within 10 s — and the retry applies the group (not waiting on its
/// locks), counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_reached_the_server_is_ended_and_applied_again_once() {
    let store = a_commit_cut(Cut::SwallowCommit, 1).await;
    let series = "tributary_collector_store_commit_idle_total{result=\"terminated\"}";
    assert_eq!(store_metric(&store, series), format!("{series} 1"));
}

/// With lanes, one lane's `COMMIT` never reaches the server (half-open):
/// its backend is ended, the other lanes committed, and the retry applies
/// the ended lane's batches and finds the others applied — each counted
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_commit_never_reached_the_server_is_ended_and_applied_again_once() {
    a_commit_cut(Cut::SwallowCommit, 3).await;
}

/// An instance whose host vanishes in the middle of applying a batch
/// (its `COMMIT` frozen on the way, [`Cut::Freeze`]: no FIN, no RST, the
/// server waiting for it, the instance for the reply, until the test
/// abandons the apply) leaves a transaction holding the agent's sender
/// row. Another instance's apply of the agent's next batch waits on that
/// lock only until the server ends the orphaned session by the store's
/// `idle_in_transaction_session_timeout` (twice a 3 s keepalive: 6 s;
/// the server's TCP keepalive would take over 2 hours, and a test guard
/// of 30 s fails first). The abandoned batch never committed: sent again
/// to the other instance it is new, and the stored windows hold both
/// batches' readings once. Judged from how the batches make their readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_by_a_vanished_instance_is_ended_by_the_server() {
    let pg = Postgres::start(Server::default()).unwrap();
    pg.create_database("vanish").unwrap();
    let proxy = CommitCut::start(pg.port()).await;
    let url = |port: u16| {
        format!(
            "postgres://{}@127.0.0.1:{port}/vanish",
            tributary_testkit::postgres::USER
        )
    };
    let options = |port: u16| PostgresOptions {
        keepalive: Some(Duration::from_secs(3)),
        ..PostgresOptions::new(url(port))
    };
    let gone = PostgresStore::open(&options(proxy.port()), &[3_600_000])
        .await
        .unwrap();
    let other = PostgresStore::open(&options(pg.port()), &[3_600_000])
        .await
        .unwrap();
    let w = (now_ms() - 3_600_000) / 3_600_000 * 3_600_000;
    let first = agent_batch("agent-a", w, 1, 2);
    let next = agent_batch("agent-a", w, 2, 3);

    proxy.arm(Cut::Freeze);
    let applying = tokio::spawn({
        let (gone, first) = (gone.clone(), first.clone());
        async move { gone.apply(&[first]).await }
    });
    wait_until(10, "the first batch's COMMIT frozen", async || {
        proxy.cuts() == 1
    })
    .await;
    // Its host is gone: nothing on it will ever answer or resolve.
    applying.abort();
    assert!(applying.await.unwrap_err().is_cancelled());

    let report = tokio::time::timeout(Duration::from_secs(30), other.apply(&[next]))
        .await
        .expect("the other instance waited on the orphan's locks beyond the server's timeout")
        .unwrap();
    assert_eq!(report, vec![tributary_collector::store::Applied::New]);
    wait_until(
        10,
        "the server to close the orphan's connection",
        async || proxy.held_closed_by_server() == 1,
    )
    .await;
    // The abandoned batch is sent again (its agent was never confirmed).
    assert_eq!(
        other.apply(&[first]).await.unwrap(),
        vec![tributary_collector::store::Applied::New]
    );
    let mut sent = Sent::default();
    sent.add("agent-a", w, 1, 2);
    sent.add("agent-a", w, 2, 3);
    assert_eq!(minute_totals(&other).await, sent.windows);
    assert_eq!(other.commits_unknown(CommitOutcome::Aborted), 0);
    drop(gone);
}
