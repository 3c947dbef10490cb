//! Sinks against a real HTTP server started by the test on 127.0.0.1 (a tiny
//! axum app recording what it accepted, able to answer 503 for a while,
//! refuse points with 400, or be absent at first), over a real SQLite store:
//! final windows arrive exactly once per revision with the stored values,
//! non-final windows wait, outages lose nothing, a refused point is skipped
//! and counted, a restart resumes from the durable cursor, the influx body
//! parses (with InfluxData's parser) to the expected fields, `/metrics`
//! shows the sink, and the same holds over a real PostgreSQL store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{json, Value};
use tokio::sync::watch;
use tributary_collector::config::Config;
use tributary_collector::finality::Finality;
use tributary_collector::sinks::{self, SinkConfig, SinkCounters, SinkKind, Sinks};
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::StoredWindow;
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_sim::judge::judge_readings;

const MIN: i64 = 60_000;
const T0: i64 = 1_700_000_000_000 / 3_600_000 * 3_600_000;

// ---------------------------------------------------------------- server

/// One request the server accepted.
#[derive(Debug, Clone)]
struct Received {
    uri: String,
    /// The `x-instance` header (which collector instance pushed).
    instance: Option<String>,
    auth: Option<String>,
    content_type: Option<String>,
    body: String,
}

#[derive(Debug, Default)]
struct Behaviour {
    accepted: Vec<Received>,
    /// Requests seen, answered or not.
    attempts: usize,
    /// Answer these statuses, in order, to the next requests.
    fail: Vec<u16>,
    /// Answer 400 to bodies containing this.
    refuse: Option<String>,
}

type Shared = Arc<Mutex<Behaviour>>;

async fn handle(
    State(st): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut b = st.lock().unwrap();
    b.attempts += 1;
    if !b.fail.is_empty() {
        let status = StatusCode::from_u16(b.fail.remove(0)).unwrap();
        return (status, [("retry-after", "0")], "not now").into_response();
    }
    if b.refuse.as_deref().is_some_and(|r| body.contains(r)) {
        return (StatusCode::BAD_REQUEST, "bad point").into_response();
    }
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_string());
    b.accepted.push(Received {
        uri: uri.to_string(),
        instance: h("x-instance"),
        auth: h("authorization"),
        content_type: h("content-type"),
        body,
    });
    StatusCode::NO_CONTENT.into_response()
}

/// Serves on `port` (0 = any) until dropped.
struct Server {
    port: u16,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(port: u16, state: Shared) -> Server {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Server {
            port,
            state,
            stop: Some(tx),
        }
    }

    fn accepted(&self) -> Vec<Received> {
        self.state.lock().unwrap().accepted.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------- data

fn key(device: &str) -> SeriesKey {
    let tags = BTreeMap::from([("site".to_string(), "north pole".to_string())]);
    SeriesKey::new("temperature", device, tags).unwrap()
}

/// The readings (time, ticks) `partial(_, minute, values)` sends.
fn readings(minute: i64, values: &[i64]) -> Vec<(i64, i64)> {
    let start = T0 + minute * MIN;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| (start + 100 * i as i64, v))
        .collect()
}

fn partial(device: &str, minute: i64, values: &[i64]) -> Partial {
    let start = T0 + minute * MIN;
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    for (t, v) in readings(minute, values) {
        s.insert(t, v).unwrap();
    }
    Partial {
        series: key(device),
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    }
}

/// Batch `seq` of agent `gw` with watermark at the end of minute `through`.
fn batch(seq: u64, through: i64, partials: Vec<Partial>) -> Batch {
    Batch::new("gw", seq, T0 + through * MIN, partials)
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap()
}

/// Lateness 0, no idle timeout: a window is final once the watermark
/// reaches its end.
const FINALITY: Finality = Finality {
    lateness_ms: 0,
    idle_timeout_ms: i64::MAX,
};

fn sink(kind: SinkKind, port: u16) -> SinkConfig {
    let mut s = SinkConfig::new("test", kind, format!("http://127.0.0.1:{port}/hook"));
    s.poll_ms = 20;
    s.backoff_min_ms = 10;
    s.backoff_max_ms = 100;
    s.timeout_ms = 2_000;
    if kind == SinkKind::Influx {
        s.url = format!("http://127.0.0.1:{port}");
        s.org = Some("org one".into());
        s.bucket = Some("b".into());
        s.token = Some("t0k".into());
    }
    s
}

struct Running {
    sinks: Sinks,
    stop: watch::Sender<bool>,
}

impl Running {
    fn start<S: Store>(cfg: &SinkConfig, store: &S) -> Running {
        Running::start_as("test-instance", cfg, store)
    }

