//! The store contract against a real PostgreSQL (started by the test on
//! 127.0.0.1): the same guarantees the SQLite store's tests prove — exactly
//! once, order independence, exact windows and roll-ups, revisions,
//! progress, the change feed, cursors, refusing a newer schema — plus
//! results identical to SQLite's, and two instances racing on the same
//! windows without losing an update or a change-feed entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod store_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use store_common::*;
use store_common::{identity, refused};
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::{Applied, StoreError};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, Summary, Width, Window};
use tributary_testkit::{Postgres, PostgresOptions as ServerOptions};

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(&PostgresOptions::new(url), &[HOUR, DAY])
        .await
        .unwrap()
}

/// A fresh database on `pg` and a store on it.
async fn fresh(pg: &Postgres, name: &str) -> (String, PostgresStore) {
    let url = pg.create_database(name).unwrap();
    let store = open(&url).await;
    (url, store)
}

fn sqlite(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(&dir.path().join(name), &[HOUR, DAY]).unwrap()
}

fn workload_small(agents: u64, batches: u64) -> (Vec<Batch>, Truth) {
    workload(12345, agents, batches, 4, 3, 90)
}

#[tokio::test]
async fn the_store_contract_holds_on_postgresql() {
    let pg = Postgres::start(ServerOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Each window and roll-up agrees with the oracle on its readings, and
    // every stored window (revision included) equals SQLite's for the same
    // groups.
    {
        let (_, store) = fresh(&pg, "exact").await;
        let lite = sqlite(&dir, "exact.db");
        let (batches, truth) = workload_small(3, 20);
        for chunk in batches.chunks(9) {
            let a = store.apply(chunk).await.unwrap();
            assert!(a.iter().all(|a| *a == Applied::New));
            lite.apply(chunk).await.unwrap();
        }
        check_windows_of(&store).await;
        for width in [MIN, HOUR, DAY] {
            assert_judged(&store, &truth, width).await;
            assert_eq!(
                all_stored(&store, width).await,
                all_stored(&lite, width).await,
                "width {width}"
            );
        }
        assert_eq!(store.series().await.unwrap(), lite.series().await.unwrap());
        assert_eq!(
            store.watermarks().await.unwrap(),
            lite.watermarks().await.unwrap()
        );
    }

    // Redelivered batches change nothing, also within one group and after
    // a reopen (a second instance on the same database).
    {
        let (url, store) = fresh(&pg, "dedupe").await;
        let (batches, _) = workload_small(2, 10);
        store.apply(&batches[..12]).await.unwrap();
        let again = store
            .apply(&[batches[12].clone(), batches[12].clone()])
            .await
            .unwrap();
        assert_eq!(again, vec![Applied::New, Applied::Duplicate]);
        let before = all_stored(&store, MIN).await;
        drop(store);
        let store = open(&url).await;
        let replay = store.apply(&batches[..13]).await.unwrap();
        assert!(replay.iter().all(|a| *a == Applied::Duplicate));
        assert_eq!(all_stored(&store, MIN).await, before);
    }

    // Results do not depend on order or grouping; roll-ups are the merge of
    // their windows.
    {
        let (_, one) = fresh(&pg, "order_a").await;
        let (_, other) = fresh(&pg, "order_b").await;
        let (batches, truth) = workload_small(3, 15);
        one.apply(&batches).await.unwrap();
        let mut reversed = batches.clone();
        reversed.reverse();
        for chunk in reversed.chunks(7) {
            other.apply(chunk).await.unwrap();
        }
        for width in [MIN, HOUR, DAY] {
            assert_eq!(
                all_windows(&one, width).await,
                all_windows(&other, width).await,
                "width {width}"
            );
            assert_judged(&one, &truth, width).await;
        }
        assert_eq!(
            one.watermarks().await.unwrap(),
            other.watermarks().await.unwrap()
        );
        assert_eq!(
            one.watermarks().await.unwrap()[0],
            ("agent-0".to_string(), T0 + 14 * MIN)
        );
        let minutes = all_windows(&one, MIN).await;
        for width in [HOUR, DAY] {
            let mut expected: BTreeMap<(String, i64), Summary> = BTreeMap::new();
            for ((series, start), s) in &minutes {
                let coarse = Window::containing(*start, Width::new(width).unwrap()).start();
                expected
                    .entry((series.clone(), coarse))
                    .or_insert_with(|| Summary::new(s.quantum()))
                    .merge(s)
                    .unwrap();
            }
            assert_eq!(all_windows(&one, width).await, expected, "width {width}");
        }
    }

    // Later merges bump the revision; duplicates do not.
    {
        let (_, store) = fresh(&pg, "revision").await;
        // One window's readings of the workload, sent as one partial.
        let (_, truth) = workload_small(1, 1);
        let (window, readings) = truth.into_iter().next().unwrap();
        let p = &Partial {
            series: key(&window.0),
            window: Window::new(window.1, Width::new(MIN).unwrap()).unwrap(),
            summary: summary_of(&readings),
        };
        let mk = |seq| Batch::new("agent-x", seq, T0, vec![p.clone()]);
        store.apply(&[mk(1)]).await.unwrap();
        store.apply(&[mk(2)]).await.unwrap();
        store.apply(&[mk(2)]).await.unwrap();
        let w = store
            .windows(
                &p.series,
                p.window.width(),
                p.window.start(),
                p.window.end(),
            )
            .await
            .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].revision, 1);
        // The window holds its readings twice, by the oracle.
        let twice = Truth::from([(window, [readings.clone(), readings].concat())]);
        assert_judged(&store, &twice, MIN).await;
    }

    // A quantum mismatch fails the whole group and applies nothing.
    {
        let (_, store) = fresh(&pg, "mismatch").await;
        let (batches, _) = workload_small(1, 2);
        let mut bad = batches[1].clone();
        let mut other = Summary::new(Quantum::new(-1).unwrap());
        other.insert(bad.partials[0].window.start(), 5).unwrap();
        bad.partials.push(Partial {
            summary: other,
            ..bad.partials[0].clone()
        });
        let err = store.apply(&[batches[0].clone(), bad]).await.unwrap_err();
        assert!(matches!(err, StoreError::Merge { .. }), "{err}");
        assert!(store.series().await.unwrap().is_empty());
        assert_eq!(
            store.apply(&[batches[0].clone()]).await.unwrap(),
            vec![Applied::New]
        );
    }

    // Batch identity: a re-provisioned agent's new incarnation applies; a
    // long run keeps the de-duplication memory bounded (rows of `applied`,
    // counted in SQL) while every replay is recognised.
    {
        let (_, store) = fresh(&pg, "incarnation").await;
        identity::check_new_incarnation(&store).await;
        let (url, store) = fresh(&pg, "bounded").await;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let client = &client;
        let rows = || async move {
            let n: i64 = client
                .query_one("SELECT count(*) FROM applied", &[])
                .await
                .unwrap()
                .get(0);
            n as u64
        };
        let started = std::time::Instant::now();
        identity::check_bounded_dedupe(&store, rows, 600).await;
        println!("600 rounds in {:?}", started.elapsed());
    }

    // Partials refused inside applied batches are counted exactly, once,
    // per incarnation and reason, and survive a reopen.
    {
        let (url, store) = fresh(&pg, "refused").await;
        let mut w = refused::workload();
        refused::apply_with_redelivery(&store, &w).await;
        refused::record_whole(&store, &mut w).await;
        drop(store);
        refused::check_stored(&open(&url).await, &w).await;
    }

    // Progress lists the agents of each series.
    {
        let (_, mut store) = fresh(&pg, "progress").await;
        let (batches, _) = workload_small(1, 1);
        check_progress(&mut store, &batches[0]).await;
    }

    // The change feed returns each row at its latest write, in order.
    {
        let (_, mut store) = fresh(&pg, "feed").await;
        let (batches, _) = workload_small(2, 10);
        check_change_feed(&mut store, &batches).await;
    }

    // Expiry deletes in bounded batches; a feed reader crosses it.
    {
        let (_, store) = fresh(&pg, "retention").await;
        let (batches, truth) = workload_small(3, 20);
        retention::check_retention(&store, &batches, &truth).await;
    }

    // A retention step failing for one width stops no other.
    {
        let (_, store) = fresh(&pg, "failing").await;
        retention::check_one_failing_width(&store).await;
    }

    // `oldest` (one statement) is the least start written: minutes over
    // several partitions and the default, negative starts, a width only in
    // the default, a width with none.
    {
        let (_, store) = fresh(&pg, "oldest").await;
        check_oldest_partitions(&pg, "oldest", &store).await;
    }

    // `prepare` summarises the BRIN ranges of ended partitions only.
    {
        let (_, store) = fresh(&pg, "summaries").await;
        check_summaries(&pg, "summaries", &store).await;
    }

    // Expiry drops whole partitions of a width and deletes the rest.
    {
        let (_, store) = fresh(&pg, "partitions").await;
        check_partitions(&pg, "partitions", &store).await;
    }

    // Version 6 carries the rows of an unpartitioned `results` over.
    {
        let (url, store) = fresh(&pg, "carry").await;
        let (batches, truth) = workload_small(2, 10);
        store.apply(&batches).await.unwrap();
        let before = all_stored(&store, MIN).await;
        let hours = all_stored(&store, HOUR).await;
        assert_eq!(before.len(), truth.len());
        drop(store);
        pg.psql(
            "carry",
            "CREATE TABLE r AS SELECT * FROM results; DROP TABLE results; ALTER TABLE r RENAME TO results;
             ALTER TABLE results ADD PRIMARY KEY (series, width, start);
             CREATE INDEX results_changed ON results (width, changed);
             DELETE FROM schema_version WHERE version >= 6;",
        )
        .unwrap();
        log_index_builds(&pg, "carry");
        assert_eq!(
            pg.psql(
                "carry",
                "SELECT relkind FROM pg_class WHERE relname = 'results'"
            )
            .unwrap(),
            "r"
        );
        let store = open(&url).await;
        assert_eq!(
            pg.psql(
                "carry",
                "SELECT relkind FROM pg_class WHERE relname = 'results'"
            )
            .unwrap(),
            "p"
        );
        assert_eq!(all_stored(&store, MIN).await, before);
        assert_eq!(all_stored(&store, HOUR).await, hours);
        // Version 6 builds the BRIN index and version 8 leaves it be.
        assert_eq!(expiry_index(&pg, "carry"), ("brin".into(), 1));

        // A database whose version 6 made `results_expiry` a B-tree (an
        // earlier text of that step) has it rebuilt as BRIN by version 8,
        // its rows kept.
        drop(store);
        pg.psql(
            "carry",
            "DROP INDEX results_expiry; CREATE INDEX results_expiry ON results (width, start);
             DELETE FROM schema_version WHERE version >= 8; DELETE FROM index_builds;",
        )
        .unwrap();
        assert_eq!(expiry_index(&pg, "carry"), ("btree".into(), 0));
        let store = open(&url).await;
        assert_eq!(expiry_index(&pg, "carry"), ("brin".into(), 1));
        assert_eq!(all_stored(&store, MIN).await, before);
        assert_eq!(all_stored(&store, HOUR).await, hours);
    }

    // Parked rows come back as stored until unparked.
    {
        let (_, mut store) = fresh(&pg, "parking").await;
        let (batches, _) = workload_small(2, 10);
        check_parking(&mut store, &batches).await;
    }

    // Cursors survive a reopen; leases have one holder at a time, also
    // across two stores (instances) on one database.
    {
        let (url, mut store) = fresh(&pg, "cursors").await;
        check_cursors(&mut store).await;
        check_leases(&mut store).await;
        drop(store);
        let store = open(&url).await;
        assert_eq!(store.cursor("check-a").await.unwrap(), 43);
        assert_eq!(store.cursor("check-b").await.unwrap(), 7);
        let other = open(&url).await;
        let long = std::time::Duration::from_secs(60);
        assert_eq!(
            other.lease("job", "b", long).await.unwrap(),
            tributary_collector::store::Lease::Theirs("a".into())
        );
        assert_eq!(
            store.lease("job", "a", long).await.unwrap(),
            tributary_collector::store::Lease::Ours
        );
    }

    // Migrations are versioned and run once; a newer schema is refused.
    {
        let (url, store) = fresh(&pg, "schema").await;
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        // Version 8: no foreign key left on `results` (version 6 named its
        // `results_series_fkey1`), and `results_expiry` a BRIN index.
        let q = |sql: &str| pg.psql("schema", sql).unwrap();
        assert_eq!(
            q("SELECT count(*) FROM pg_constraint WHERE conrelid = 'results'::regclass AND contype = 'f'"),
            "0"
        );
        assert_eq!(
            q("SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.relname = 'results_expiry'"),
            "brin"
        );
        drop(store);
        let store = open(&url).await;
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        drop(store);
        assert_eq!(
            pg.psql("schema", "SELECT count(*) FROM schema_version")
                .unwrap(),
            SCHEMA_VERSION.to_string()
        );
        pg.psql("schema", "INSERT INTO schema_version (version) VALUES (99)")
            .unwrap();
        let err = PostgresStore::open(&PostgresOptions::new(&url), &[HOUR])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    // Version 2 held sketches of tick counts (issue #13): an old database is
    // migrated when it holds no summary and refused when it does.
    {
        let (url, store) = fresh(&pg, "ticks").await;
        let (batches, _) = workload_small(1, 1);
        store.apply(&batches).await.unwrap();
        drop(store);
        pg.psql("ticks", "DELETE FROM schema_version WHERE version >= 3")
            .unwrap();
        let err = PostgresStore::open(&PostgresOptions::new(&url), &[HOUR])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TickIndexed { found: 2, .. }),
            "{err}"
        );
        pg.psql("ticks", "DELETE FROM results").unwrap();
        let store = open(&url).await;
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    }

    // A database that cannot be reached is an error, not a panic.
    {
        let url = format!(
            "postgres://tributary@127.0.0.1:{}/nowhere?connect_timeout=2",
            tributary_testkit::free_port()
        );
        let err = PostgresStore::open(&PostgresOptions::new(url), &[HOUR])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
    }
}

