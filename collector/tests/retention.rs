//! Retention end to end (issue #16) on running collectors over real MQTT
//! (mosquitto) and HTTP:
//! - with agent windows kept 2 h, the retention task deletes the older
//!   minutes it finds, ingest refuses a late partial for an expired minute
//!   (counted as `expired`) and applies the rest of its batch, and a query
//!   for minutes past their retention is answered from the hour roll-ups
//!   and says so — values judged by plain integer sums of the raw readings;
//! - two instances sharing one database (one PostgreSQL database; one
//!   SQLite file) run retention one at a time: only the holder of the
//!   `retention` lease runs — the other skips its runs and its run counter
//!   stays 0 while the holder lives — the expired minutes are gone and
//!   every other row is as the test's readings make it; when the holder
//!   stops it gives the lease up, and the other takes over at once (well
//!   before the 2-minute lease could expire) and expires minutes that
//!   became expired after the hand-over;
//! - with runs further apart than the lease (every 11 s under a 10 s
//!   lease), the holder renews it between runs and keeps it across them
//!   while another instance asks for it every 100 ms and never runs; when
//!   the holder stops the other takes over (both backends);
//! - the task's loop when the store cannot answer for the lease, and when
//!   the lease passes to another holder mid-run, on both backends
//!   (`store_common::retention::check_lease_faults`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;
mod store_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tributary_collector::config::Config;
use tributary_collector::ingest::PartialRefused;
use tributary_collector::retention::LEASE;
use tributary_collector::service::{self, Running};
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::Lease;
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

use mqtt_common::harness::{get_json, metrics_text, now_ms, Agent};

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// How long the instances of the multi-instance tests keep agent windows.
const KEEP_MS: i64 = 2 * HOUR;

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
    let metrics = metrics_text(http).await;
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

/// Readings (integers, quantum 1) by minute start.
type Raw = BTreeMap<i64, Vec<i64>>;

/// The minutes of `raw` as one batch `seq` of agent `seed`.
fn batch(seq: u64, raw: &Raw) -> Batch {
    let partials = raw.iter().map(|(&s, v)| partial(s, v)).collect();
    Batch::new("seed", seq, now_ms(), partials)
}

/// (count, integer sum) per window start of `width`, from the readings.
fn sums(raw: &Raw, width: i64) -> BTreeMap<i64, (u64, i64)> {
    let mut out: BTreeMap<i64, (u64, i64)> = BTreeMap::new();
    for (start, values) in raw {
        let e = out.entry(start.div_euclid(width) * width).or_default();
        e.0 += values.len() as u64;
        e.1 += values.iter().sum::<i64>();
    }
    out
}

/// (count, integer sum) per stored window start of `width`.
async fn stored<S: Store>(store: &S, width: i64) -> BTreeMap<i64, (u64, i64)> {
    store
        .windows(&key(), Width::new(width).unwrap(), i64::MIN, i64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|w| {
            let sum = i64::try_from(w.summary.sum_ticks()).unwrap();
            (w.window.start(), (w.summary.count(), sum))
        })
        .collect()
}

/// A collector instance called `name`, retention every 100 ms keeping
/// minutes 2 h, roll-ups (1 h, 1 d) forever, the default 2-minute lease.
async fn instance<S: Store>(name: &str, broker: u16, store: &S) -> Running {
    paced(name, broker, store, 100, 120_000).await
}

/// [`instance`] with retention every `interval_ms` under a lease of
/// `lease_ms`.
async fn paced<S: Store>(
    name: &str,
    broker: u16,
    store: &S,
    interval_ms: u64,
    lease_ms: u64,
) -> Running {
    let cfg = Config::from_toml(&format!(
        "rollups_ms = [3600000, 86400000]\n\
         [mqtt]\nport = {broker}\nclient_id = \"{name}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [retention]\nwindows_ms = {KEEP_MS}\ninterval_ms = {interval_ms}\n\
         batch_rows = 2\nlease_ms = {lease_ms}\n"
    ))
    .unwrap();
    service::start(&cfg, store.clone()).await.unwrap()
}