    /// Runs `cfg` as the collector instance called `instance`.
    fn start_as<S: Store>(instance: &str, cfg: &SinkConfig, store: &S) -> Running {
        let (stop, rx) = watch::channel(false);
        let sinks = sinks::start(
            std::slice::from_ref(cfg),
            instance,
            store.clone(),
            FINALITY,
            rx,
        )
        .unwrap();
        Running { sinks, stop }
    }

    fn counters(&self) -> Arc<SinkCounters> {
        self.sinks.metrics().get("test").unwrap().clone()
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.sinks.join())
            .await
            .expect("sinks stop")
            .unwrap();
    }
}

/// Polls `cond` until true; panics after 10 s (a hang guard, not a timing
/// assertion).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stored<S: Store>(store: &S, device: &str, minute: i64) -> StoredWindow {
    let start = T0 + minute * MIN;
    let w = store
        .windows(&key(device), Width::new(MIN).unwrap(), start, start + 1)
        .await
        .unwrap();
    assert_eq!(w.len(), 1);
    w.into_iter().next().unwrap()
}

// ---------------------------------------------------------------- webhook

/// The webhook points received, keyed by (device, minute, revision); panics
/// on a duplicate.
fn points(server: &Server) -> BTreeMap<(String, i64, u64), Value> {
    let mut out = BTreeMap::new();
    for r in server.accepted() {
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert!(v["sink"].is_string());
        for p in v["points"].as_array().unwrap() {
            let device = p["series"]["device"].as_str().unwrap().to_string();
            let minute = (p["start"].as_i64().unwrap() - T0) / MIN;
            let revision = p["revision"].as_u64().unwrap();
            let k = (device, minute, revision);
            assert!(!out.contains_key(&k), "{k:?} pushed twice");
            out.insert(k, p.clone());
        }
    }
    out
}

/// Panics, naming the caller's line, unless the oracle finds the stored
/// window `w` to hold exactly `readings` (time, ticks of 10⁻³): the stored
/// window a pushed point is compared with ([`expected`]) is itself judged
/// from the raw readings, so a statistic the summary gets wrong fails here
/// instead of being repeated on both sides.
#[track_caller]
fn assert_holds(w: &StoredWindow, readings: &[(i64, i64)]) {
    let problems = judge_readings(&w.summary, -3, readings);
    assert!(problems.is_empty(), "{problems:?}");
}

/// The point a webhook must carry for a stored window, from the summary's
/// own accessors (the window judged by [`assert_holds`]).
fn expected(device: &str, w: &StoredWindow) -> Value {
    let s = &w.summary;
    let mut v = json!({
        "series": {"metric": "temperature", "device": device, "tags": {"site": "north pole"}},
        "start": w.window.start(), "width": MIN, "revision": w.revision, "final": true,
        "count": s.count(), "sum": s.sum(), "min": s.min(), "max": s.max(), "mean": s.mean(),
        "first": s.first().unwrap().1, "last": s.last().unwrap().1,
        "p50": s.quantile(0.5).unwrap().value, "p90": s.quantile(0.9).unwrap().value,
        "p99": s.quantile(0.99).unwrap().value,
    });
    if let Some(sd) = s.stddev() {
        v["stddev"] = json!(sd);
    }
    v
}