/// Two instances (own connections, own threads) apply interleaved batches
/// that all hit the same few windows, and some batches reach both (a
/// redelivery to another instance). A third follows the change feed while
/// they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_racing_on_the_same_windows_lose_no_update() {
    let pg = Postgres::start(ServerOptions::default()).unwrap();
    let url = pg.create_database("race").unwrap();
    // 4 agents × 60 batches × 6 partials over 2 devices × 5 minutes: every
    // batch collides with the others on its windows and their roll-ups.
    let (batches, truth) = workload(777, 4, 60, 6, 2, 5);
    let stores = [open(&url).await, open(&url).await];
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = open(&url).await;
        let done = done.clone();
        tokio::spawn(async move {
            let minute = Width::new(MIN).unwrap();
            let mut cursor = 0;
            let mut seen: HashMap<(String, i64), Summary> = HashMap::new();
            let mut finishing = false;
            loop {
                let page = store.changed_since(minute, cursor, 1000).await.unwrap();
                for c in &page {
                    assert!(c.change > cursor, "the feed went backwards");
                    cursor = c.change;
                    seen.insert(
                        (c.series.to_string(), c.stored.window.start()),
                        c.stored.summary.clone(),
                    );
                }
                if page.is_empty() {
                    if finishing {
                        return seen;
                    }
                    finishing = done.load(Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        })
    };
    let writers: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            // Instance i gets every batch with index % 2 == i, plus every
            // fifth batch of the other's (delivered twice).
            let mine: Vec<Batch> = batches
                .iter()
                .enumerate()
                .filter(|(j, _)| j % 2 == i || j % 5 == 0)
                .map(|(_, b)| b.clone())
                .collect();
            tokio::spawn(async move {
                let mut new = 0;
                for chunk in mine.chunks(3) {
                    let a = store.apply(chunk).await.unwrap();
                    new += a.iter().filter(|a| **a == Applied::New).count();
                }
                new
            })
        })
        .collect();
    let mut applied = 0;
    for w in writers {
        applied += w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let followed = reader.await.unwrap();

    assert_eq!(applied, batches.len(), "each batch applied exactly once");
    let check = open(&url).await;
    // Every window and roll-up holds each of its readings once.
    for width in [MIN, HOUR, DAY] {
        assert_judged(&check, &truth, width).await;
    }
    let stored = all_windows(&check, MIN).await;
    // The follower, which never re-read anything, ends at every row's final
    // state: no change was committed behind its cursor.
    let followed: BTreeMap<(String, i64), Summary> = followed.into_iter().collect();
    assert_eq!(followed, stored);
}