/// The contract on two handles `a` and `b` of one empty database.
async fn one_instance_at_a_time<S: Store>(a: S, b: S) {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let now = now_ms();
    // Minutes 5 h old (past the 2 h kept and the task's 10-minute grace by
    // hours) and minutes of the last half hour (hours from expiring).
    let old_hour = now / HOUR * HOUR - 5 * HOUR;
    let old: Raw = (0..5)
        .map(|m| (old_hour + m * 7 * MIN, vec![10 + m, 20 * m, 3]))
        .collect();
    let recent_min = now / MIN * MIN - 30 * MIN;
    let recent: Raw = [(recent_min, vec![7, 8]), (recent_min + MIN, vec![9])].into();
    let mut all = old.clone();
    all.extend(recent.clone());
    a.apply(&[batch(1, &all)]).await.unwrap();
    assert_eq!(stored(&a, MIN).await, sums(&all, MIN));

    // Both start; one takes the lease and expires the old minutes, the
    // other skips its runs.
    let ra = instance("retention-a", broker.port(), &a).await;
    let rb = instance("retention-b", broker.port(), &b).await;
    let (ma, mb) = (ra.retention().clone(), rb.retention().clone());
    let minute = Width::new(MIN).unwrap();
    let old_n = old.len() as u64;
    until("the old minutes to expire under a leader", || async {
        ma.expired(minute) + mb.expired(minute) == old_n && (ma.leader() || mb.leader())
    })
    .await;
    let a_leads = ma.leader();
    let ((leader, ml), (standby, ms), standby_store) = if a_leads {
        ((ra, ma), (rb, mb), b.clone())
    } else {
        ((rb, mb), (ra, ma), a.clone())
    };
    // The standby ticks as often as the leader: three of its ticks have
    // passed once it skipped three runs (or, were it not standing by, ran
    // three).
    until("three ticks of the standby", || async {
        ms.skipped() + ms.runs() >= 3
    })
    .await;
    assert_eq!(ms.runs(), 0, "the standby ran retention");
    assert!(!ms.leader());
    assert_eq!(ms.expired(minute), 0);
    assert!(ml.leader() && ml.runs() >= 1);
    assert_eq!(ml.expired(minute), old_n);
    assert_eq!(ml.skipped(), 0);
    let text = metrics_text(leader.http_addr()).await;
    assert!(
        text.contains("tributary_collector_retention_leader 1"),
        "{text}"
    );
    let text = metrics_text(standby.http_addr()).await;
    assert!(
        text.contains("tributary_collector_retention_leader 0"),
        "{text}"
    );
    assert!(
        text.contains("tributary_collector_retention_runs_total 0"),
        "{text}"
    );

    // Minutes before the cut are gone, the recent ones and the roll-ups
    // (kept forever) are as the readings make them.
    assert_eq!(stored(&a, MIN).await, sums(&recent, MIN));
    assert_eq!(stored(&a, HOUR).await, sums(&all, HOUR));
    assert_eq!(stored(&a, DAY).await, sums(&all, DAY));

    // The leader stops and gives the lease up; the other takes over at
    // once and expires minutes written (late) after the hand-over.
    leader.stop().await.unwrap();
    assert!(!ml.leader());
    let runs = ml.runs();
    let later: Raw = (0..3)
        .map(|m| (old_hour + HOUR + m * 11 * MIN, vec![100 * m, 5]))
        .collect();
    standby_store.apply(&[batch(2, &later)]).await.unwrap();
    all.extend(later.clone());
    let later_n = later.len() as u64;
    until(
        "the other instance to take over and expire the later minutes",
        || async { ms.leader() && ms.expired(minute) == later_n },
    )
    .await;
    assert!(ms.runs() >= 1);
    assert_eq!(ml.runs(), runs, "the stopped instance ran on");
    assert_eq!(stored(&a, MIN).await, sums(&recent, MIN));
    assert_eq!(stored(&a, HOUR).await, sums(&all, HOUR));
    standby.stop().await.unwrap();
    assert!(!ms.leader());
    drop(broker);
}