#[tokio::test]
async fn final_windows_arrive_once_per_revision_with_the_stored_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Minutes 0 and 1 are final (watermark at the end of minute 1), minute 2
    // is not.
    store
        .apply(&[batch(
            1,
            2,
            vec![
                partial("d1", 0, &[1000, 2500, 4000]),
                partial("d1", 1, &[7000]),
                partial("d2", 0, &[-1250, 3000]),
                partial("d2", 1, &[100, 200, 300, 400]),
            ],
        )])
        .await
        .unwrap();
    // Applied after them, so later in the change feed.
    store
        .apply(&[batch(2, 2, vec![partial("d1", 2, &[9000, 9500])])])
        .await
        .unwrap();
    let server = Server::start(0, Arc::default()).await;
    let mut cfg = sink(SinkKind::Webhook, server.port);
    cfg.token = Some("s3cret".into());
    cfg.headers.insert("X-Source".into(), "tributary".into());
    let run = Running::start(&cfg, &store);
    let c = run.counters();
    wait_until("4 final windows", || c.pushed.get() == 4).await;
    // The runner has looked at minute 2 and parked it.
    wait_until("minute 2 parked", || c.parked.get() == 1).await;
    wait_until("minute 2 waiting", || c.held.get() > 0.0).await;
    let got = points(&server);
    let keys: Vec<_> = got.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            ("d1".into(), 0, 0),
            ("d1".into(), 1, 0),
            ("d2".into(), 0, 0),
            ("d2".into(), 1, 0)
        ]
    );
    let sent = BTreeMap::from([
        (("d1", 0), readings(0, &[1000, 2500, 4000])),
        (("d1", 1), readings(1, &[7000])),
        (("d2", 0), readings(0, &[-1250, 3000])),
        (("d2", 1), readings(1, &[100, 200, 300, 400])),
    ]);
    for ((device, minute, _), p) in &got {
        let w = stored(&store, device, *minute).await;
        assert_holds(&w, &sent[&(device.as_str(), *minute)]);
        assert_eq!(p, &expected(device, &w));
    }
    let r = &server.accepted()[0];
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["sink"], "test");
    assert_eq!(r.auth.as_deref(), Some("Bearer s3cret"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.uri, "/hook");

    // Minute 2 becomes final and a late reading revises d1's minute 0.
    store
        .apply(&[batch(3, 3, vec![partial("d1", 0, &[3000])])])
        .await
        .unwrap();
    wait_until("minute 2 and the revision", || c.pushed.get() == 6).await;
    let got = points(&server);
    assert_eq!(got.len(), 6);
    let rev = &got[&("d1".to_string(), 0, 1)];
    let now = stored(&store, "d1", 0).await;
    assert_eq!(now.revision, 1);
    let mut revised = readings(0, &[1000, 2500, 4000]);
    revised.extend(readings(0, &[3000]));
    assert_holds(&now, &revised);
    assert_eq!(rev, &expected("d1", &now));
    let minute_2 = stored(&store, "d1", 2).await;
    assert_holds(&minute_2, &readings(2, &[9000, 9500]));
    assert_eq!(got[&("d1".to_string(), 2, 0)], expected("d1", &minute_2));
    assert_eq!(c.rejected.get(), 0);
    assert!(c.last_success.get() > 0.0);
    wait_until("nothing parked", || {
        c.held.get() == 0.0 && c.parked.get() == 0
    })
    .await;
    run.stop().await;
}