/// The readiness probe writes: it answers while the server runs, and fails
/// (promptly) once the server is stopped.
#[tokio::test]
async fn the_write_probe_fails_when_the_server_is_down() {
    let mut pg = Postgres::start(ServerOptions::default()).unwrap();
    let (_, store) = fresh(&pg, "probe").await;
    store.probe().await.unwrap();
    store.probe().await.unwrap();
    pg.stop();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), store.probe())
        .await
        .expect("the probe answers");
    assert!(answer.is_err(), "a stopped server takes no write");
}

/// The keepalive timers of the established TCP connections to `port` on
/// this host, as the kernel lists them (`/proc/net/tcp`, `tcp6`): a
/// connection with another timer running (a retransmission) or none is
/// `None`. The column `tr:tm->when` holds the timer (2: keepalive) and
/// the time left in clock ticks of `USER_HZ`, 100 per second on Linux.
fn keepalive_timers(port: u16) -> Vec<Option<std::time::Duration>> {
    const USER_HZ: u64 = 100;
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (remote, state, timer) = (cols[2], cols[3], cols[5]);
            let remote_port = u16::from_str_radix(remote.rsplit(':').next().unwrap(), 16).unwrap();
            // 01: ESTABLISHED.
            if remote_port != port || state != "01" {
                continue;
            }
            let (kind, left) = timer.split_once(':').unwrap();
            let left = u64::from_str_radix(left, 16).unwrap();
            out.push(
                (kind == "02").then(|| std::time::Duration::from_millis(left * 1000 / USER_HZ)),
            );
        }
    }
    out
}