/// The least lease the config allows (ms).
const LEASE_MS: u64 = 10_000;
/// The holder's pace in [`the_holder_keeps_the_lease_between_runs`]: longer
/// than the lease, so the lease would lapse between two of its runs were it
/// renewed only in runs.
const SLOW_MS: u64 = 11_000;

/// Who holds the `retention` lease in `store`, asked as a third instance
/// with a 1 ms lease (so if nobody held it, the probe's own lapses at once).
async fn holder<S: Store>(store: &S) -> Option<String> {
    match store
        .lease(LEASE, "probe", Duration::from_millis(1))
        .await
        .unwrap()
    {
        Lease::Theirs(h) => Some(h),
        Lease::Ours => None,
    }
}

/// The contract between runs on two handles `a` and `b` of one empty
/// database: instance `slow` runs retention every 11 s under the least
/// lease (10 s) — its runs further apart than the lease — and takes the
/// lease first; `quick` (same lease) asks for it every 100 ms, so it would
/// find it free within 100 ms of any lapse (instances with one pace and
/// ticks at other moments of the interval would find it only sometimes).
/// Across three of the holder's runs (two gaps each longer than the lease)
/// the holder's gauge stays 1 at every look, the lease in the database
/// names it, and the other's run counter stays 0 while it skips run after
/// run. Then the holder stops and the other takes over and expires minutes
/// written after the hand-over. Judged by the lease row, the counters and
/// the rows against the test's readings.
async fn the_holder_keeps_the_lease_between_runs<S: Store>(a: S, b: S) {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let now = now_ms();
    let old_hour = now / HOUR * HOUR - 5 * HOUR;
    let old: Raw = (0..4)
        .map(|m| (old_hour + m * 13 * MIN, vec![40 + m, -m]))
        .collect();
    let recent: Raw = [(now / MIN * MIN - 20 * MIN, vec![6, 1])].into();
    let mut all = old.clone();
    all.extend(recent.clone());
    a.apply(&[batch(1, &all)]).await.unwrap();
    let minute = Width::new(MIN).unwrap();

    let slow = paced("retention-slow", broker.port(), &a, SLOW_MS, LEASE_MS).await;
    let ms = slow.retention().clone();
    until(
        "the slow instance to lead and expire the old minutes",
        || async { ms.leader() && ms.runs() == 1 && ms.expired(minute) == old.len() as u64 },
    )
    .await;
    let quick = paced("retention-quick", broker.port(), &b, 100, LEASE_MS).await;
    let mq = quick.retention().clone();

    // Three runs of the holder, 11 s apart; the other asks all along: its
    // skipped runs, read as each of the holder's runs begins, grow in
    // every gap.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut asked = vec![mq.skipped()];
    loop {
        let runs = ms.runs();
        if runs as usize > asked.len() {
            asked.push(mq.skipped());
        }
        if runs >= 3 {
            break;
        }
        assert!(ms.leader(), "the holder lost the lease between runs");
        assert_eq!(mq.runs(), 0, "the other instance ran retention");
        assert!(!mq.leader());
        assert!(Instant::now() < deadline, "timed out waiting for 3 runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(asked.len(), 3);
    assert!(asked.windows(2).all(|w| w[0] < w[1]), "{asked:?}");
    assert_eq!(holder(&a).await.as_deref(), Some("retention-slow"));
    assert_eq!(mq.runs(), 0, "the other instance ran retention");
    assert_eq!(ms.skipped(), 0);
    let text = metrics_text(slow.http_addr()).await;
    assert!(
        text.contains("tributary_collector_retention_leader 1"),
        "{text}"
    );
    assert_eq!(stored(&a, MIN).await, sums(&recent, MIN));
    assert_eq!(stored(&a, HOUR).await, sums(&all, HOUR));

    // The holder stops and gives the lease up; the other takes over at its
    // next tick and expires minutes written after the hand-over.
    slow.stop().await.unwrap();
    let later: Raw = (0..2)
        .map(|m| (old_hour + HOUR + m * 17 * MIN, vec![3 * m, 2]))
        .collect();
    b.apply(&[batch(2, &later)]).await.unwrap();
    all.extend(later.clone());
    until(
        "the other instance to take over and expire the later minutes",
        || async { mq.leader() && mq.expired(minute) == later.len() as u64 },
    )
    .await;
    assert_eq!(holder(&b).await.as_deref(), Some("retention-quick"));
    assert_eq!(ms.runs(), 3, "the stopped instance ran on");
    assert_eq!(stored(&b, MIN).await, sums(&recent, MIN));
    assert_eq!(stored(&b, HOUR).await, sums(&all, HOUR));
    quick.stop().await.unwrap();
    drop(broker);
}

/// Two handles (two instances' pools) of the new database `name` of `pg`,
/// keeping roll-ups of 1 h and 1 d.
async fn two_postgres(
    pg: &tributary_testkit::Postgres,
    name: &str,
) -> (PostgresStore, PostgresStore) {
    let url = pg.create_database(name).unwrap();
    let open = || async {
        PostgresStore::open(&PostgresOptions::new(&url), &[HOUR, DAY])
            .await
            .unwrap()
    };
    (open().await, open().await)
}

/// A handle of the new database `name` of `pg`, keeping roll-ups of 1 h
/// and 1 d.
async fn one_postgres(pg: &tributary_testkit::Postgres, name: &str) -> PostgresStore {
    let url = pg.create_database(name).unwrap();
    PostgresStore::open(&PostgresOptions::new(&url), &[HOUR, DAY])
        .await
        .unwrap()
}

/// Two handles of one SQLite file in `dir`, keeping roll-ups of 1 h and 1 d.
fn two_sqlite(dir: &tempfile::TempDir) -> (SqliteStore, SqliteStore) {
    let path = dir.path().join("c.db");
    let open = || SqliteStore::open(&path, &[HOUR, DAY]).unwrap();
    (open(), open())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_runs_longer_apart_than_the_lease_the_postgresql_holder_keeps_it() {
    let pg = tributary_testkit::Postgres::start(Default::default()).unwrap();
    let (a, b) = two_postgres(&pg, "retention_between_runs").await;
    the_holder_keeps_the_lease_between_runs(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_runs_longer_apart_than_the_lease_the_sqlite_holder_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sqlite(&dir);
    the_holder_keeps_the_lease_between_runs(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_postgresql_database_run_retention_one_at_a_time() {
    let pg = tributary_testkit::Postgres::start(Default::default()).unwrap();
    let (a, b) = two_postgres(&pg, "retention_lease").await;
    one_instance_at_a_time(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_sqlite_file_run_retention_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_sqlite(&dir);
    one_instance_at_a_time(a, b).await;
}

/// The task's loop when the store cannot answer for the lease, and when the
/// lease passes to another holder mid-run (`store_common::retention`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_lease_failing_or_lost_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[HOUR, DAY]).unwrap();
    store_common::retention::check_lease_faults(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_lease_failing_or_lost_on_postgresql() {
    let pg = tributary_testkit::Postgres::start(Default::default()).unwrap();
    let store = one_postgres(&pg, "retention_lease_faults").await;
    store_common::retention::check_lease_faults(&store).await;
}

/// A renewal between runs that the store cannot answer is tried again
/// before the lease expires (`store_common::retention`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renewal_keeps_the_sqlite_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[HOUR, DAY]).unwrap();
    store_common::retention::check_renewal_retried(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renewal_keeps_the_postgresql_lease() {
    let pg = tributary_testkit::Postgres::start(Default::default()).unwrap();
    let store = one_postgres(&pg, "retention_renewal").await;
    store_common::retention::check_renewal_retried(&store).await;
}