/// A window that is not final (its agent is behind) does not hold back the
/// windows after it: it is parked, durably across a restart, and pushed
/// once its agent catches up.
#[tokio::test]
async fn a_window_not_final_waits_alone_and_is_pushed_once_final() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let apply = |b: Batch| {
        let store = store.clone();
        async move { store.apply(&[b]).await.unwrap() }
    };
    apply(batch(1, 1, vec![partial("d1", 0, &[1000])])).await;
    // Agent "slow" sends d2's minute 0 with its watermark still at T0.
    apply(Batch::new("slow", 1, T0, vec![partial("d2", 0, &[2000])])).await;
    apply(batch(2, 2, vec![partial("d1", 1, &[3000])])).await;
    let server = Server::start(0, Arc::default()).await;
    let cfg = sink(SinkKind::Webhook, server.port);
    let run = Running::start(&cfg, &store);
    let c = run.counters();
    wait_until("d1's two minutes, past d2's", || c.pushed.get() == 2).await;
    wait_until("d2's minute parked", || c.parked.get() == 1).await;
    run.stop().await;

    // Parked durably: a new runner knows it, and d1 goes on meanwhile.
    let run = Running::start(&cfg, &store);
    let c = run.counters();
    wait_until("the parked window known again", || c.parked.get() == 1).await;
    apply(batch(3, 3, vec![partial("d1", 2, &[4000])])).await;
    wait_until("d1's minute 2", || c.pushed.get() == 1).await;
    assert_eq!(c.parked.get(), 1);
    // The slow agent catches up: d2's minute 0 is final, pushed, un-parked.
    apply(Batch::new("slow", 2, T0 + 2 * MIN, vec![])).await;
    wait_until("d2's minute 0", || c.pushed.get() == 2).await;
    wait_until("nothing parked", || c.parked.get() == 0).await;
    run.stop().await;

    let keys: Vec<_> = points(&server).into_keys().collect();
    assert_eq!(
        keys,
        [
            ("d1".into(), 0, 0),
            ("d1".into(), 1, 0),
            ("d1".into(), 2, 0),
            ("d2".into(), 0, 0)
        ]
    );
    let order: Vec<String> = server
        .accepted()
        .iter()
        .flat_map(|r| {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            v["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{}@{}",
                        p["series"]["device"].as_str().unwrap(),
                        (p["start"].as_i64().unwrap() - T0) / MIN
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(order, ["d1@0", "d1@1", "d1@2", "d2@0"]);
    let minute = Width::new(MIN).unwrap();
    let parked = store.parked("sink:test", minute, 0, 10).await.unwrap();
    assert!(parked.is_empty());
}

#[tokio::test]
async fn an_outage_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let parts: Vec<Partial> = (0..5)
        .flat_map(|m| (0..4).map(move |d| partial(&format!("d{d}"), m, &[m * 1000 + d])))
        .collect();
    store.apply(&[batch(1, 5, parts)]).await.unwrap();
    // Nobody listens yet.
    let port = tributary_testkit::free_port();
    let mut cfg = sink(SinkKind::Webhook, port);
    cfg.batch_size = 3;
    let run = Running::start(&cfg, &store);
    let c = run.counters();
    wait_until("connection failures retried", || c.retries.get() >= 3).await;
    assert_eq!(c.pushed.get(), 0);
    assert!(c.failing.get() >= 3);
    // The server appears; later it fails a while (overload, then a
    // misconfigured endpoint) while data grows.
    let state: Shared = Arc::default();
    let server = Server::start(port, state.clone()).await;
    wait_until("the first 20 windows", || c.pushed.get() == 20).await;
    assert_eq!(c.failing.get(), 0, "healthy again");
    let retries = c.retries.get();
    let failures = vec![503, 429, 500, 502, 504, 408, 401, 403, 404];
    state.lock().unwrap().fail.clone_from(&failures);
    let parts: Vec<Partial> = (5..8)
        .flat_map(|m| (0..4).map(move |d| partial(&format!("d{d}"), m, &[m * 1000 + d])))
        .collect();
    store.apply(&[batch(2, 8, parts)]).await.unwrap();
    wait_until("all 32 windows", || c.pushed.get() == 32).await;
    assert_eq!(
        c.retries.get(),
        retries + failures.len() as u64,
        "each failure retried"
    );
    assert_eq!(c.rejected.get(), 0, "none of them skips data");
    let got = points(&server); // panics on a duplicate
    assert_eq!(got.len(), 32);
    for m in 0..8 {
        for d in 0..4 {
            let p = &got[&(format!("d{d}"), m, 0)];
            assert_eq!(p["count"], 1);
            assert_eq!(p["sum"].as_f64(), Some((m * 1000 + d) as f64 / 1000.0));
        }
    }
    assert!(state.lock().unwrap().accepted.iter().all(|r| {
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["points"].as_array().unwrap().len() <= 3
    }));
    run.stop().await;
}

#[tokio::test]
async fn a_refused_point_is_skipped_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let parts: Vec<Partial> = ["a", "b", "bad", "c", "d", "e", "f"]
        .iter()
        .map(|d| partial(d, 0, &[1000]))
        .collect();
    store.apply(&[batch(1, 1, parts)]).await.unwrap();
    let state: Shared = Arc::default();
    state.lock().unwrap().refuse = Some("\"bad\"".into());
    let server = Server::start(0, state.clone()).await;
    let run = Running::start(&sink(SinkKind::Webhook, server.port), &store);
    let c = run.counters();
    wait_until("the refused point skipped", || c.rejected.get() == 1).await;
    wait_until("the rest delivered", || c.pushed.get() == 6).await;
    let got = points(&server);
    let devices: Vec<&str> = got.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(devices, ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(c.retries.get(), 0, "a 400 is not retried");
    // The sink is not wedged: later windows still arrive.
    store
        .apply(&[batch(2, 2, vec![partial("a", 1, &[2000])])])
        .await
        .unwrap();
    wait_until("a later window", || c.pushed.get() == 7).await;
    assert_eq!(c.rejected.get(), 1);
    run.stop().await;
}

#[tokio::test]
async fn a_sink_stopped_during_an_outage_stops_and_later_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let parts = vec![partial("d1", 0, &[1000]), partial("d2", 0, &[2000])];
    store.apply(&[batch(1, 1, parts)]).await.unwrap();
    let port = tributary_testkit::free_port();
    let mut cfg = sink(SinkKind::Webhook, port);
    // Long retry delays: stopping must not wait for them.
    cfg.backoff_min_ms = 60_000;
    cfg.backoff_max_ms = 60_000;
    let run = Running::start(&cfg, &store);
    let c = run.counters();
    wait_until("a failed attempt", || c.retries.get() >= 1).await;
    run.stop().await; // panics after 10 s
    assert_eq!(store.cursor("sink:test").await.unwrap(), 0);
    let server = Server::start(port, Arc::default()).await;
    let run = Running::start(&sink(SinkKind::Webhook, port), &store);
    let c = run.counters();
    wait_until("both windows", || c.pushed.get() == 2).await;
    assert_eq!(points(&server).len(), 2);
    run.stop().await;
}