/// `keepalive` reaches the store's sockets: its connection's keepalive
/// timer counts down from the 9 s set, not from the driver's 2 hours — so
/// a server that vanished is noticed by the collector too.
#[tokio::test]
async fn the_store_probes_its_idle_connections_after_the_keepalive_set() {
    use std::time::Duration;
    let pg = Postgres::start(ServerOptions::default()).unwrap();
    let url = pg.create_database("keepalive").unwrap();
    let options = PostgresOptions {
        keepalive: Some(Duration::from_secs(9)),
        ..PostgresOptions::new(&url)
    };
    let store = PostgresStore::open(&options, &[HOUR, DAY]).await.unwrap();
    store.probe().await.unwrap();
    let timers = keepalive_timers(pg.port());
    assert!(!timers.is_empty(), "the store holds a connection");
    // At most the 9 s set (the driver's default would read about 2 h).
    for t in timers {
        let left = t.expect("a keepalive timer");
        assert!(left <= Duration::from_secs(9), "{left:?} left");
    }
}

/// A batch of `agent` (sequence `seq`) with one reading for `device` in
/// minute `minute`.
fn one(agent: &str, seq: u64, device: &str, minute: i64) -> Batch {
    let start = T0 + minute * MIN;
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    s.insert(start + 1, 20_000).unwrap();
    let p = Partial {
        series: key(device),
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    };
    Batch::new(agent, seq, start + MIN, vec![p])
}