/// The same over a PostgreSQL store (natively async).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_follows_a_postgresql_store_too() {
    let pg = tributary_testkit::Postgres::start(Default::default()).unwrap();
    let url = pg.create_database("sinks").unwrap();
    let store = PostgresStore::open(&PostgresOptions::new(&url), &[3_600_000])
        .await
        .unwrap();
    let apply = |store: &PostgresStore, b: Batch| {
        let store = store.clone();
        async move { store.apply(&[b]).await }
    };
    let parts = vec![partial("d1", 0, &[1000, 2000]), partial("d2", 0, &[3000])];
    apply(&store, batch(1, 1, parts)).await.unwrap();
    apply(&store, batch(2, 1, vec![partial("d1", 1, &[4000])]))
        .await
        .unwrap();
    let server = Server::start(0, Arc::default()).await;
    let run = Running::start(&sink(SinkKind::Webhook, server.port), &store);
    let c = run.counters();
    wait_until("the two final windows", || c.pushed.get() == 2).await;
    wait_until("minute 1 parked", || c.parked.get() == 1).await;
    // A revision and minute 1's finality in one batch.
    apply(&store, batch(3, 2, vec![partial("d2", 0, &[5000])]))
        .await
        .unwrap();
    wait_until("minute 1 and the revision", || c.pushed.get() == 4).await;
    run.stop().await;
    let got = points(&server);
    let sent = BTreeMap::from([
        (("d1", 0), readings(0, &[1000, 2000])),
        (("d1", 1), readings(1, &[4000])),
        (
            ("d2", 0),
            [readings(0, &[3000]), readings(0, &[5000])].concat(),
        ),
    ]);
    let mut want = (Vec::new(), store.cursor("sink:test").await.unwrap());
    for (d, m, _) in got.keys() {
        let w = stored(&store, d, *m).await;
        assert_holds(&w, &sent[&(d.as_str(), *m)]);
        want.0.push(expected(d, &w));
    }
    let keys: Vec<_> = got.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            ("d1".into(), 0, 0),
            ("d1".into(), 1, 0),
            ("d2".into(), 0, 0),
            ("d2".into(), 0, 1)
        ]
    );
    // The latest revision of each window equals what is stored now.
    for (i, ((d, m, rev), p)) in got.iter().enumerate() {
        if !(d == "d2" && *m == 0 && *rev == 0) {
            assert_eq!(p, &want.0[i], "{d} {m} {rev}");
        }
    }
    assert!(want.1 > 0, "the cursor is durable in PostgreSQL");
}