/// Two commits in the opposite order of their change numbers cannot make
/// the feed skip a change. Batch A's transaction starts writing first (any
/// number it takes is the lower one) and is held just before its commit:
/// the test holds the row lock of A's agent's watermark, the last row the
/// apply writes. Batch B, of another agent and series, commits meanwhile.
/// A follower reads the feed then, moves its cursor to the last change it
/// saw, and after A commits reads on from the cursor: it must find A's
/// row. (A design that numbers at write time and shows every committed
/// number at once fails here: B's number passes the cursor over A's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_numbered_earlier_but_committed_later_is_not_skipped() {
    let pg = Postgres::start(ServerOptions::default()).unwrap();
    let url = pg.create_database("skip").unwrap();
    let (store_a, store_b) = (open(&url).await, open(&url).await);
    let minute = Width::new(MIN).unwrap();
    // First batches create both agents' rows.
    store_a.apply(&[one("gw-a", 1, "dev-a", 0)]).await.unwrap();
    store_b.apply(&[one("gw-b", 1, "dev-b", 0)]).await.unwrap();
    let start = store_a.changed_since(minute, 0, 100).await.unwrap();
    assert_eq!(start.len(), 2);
    let mut cursor = start.last().unwrap().change;

    let (mut holder, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM watermarks WHERE agent = 'gw-a' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let a = tokio::spawn({
        let store = store_a.clone();
        async move { store.apply(&[one("gw-a", 2, "dev-a", 1)]).await }
    });
    // Wait until A waits for the held lock (its rows are written by then).
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'skip' \
                   AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO watermarks%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while pg.psql("skip", waiting).unwrap().trim() != "1" {
        assert!(std::time::Instant::now() < deadline, "A never waited");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        store_b.apply(&[one("gw-b", 2, "dev-b", 1)]).await.unwrap(),
        [Applied::New]
    );
    let mut seen: Vec<(String, i64)> = Vec::new();
    for c in store_b.changed_since(minute, cursor, 100).await.unwrap() {
        assert!(c.change > cursor);
        cursor = c.change;
        seen.push((c.series.device().to_string(), c.stored.window.start()));
    }
    hold.rollback().await.unwrap();
    assert_eq!(a.await.unwrap().unwrap(), [Applied::New]);
    for c in store_b.changed_since(minute, cursor, 100).await.unwrap() {
        assert!(c.change > cursor);
        cursor = c.change;
        seen.push((c.series.device().to_string(), c.stored.window.start()));
    }
    seen.sort();
    let both = [
        ("dev-a".to_string(), T0 + MIN),
        ("dev-b".to_string(), T0 + MIN),
    ];
    assert_eq!(seen, both, "the follower saw each new row once");
}