/// Two collector instances on one PostgreSQL database configure the same
/// sink: one pushes while the other stands by; an instance that loses the
/// lease stops pushing; when the pusher stops, the other takes over from the
/// shared cursor. Every point arrives once, and only from the lease holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_database_push_a_sink_from_one_at_a_time() {
    let pg = tributary_testkit::Postgres::start(Default::default()).unwrap();
    let url = pg.create_database("lease").unwrap();
    let open = |url: String| async move {
        PostgresStore::open(&PostgresOptions::new(&url), &[3_600_000])
            .await
            .unwrap()
    };
    let (a_store, b_store) = (open(url.clone()).await, open(url.clone()).await);
    let asks = LeaseAsks::install(&url).await;
    let apply = |b: Batch| {
        let store = a_store.clone();
        async move { store.apply(&[b]).await }
    };
    let server = Server::start(0, Arc::default()).await;
    let cfg = |instance: &str| {
        let mut s = sink(SinkKind::Webhook, server.port);
        s.headers.insert("x-instance".into(), instance.into());
        s.lease_ms = 4_000; // the least timeout_ms (2 s) allows
        s
    };
    apply(batch(
        1,
        1,
        vec![partial("d1", 0, &[1000]), partial("d2", 0, &[2000])],
    ))
    .await
    .unwrap();

    let a = Running::start_as("a", &cfg("a"), &a_store);
    let ca = a.counters();
    wait_until("a leads", || ca.leader.get() == 1).await;
    let b = Running::start_as("b", &cfg("b"), &b_store);
    let cb = b.counters();
    wait_until("a pushes minute 0", || ca.pushed.get() == 2).await;
    // b has asked for the lease, been refused and asked again since.
    asks.wait("b", asks.of("b").await + 2).await;
    assert_eq!(cb.leader.get(), 0, "b stands by");
    assert_eq!(cb.pushed.get(), 0);
    assert_eq!(asks.holder().await.as_deref(), Some("a"));

    // Another holder takes the lease (as if a's had expired): a notices at
    // its next renewal and pushes nothing more; nobody pushes meanwhile.
    pg.psql(
        "lease",
        "UPDATE leases SET holder = 'intruder', expires = clock_timestamp() + interval '1 hour'",
    )
    .unwrap();
    wait_until("a stands down", || ca.leader.get() == 0).await;
    apply(batch(2, 2, vec![partial("d1", 1, &[3000])]))
        .await
        .unwrap();
    // Both have checked the lease since minute 1 was stored (a whole
    // check: one ask answered, and the next), and neither pushed it.
    let (na, nb) = (asks.of("a").await, asks.of("b").await);
    asks.wait("a", na + 2).await;
    asks.wait("b", nb + 2).await;
    assert_eq!(ca.pushed.get() + cb.pushed.get(), 2);
    assert_eq!(asks.holder().await.as_deref(), Some("intruder"));
    // The intruder's lease ends; one of a and b takes over.
    pg.psql("lease", "DELETE FROM leases").unwrap();
    wait_until("minute 1 pushed", || ca.pushed.get() + cb.pushed.get() == 3).await;

    // The pusher stops and gives the lease up; the other takes over.
    let ((pusher, p), (standby, s), cs) = if ca.leader.get() == 1 {
        ((a, "a"), (b, "b"), cb.clone())
    } else {
        ((b, "b"), (a, "a"), ca.clone())
    };
    let before = cs.pushed.get();
    pusher.stop().await;
    apply(batch(
        3,
        3,
        vec![partial("d2", 2, &[4000]), partial("d1", 0, &[5000])],
    ))
    .await
    .unwrap();
    wait_until("the other instance takes over", || {
        cs.leader.get() == 1 && cs.pushed.get() == before + 2
    })
    .await;
    standby.stop().await;

    // Every point once (`points` panics on a duplicate), each request from
    // the instance that held the lease then.
    let keys: Vec<_> = points(&server).into_keys().collect();
    assert_eq!(
        keys,
        [
            ("d1".into(), 0, 0),
            ("d1".into(), 0, 1),
            ("d1".into(), 1, 0),
            ("d2".into(), 0, 0),
            ("d2".into(), 2, 0),
        ]
    );
    let who: Vec<String> = server
        .accepted()
        .into_iter()
        .map(|r| r.instance.unwrap())
        .collect();
    assert_eq!(who, ["a", p, s]);
    drop((a_store, b_store));
}

/// Every request for a lease in one PostgreSQL database, by holder: each
/// take or renewal is an `INSERT … ON CONFLICT` on `leases`, taken or
/// refused, and a trigger the test adds notes it. So the test waits until
/// an instance has checked the lease instead of sleeping.
struct LeaseAsks {
    client: tokio_postgres::Client,
}

impl LeaseAsks {
    async fn install(url: &str) -> LeaseAsks {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE lease_asks (holder TEXT NOT NULL);
                 CREATE FUNCTION note_lease_ask() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO lease_asks VALUES (NEW.holder); RETURN NEW; END $$;
                 CREATE TRIGGER note_lease_ask BEFORE INSERT ON leases
                 FOR EACH ROW EXECUTE FUNCTION note_lease_ask();",
            )
            .await
            .unwrap();
        LeaseAsks { client }
    }

    /// How often `holder` has asked for a lease.
    async fn of(&self, holder: &str) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM lease_asks WHERE holder = $1",
                &[&holder],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Waits (up to 10 s) until `holder` has asked `n` times.
    async fn wait(&self, holder: &str, n: i64) {
        let t = Instant::now();
        while self.of(holder).await < n {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "timed out waiting for {holder} to ask for the lease"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Who holds the (one) lease now.
    async fn holder(&self) -> Option<String> {
        self.client
            .query_opt("SELECT holder FROM leases", &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    }
}

#[tokio::test]
async fn a_restart_resumes_from_the_durable_cursor_without_repushing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(0, Arc::default()).await;
    let cfg = sink(SinkKind::Webhook, server.port);
    {
        let store = open(&dir);
        let parts = vec![partial("d1", 0, &[1000]), partial("d2", 0, &[2000])];
        store.apply(&[batch(1, 1, parts)]).await.unwrap();
        let run = Running::start(&cfg, &store);
        let c = run.counters();
        wait_until("the first two windows", || c.pushed.get() == 2).await;
        run.stop().await;
    }
    // A new store handle on the same file: only the cursor remembers.
    let store = open(&dir);
    assert!(store.cursor("sink:test").await.unwrap() > 0);
    store
        .apply(&[batch(2, 2, vec![partial("d1", 1, &[3000])])])
        .await
        .unwrap();
    let run = Running::start(&cfg, &store);
    let c = run.counters();
    wait_until("the new window", || c.pushed.get() == 1).await;
    let got = points(&server); // panics on a duplicate
    assert_eq!(got.len(), 3);
    assert!(got.contains_key(&("d1".to_string(), 1, 0)));
    run.stop().await;
}

// ---------------------------------------------------------------- influx

#[derive(Debug, PartialEq)]
enum Field {
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// (measurement, tags, fields, time) of a line, parsed by InfluxData's own
/// line-protocol parser.
type Line = (
    String,
    BTreeMap<String, String>,
    HashMap<String, Field>,
    i64,
);

fn parse_lines(body: &str) -> Vec<Line> {
    influxdb_line_protocol::parse_lines(body)
        .map(|l| {
            let l = l.unwrap_or_else(|e| panic!("not line protocol: {e}\n{body}"));
            let tags = l
                .series
                .tag_set
                .iter()
                .flatten()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let fields = l
                .field_set
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        influxdb_line_protocol::FieldValue::I64(n) => Field::Int(*n),
                        influxdb_line_protocol::FieldValue::F64(x) => Field::Float(*x),
                        influxdb_line_protocol::FieldValue::Boolean(b) => Field::Bool(*b),
                        other => panic!("unexpected field type {other:?}"),
                    };
                    (k.to_string(), v)
                })
                .collect();
            (
                l.series.measurement.to_string(),
                tags,
                fields,
                l.timestamp.expect("a timestamp"),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_influx_body_is_line_protocol_with_the_expected_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .apply(&[batch(
            1,
            1,
            vec![
                partial("d1", 0, &[1000, 2500, 4001]),
                partial("d2", 0, &[1500]),
            ],
        )])
        .await
        .unwrap();
    let server = Server::start(0, Arc::default()).await;
    let run = Running::start(&sink(SinkKind::Influx, server.port), &store);
    let c = run.counters();
    wait_until("two points", || c.pushed.get() == 2).await;
    let reqs = server.accepted();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].uri,
        "/api/v2/write?org=org+one&bucket=b&precision=ms"
    );
    assert_eq!(reqs[0].auth.as_deref(), Some("Token t0k"));
    assert_eq!(
        reqs[0].content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        reqs[0].body.contains("site=north\\ pole"),
        "{}",
        reqs[0].body
    );
    let mut lines = parse_lines(&reqs[0].body);
    lines.sort_by(|a, b| a.1["device"].cmp(&b.1["device"]));
    assert_eq!(lines.len(), 2);
    let sent = [readings(0, &[1000, 2500, 4001]), readings(0, &[1500])];
    for ((device, (m, tags, fields, t)), sent) in ["d1", "d2"].iter().zip(lines).zip(sent) {
        let w = stored(&store, device, 0).await;
        assert_holds(&w, &sent);
        let s = &w.summary;
        assert_eq!(m, "temperature");
        assert_eq!(
            tags,
            BTreeMap::from([
                ("device".to_string(), device.to_string()),
                ("site".to_string(), "north pole".to_string())
            ])
        );
        assert_eq!(t, T0);
        let mut want = HashMap::from([
            ("count".to_string(), Field::Int(s.count() as i64)),
            ("sum".to_string(), Field::Float(s.sum().unwrap())),
            ("min".to_string(), Field::Float(s.min().unwrap())),
            ("max".to_string(), Field::Float(s.max().unwrap())),
            ("mean".to_string(), Field::Float(s.mean().unwrap())),
            ("first".to_string(), Field::Float(s.first().unwrap().1)),
            ("last".to_string(), Field::Float(s.last().unwrap().1)),
            (
                "p50".to_string(),
                Field::Float(s.quantile(0.5).unwrap().value),
            ),
            (
                "p90".to_string(),
                Field::Float(s.quantile(0.9).unwrap().value),
            ),
            (
                "p99".to_string(),
                Field::Float(s.quantile(0.99).unwrap().value),
            ),
            ("revision".to_string(), Field::Int(0)),
            ("final".to_string(), Field::Bool(true)),
        ]);
        // One reading has no stddev: the field is absent, never NaN.
        if let Some(sd) = s.stddev() {
            want.insert("stddev".to_string(), Field::Float(sd));
        }
        assert_eq!(fields, want, "{device}");
    }
    run.stop().await;
}