/// On a fresh store of `db`: partitions are made for the current and next
/// spans (not over rows the default partition holds); expiry drops the
/// partitions wholly before the cut, with their parked entries, deletes
/// the rest before it, and leaves other widths alone.
async fn check_partitions(pg: &Postgres, db: &str, store: &PostgresStore) {
    let minute = Width::new(MIN).unwrap();
    let d0 = T0 / DAY * DAY;
    let exists = |name: String| {
        let out = pg
            .psql(db, &format!("SELECT to_regclass('{name}') IS NOT NULL"))
            .unwrap();
        out == "t"
    };
    let part = |day: i64| format!("results_w60000_{}", d0 / DAY + day);
    // A row of day 3 lands in the default before its partition exists.
    let at = |day: i64, m: i64| {
        let start = d0 + day * DAY + m * MIN;
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        s.insert(start, 1000 + day).unwrap();
        Partial {
            series: key("dev-p"),
            window: Window::new(start, minute).unwrap(),
            summary: s,
        }
    };
    store
        .apply(&[Batch::new("p", 1, d0, vec![at(3, 5)])])
        .await
        .unwrap();
    store.prepare(minute, d0).await.unwrap();
    store.prepare(minute, d0 + 3 * DAY).await.unwrap();
    for day in [0, 1, 2, 4, 5] {
        assert!(exists(part(day)), "day {day}");
    }
    assert!(!exists(part(3)), "the default holds a row of day 3");
    store.prepare(minute, d0).await.unwrap();
    let partials = vec![
        at(-1, 0),
        at(0, 10),
        at(0, 20),
        at(1, 10),
        at(1, 30),
        at(2, 10),
    ];
    store
        .apply(&[Batch::new("p", 2, d0, partials.clone())])
        .await
        .unwrap();
    assert_eq!(
        pg.psql(db, &format!("SELECT count(*) FROM {}", part(0)))
            .unwrap(),
        "2"
    );
    let parked = (key("dev-p"), d0 + 10 * MIN);
    store.park("s", minute, &[parked]).await.unwrap();
    let hours = all_stored(store, HOUR).await;
    pg.psql(db, "ANALYZE results").unwrap();

    // The cut: day 1, 20 minutes in.
    let cut = d0 + DAY + 20 * MIN;
    let mut deleted = 0;
    loop {
        let n = store.expire(minute, cut, 2).await.unwrap();
        deleted += n;
        if n < 2 {
            break;
        }
    }
    assert!(!exists(part(0)), "day 0 dropped");
    assert!(exists(part(1)) && exists(part(2)));
    // Day 0's two rows (planner's estimate after ANALYZE), day -1's in the
    // default and day 1's first minute by DELETE.
    assert_eq!(deleted, 4);
    assert!(store.reclaim(0).await.unwrap() > 0, "the partition's bytes");
    assert_eq!(store.reclaim(0).await.unwrap(), 0);
    let left: Vec<i64> = all_stored(store, MIN)
        .await
        .into_keys()
        .filter(|(k, _)| k.contains("dev-p"))
        .map(|(_, start)| start)
        .collect();
    assert_eq!(
        left,
        [
            d0 + DAY + 30 * MIN,
            d0 + 2 * DAY + 10 * MIN,
            d0 + 3 * DAY + 5 * MIN
        ]
    );
    assert!(store
        .parked("s", minute, 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(all_stored(store, HOUR).await, hours);
}

/// [`retention::check_oldest`] on a fresh store of `db`, checking that its
/// minutes are spread over several partitions and the default once
/// written, and that the oldest minutes' partition was dropped by expiry.
async fn check_oldest_partitions(pg: &Postgres, db: &str, store: &PostgresStore) {
    retention::check_oldest(store, || {
        let holders = pg
            .psql(
                db,
                "SELECT string_agg(DISTINCT tableoid::regclass::text, ',')
                 FROM results WHERE width = 60000",
            )
            .unwrap();
        assert_eq!(
            holders,
            "results_default,results_w60000_0,results_w60000_n1,results_w60000_n2"
        );
    })
    .await;
    let n2 = pg
        .psql(db, "SELECT to_regclass('results_w60000_n2') IS NULL")
        .unwrap();
    assert_eq!(n2, "t", "day −2's partition dropped by expiry");
}

/// On a fresh store of `db`: `prepare` analyses the width's partitions
/// whose span has ended and summarises their `results_expiry` block ranges
/// (so `oldest` and expiry find rows by the BRIN index instead of reading
/// partitions whole), and leaves the current one to autovacuum. Judged by
/// `last_analyze` and by what a summarising call finds left to do.
async fn check_summaries(pg: &Postgres, db: &str, store: &PostgresStore) {
    let minute = Width::new(MIN).unwrap();
    let d0 = T0 / DAY * DAY;
    store.prepare(minute, d0).await.unwrap();
    let part = |day: i64| format!("results_w60000_{}", (d0 + day * DAY) / DAY);
    // 28,800 rows a day (a few BRIN ranges of 128 pages) on days 0 and 1,
    // which autovacuum leaves alone (it would analyse them too).
    for day in [0, 1] {
        pg.psql(
            db,
            &format!("ALTER TABLE {} SET (autovacuum_enabled = false)", part(day)),
        )
        .unwrap();
        pg.psql(
            db,
            &format!(
                "INSERT INTO results (series, width, start, revision, summary, changed)
                 SELECT s, 60000, {} + m * 60000, 0, '\\x00112233445566778899'::bytea, m
                 FROM generate_series(0, 1439) m, generate_series(1, 20) s",
                d0 + day * DAY
            ),
        )
        .unwrap();
    }
    // Day 1 is current: day 0 has ended.
    store.prepare(minute, d0 + DAY + HOUR).await.unwrap();
    let left = |day: i64| {
        pg.psql(
            db,
            &format!(
                "SELECT brin_summarize_new_values(x.indexrelid::regclass)
                 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                 JOIN pg_am a ON a.oid = c.relam
                 WHERE x.indrelid = '{}'::regclass AND a.amname = 'brin'",
                part(day)
            ),
        )
        .unwrap()
    };
    let analysed = |day: i64| {
        pg.psql(
            db,
            &format!(
                "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = '{}'",
                part(day)
            ),
        )
        .unwrap()
    };
    assert_eq!(analysed(0), "t", "the ended day was analysed");
    assert_eq!(analysed(1), "f", "the current day is left to autovacuum");
    assert_eq!(left(0), "0", "the ended day was summarised");
    assert_ne!(left(1), "0", "the current day is left to autovacuum");
    assert_eq!(store.oldest(minute).await.unwrap(), Some(d0));
}

/// One instance with lanes applies each group's agents in concurrent
/// transactions: every batch once (a replay of the groups, in other
/// groupings, is all duplicates), every window and roll-up exactly its
/// readings, and the change feed read afterwards holds each window once
/// at its final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_by_agent_apply_each_batch_once_and_lose_no_update() {
    let pg = Postgres::start(ServerOptions::default()).unwrap();
    let url = pg.create_database("lanes").unwrap();
    // 4 agents over 3 devices: agents share series, so lanes of one group
    // merge into the same windows and roll-ups.
    let (batches, truth) = workload(4242, 4, 30, 5, 3, 12);
    let options = PostgresOptions {
        pool_size: 4,
        ..PostgresOptions::new(&url)
    };
    let store = PostgresStore::open(&options, &[HOUR, DAY])
        .await
        .unwrap()
        .with_lanes(4);
    let mut new = 0;
    for group in batches.chunks(16) {
        let a = store.apply(group).await.unwrap();
        assert_eq!(a.len(), group.len());
        new += a.iter().filter(|a| **a == Applied::New).count();
    }
    assert_eq!(new, batches.len());
    for group in batches.chunks(7) {
        let a = store.apply(group).await.unwrap();
        assert!(a.iter().all(|a| *a == Applied::Duplicate), "a replay");
    }

    for width in [MIN, HOUR, DAY] {
        assert_judged(&store, &truth, width).await;
    }
    let stored = all_windows(&store, MIN).await;
    let (fed, entries) = minute_feed(&store).await;
    assert_eq!(fed.len(), entries, "each window once");
    assert_eq!(fed, stored);
}

/// The whole change feed of the one-minute width, by (series, start), and
/// how many entries it had.
async fn minute_feed(store: &PostgresStore) -> (BTreeMap<(String, i64), Summary>, usize) {
    let minute = Width::new(MIN).unwrap();
    let feed = store.changed_since(minute, 0, usize::MAX).await.unwrap();
    let fed = feed
        .iter()
        .map(|c| {
            (
                (c.series.to_string(), c.stored.window.start()),
                c.stored.summary.clone(),
            )
        })
        .collect();
    (fed, feed.len())
}

/// A batch of `agent` (sequence `seq`) with one reading `(t, v)` for each
/// `(device, minute, v)` of `readings`, recorded in `truth`.
fn reading_batch(agent: &str, seq: u64, readings: &[(&str, i64, i64)], truth: &mut Truth) -> Batch {
    let minute = Width::new(MIN).unwrap();
    let partials = readings
        .iter()
        .map(|&(device, m, v)| {
            let start = T0 + m * MIN;
            let t = start + 7 * m + 1;
            truth
                .entry((device.to_string(), start))
                .or_default()
                .push((t, v));
            let mut s = Summary::new(Quantum::new(-3).unwrap());
            s.insert(t, v).unwrap();
            Partial {
                series: key(device),
                window: Window::new(start, minute).unwrap(),
                summary: s,
            }
        })
        .collect();
    Batch::new(agent, seq, T0 + 10 * MIN, partials)
}

/// The optimistic direct `COPY` of the rows a transaction expects to be new
/// falls back to the general path, writing nothing twice and losing
/// nothing, when such a row already exists (another agent's partial of the
/// same window, committed) and when another instance inserted it in a
/// transaction still running (the `COPY` waits for it, which the test
/// holds open). Judged against the raw readings: every window, roll-up and
/// feed entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_copy_falls_back_on_existing_and_concurrent_rows() {
    let pg = Postgres::start(ServerOptions::default()).unwrap();
    let url = pg.create_database("direct").unwrap();
    let (a, b, c) = (open(&url).await, open(&url).await, open(&url).await);
    let mut truth = Truth::new();

    // New rows only: the direct COPY takes them.
    let first = reading_batch(
        "gw-a",
        1,
        &[("dev-x", 0, 1000), ("dev-y", 0, 1100)],
        &mut truth,
    );
    assert_eq!(a.apply(&[first]).await.unwrap(), [Applied::New]);
    assert_eq!(a.direct_conflicts(), 0);

    // A row that exists: B's COPY runs into (dev-x, minute 0) and falls
    // back; its new row of minute 1 is written too.
    let existing = reading_batch(
        "gw-b",
        1,
        &[("dev-x", 0, 2000), ("dev-x", 1, 2100)],
        &mut truth,
    );
    assert_eq!(
        b.apply(std::slice::from_ref(&existing)).await.unwrap(),
        [Applied::New]
    );
    assert_eq!(b.direct_conflicts(), 1, "the existing row made B fall back");
    assert_eq!(
        b.apply(&[existing]).await.unwrap(),
        [Applied::Duplicate],
        "and B applied its batch once"
    );

    // A row another instance inserted and has not committed: A writes
    // (dev-x, minute 2) and is held before its commit (the test holds its
    // agent's watermark row); C's COPY of the same row waits for A, then
    // runs into it once A commits.
    let (mut holder, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM watermarks WHERE agent = 'gw-a' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let held = reading_batch("gw-a", 2, &[("dev-x", 2, 3000)], &mut truth);
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { a.apply(&[held]).await }
    });
    let waits = |query: &str| {
        format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'direct' \
             AND wait_event_type = 'Lock' AND query LIKE '{query}%'"
        )
    };
    let wait_for = |sql: String, what: &'static str| {
        let pg = &pg;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while pg.psql("direct", &sql).unwrap().trim() != "1" {
                assert!(std::time::Instant::now() < deadline, "{what} never waited");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(waits("INSERT INTO watermarks"), "A").await;
    let racing = reading_batch(
        "gw-c",
        1,
        &[("dev-x", 2, 4000), ("dev-y", 2, 4100)],
        &mut truth,
    );
    let c_task = tokio::spawn({
        let c = c.clone();
        async move { c.apply(&[racing]).await }
    });
    wait_for(waits("COPY results"), "C's direct COPY").await;
    hold.rollback().await.unwrap();
    assert_eq!(a_task.await.unwrap().unwrap(), [Applied::New]);
    assert_eq!(c_task.await.unwrap().unwrap(), [Applied::New]);
    assert_eq!(c.direct_conflicts(), 1, "A's row made C fall back");
    assert_eq!(a.direct_conflicts(), 0);

    // After its conflict B skips one direct try, then tries again; both
    // write correctly.
    for seq in 2..=4 {
        let m = 2 + i64::try_from(seq).unwrap();
        let later = reading_batch("gw-b", seq, &[("dev-y", m, 5000 + m)], &mut truth);
        assert_eq!(b.apply(&[later]).await.unwrap(), [Applied::New]);
    }
    assert_eq!(b.direct_conflicts(), 1, "rows that are new never conflict");

    // Every window and roll-up holds exactly its readings.
    for width in [MIN, HOUR, DAY] {
        assert_judged(&a, &truth, width).await;
    }
    let stored = all_windows(&a, MIN).await;
    let (fed, entries) = minute_feed(&a).await;
    assert_eq!(fed.len(), entries, "each window once in the feed");
    assert_eq!(fed, stored, "the feed ends at every window's final state");
}

/// Records in `index_builds` every index `CREATE INDEX` makes in database
/// `db` (an event trigger: the server's own account of what a migration
/// built).
fn log_index_builds(pg: &Postgres, db: &str) {
    pg.psql(
        db,
        "CREATE TABLE index_builds (object TEXT NOT NULL);
         CREATE FUNCTION log_index_builds() RETURNS event_trigger LANGUAGE plpgsql AS $$
         DECLARE r record;
         BEGIN
             FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX' LOOP
                 INSERT INTO index_builds (object) VALUES (r.object_identity);
             END LOOP;
         END $$;
         CREATE EVENT TRIGGER log_index_builds ON ddl_command_end
             WHEN TAG IN ('CREATE INDEX') EXECUTE FUNCTION log_index_builds();",
    )
    .unwrap();
}

/// The access method of `results_expiry` in database `db`, and how many
/// times [`log_index_builds`] saw it built.
fn expiry_index(pg: &Postgres, db: &str) -> (String, u64) {
    let am = pg
        .psql(
            db,
            "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.relname = 'results_expiry'",
        )
        .unwrap();
    let builds = pg
        .psql(
            db,
            "SELECT count(*) FROM index_builds WHERE object = 'public.results_expiry'",
        )
        .unwrap();
    (am, builds.parse().unwrap())
}