// ---------------------------------------------------------------- config, service

#[test]
fn the_documented_sink_examples_parse() {
    let text = include_str!("../../config/collector.toml");
    let at = text.find("# [[sinks]]").expect("sink examples");
    // Uncomment the examples (lines "# key = …"; "# # …" stay comments).
    let examples: String = text[at..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    // The influx example reads its token from the environment.
    let with_examples = format!("{}{examples}", &text[..at]);
    std::env::remove_var("INFLUX_TOKEN");
    let e = Config::from_toml(&with_examples).unwrap_err().to_string();
    assert!(
        e.contains("sinks[0].token_env") && e.contains("INFLUX_TOKEN"),
        "{e}"
    );
    std::env::set_var("INFLUX_TOKEN", "t0k");
    let cfg = Config::from_toml(&with_examples).unwrap();
    assert_eq!(cfg.sinks.len(), 4);
    assert_eq!(
        cfg.sinks[0].resolved_token().unwrap().as_deref(),
        Some("t0k")
    );
    assert_eq!(cfg.sinks[0].kind, SinkKind::Influx);
    assert_eq!(cfg.sinks[1].width_ms, 3_600_000);
    assert_eq!(cfg.sinks[2].kind, SinkKind::Prometheus);
    assert_eq!(
        cfg.sinks[2].headers.len(),
        0,
        "the commented header stays a comment"
    );
    assert_eq!(cfg.sinks[3].kind, SinkKind::Otlp);
}

#[tokio::test]
async fn the_collector_runs_its_sinks_and_shows_them_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .apply(&[batch(1, 1, vec![partial("d1", 0, &[1000])])])
        .await
        .unwrap();
    let server = Server::start(0, Arc::default()).await;
    // No broker listens on the MQTT port: ingest keeps retrying meanwhile.
    let toml = format!(
        "[mqtt]\nport = {}\n[http]\nlisten = \"127.0.0.1:0\"\n[finality]\nlateness_ms = 0\n\
         [[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/\"\npoll_ms = 20\n",
        tributary_testkit::free_port(),
        server.port
    );
    let cfg = Config::from_toml(&toml).unwrap();
    let running = tributary_collector::service::start(&cfg, store)
        .await
        .unwrap();
    let c = running.sinks().get("hook").unwrap().clone();
    wait_until("the window pushed", || c.pushed.get() == 1).await;
    let url = format!("http://{}/metrics", running.http_addr());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for line in [
        "tributary_sink_pushed_points_total{sink=\"hook\"} 1",
        "tributary_sink_batches_total{sink=\"hook\"} 1",
        "tributary_sink_rejected_points_total{sink=\"hook\"} 0",
        "tributary_sink_lag_rows{sink=\"hook\"} 0",
        "tributary_sink_consecutive_failures{sink=\"hook\"} 0",
        "tributary_sink_held_seconds{sink=\"hook\"} 0.0",
        "# TYPE tributary_sink_last_success_timestamp_seconds gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("collector stops")
        .unwrap();
    assert_eq!(points(&server).len(), 1);
}
