//! The SQLite store's guarantees: batches apply exactly once (also after a
//! reopen), stored results do not depend on arrival order or grouping, each
//! stored window and roll-up agrees with the oracle's statistics of its raw
//! readings, and roll-ups equal the merge of the windows inside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::{SqliteStore, SCHEMA_VERSION};
use tributary_collector::store::{self, Applied, Lease};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, Summary, Width, Window};

mod store_common;

use store_common::{
    all_windows, assert_judged, check_change_feed, check_cursors, check_leases, check_parking,
    check_progress, check_windows_of, key, summary_of, Truth, HOUR, MIN, T0,
};

/// The SQLite tests' workload: `agents` agents sending `batches` batches of 4
/// partials for 3 devices over 90 one-minute windows.
fn workload(agents: u64, batches: u64) -> (Vec<Batch>, Truth) {
    store_common::workload(12345, agents, batches, 4, 3, 90)
}

fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(&dir.path().join(name), &[HOUR, 24 * HOUR]).unwrap()
}

#[tokio::test]
async fn each_window_and_roll_up_agrees_with_the_oracle_on_its_readings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let (batches, truth) = workload(3, 20);
    let applied = store.apply(&batches).await.unwrap();
    assert!(applied.iter().all(|a| *a == Applied::New));
    for width in [MIN, HOUR, 24 * HOUR] {
        assert_judged(&store, &truth, width).await;
    }
    check_windows_of(&store).await;
}

#[tokio::test]
async fn redelivered_batches_change_nothing_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    let before = {
        let store = open(&dir, "a.db");
        store.apply(&batches[..12]).await.unwrap();
        // The same batch twice in one group: applied once.
        let again = store
            .apply(&[batches[12].clone(), batches[12].clone()])
            .await
            .unwrap();
        assert_eq!(again, vec![Applied::New, Applied::Duplicate]);
        all_windows(&store, MIN).await
    };
    let store = open(&dir, "a.db");
    let replay = store.apply(&batches[..13]).await.unwrap();
    assert!(replay.iter().all(|a| *a == Applied::Duplicate));
    assert_eq!(all_windows(&store, MIN).await, before);
    assert_eq!(all_windows(&store, HOUR).await, {
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = open(&fresh_dir, "b.db");
        fresh.apply(&batches[..13]).await.unwrap();
        all_windows(&fresh, HOUR).await
    });
}

#[tokio::test]
async fn results_do_not_depend_on_order_or_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(3, 15);
    let one = open(&dir, "one.db");
    one.apply(&batches).await.unwrap();
    let other = open(&dir, "other.db");
    let mut reversed = batches.clone();
    reversed.reverse();
    for chunk in reversed.chunks(7) {
        other.apply(chunk).await.unwrap();
    }
    for width in [MIN, HOUR, 24 * HOUR] {
        assert_eq!(
            all_windows(&one, width).await,
            all_windows(&other, width).await,
            "width {width}"
        );
    }
    assert_eq!(
        one.watermarks().await.unwrap(),
        other.watermarks().await.unwrap()
    );
    assert_eq!(
        one.watermarks().await.unwrap()[0],
        ("agent-0".to_string(), T0 + 14 * MIN)
    );
}

#[tokio::test]
async fn rollups_equal_the_merge_of_their_windows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let (batches, truth) = workload(2, 20);
    store.apply(&batches).await.unwrap();
    let minutes = all_windows(&store, MIN).await;
    for width in [HOUR, 24 * HOUR] {
        let mut expected: BTreeMap<(String, i64), Summary> = BTreeMap::new();
        for ((device, start), s) in &minutes {
            let coarse = Window::containing(*start, Width::new(width).unwrap()).start();
            expected
                .entry((device.clone(), coarse))
                .or_insert_with(|| Summary::new(s.quantum()))
                .merge(s)
                .unwrap();
        }
        assert_eq!(all_windows(&store, width).await, expected, "width {width}");
        assert_judged(&store, &truth, width).await;
    }
}

#[tokio::test]
async fn later_merges_bump_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    // One window's readings of the workload, sent as one partial.
    let (_, truth) = workload(1, 1);
    let (window, readings) = truth.into_iter().next().unwrap();
    let p = &Partial {
        series: key(&window.0),
        window: Window::new(window.1, Width::new(MIN).unwrap()).unwrap(),
        summary: summary_of(&readings),
    };
    let mk = |seq| Batch::new("agent-x", seq, T0, vec![p.clone()]);
    store.apply(&[mk(1)]).await.unwrap();
    store.apply(&[mk(2)]).await.unwrap();
    store.apply(&[mk(2)]).await.unwrap(); // duplicate: no bump
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

#[tokio::test]
async fn a_quantum_mismatch_fails_the_whole_group_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let (batches, _) = workload(1, 2);
    let mut bad = batches[1].clone();
    let mut other = Summary::new(Quantum::new(-1).unwrap());
    other.insert(bad.partials[0].window.start(), 5).unwrap();
    bad.partials.push(Partial {
        summary: other,
        ..bad.partials[0].clone()
    });
    assert!(store.apply(&[batches[0].clone(), bad]).await.is_err());
    assert!(store.series().await.unwrap().is_empty());
    // Nothing was recorded as applied either: the good batch still applies.
    assert_eq!(
        store.apply(&[batches[0].clone()]).await.unwrap(),
        vec![Applied::New]
    );
}

#[tokio::test]
async fn progress_lists_the_agents_of_each_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(1, 1);
    check_progress(&mut store, &batches[0]).await;
}

#[tokio::test]
async fn the_change_feed_returns_each_row_at_its_latest_write_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(2, 10);
    check_change_feed(&mut store, &batches).await;
}

#[tokio::test]
async fn cursors_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    check_cursors(&mut store).await;
    drop(store);
    let store = open(&dir, "a.db");
    assert_eq!(store.cursor("check-a").await.unwrap(), 43);
    assert_eq!(store.cursor("check-b").await.unwrap(), 7);
}

#[tokio::test]
async fn parked_rows_come_back_as_stored_until_unparked() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    check_parking(&mut open(&dir, "a.db"), &batches).await;
}

#[tokio::test]
async fn leases_have_one_holder_until_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    check_leases(&mut open(&dir, "a.db")).await;
    // Two handles on one file (two processes) see the same leases.
    let (one, two) = (open(&dir, "b.db"), open(&dir, "b.db"));
    let long = std::time::Duration::from_secs(60);
    assert_eq!(one.lease("sink:x", "one", long).await.unwrap(), Lease::Ours);
    assert_eq!(
        two.lease("sink:x", "two", long).await.unwrap(),
        Lease::Theirs("one".into())
    );
}

#[tokio::test]
async fn a_database_from_a_newer_collector_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir, "a.db"));
    let conn = rusqlite::Connection::open(dir.path().join("a.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&dir.path().join("a.db"), &[HOUR]).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}

/// Versions 1–3 held sketches of tick counts (issue #13): an old database is
/// migrated when it holds no summary and refused, saying why, when it does.
#[tokio::test]
async fn a_database_of_tick_indexed_sketches_is_refused_unless_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let user_version = |v: Option<i64>| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        if let Some(v) = v {
            conn.pragma_update(None, "user_version", v).unwrap();
        }
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    drop(open(&dir, "a.db"));
    user_version(Some(3));
    drop(open(&dir, "a.db"));
    assert_eq!(user_version(None), SCHEMA_VERSION);
    let (batches, _) = workload(1, 1);
    open(&dir, "a.db").apply(&batches).await.unwrap();
    user_version(Some(3));
    let err = SqliteStore::open(&path, &[HOUR]).unwrap_err();
    assert!(
        matches!(err, store::StoreError::TickIndexed { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tick counts"), "{err}");
}

/// Applies `batches` four at a time, in turn by `a` and by `b` (two stores
/// on one file, each one's memory made stale by the other's commits).
async fn apply_in_turn(a: &SqliteStore, b: &SqliteStore, batches: &[Batch]) {
    for (i, chunk) in batches.chunks(4).enumerate() {
        if i % 2 == 0 {
            a.apply(chunk).await
        } else {
            b.apply(chunk).await
        }
        .unwrap();
    }
}

/// Reads one integer from the database file at `path`.
fn sql_int(path: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .unwrap()
        .unwrap_or(0)
}

/// The change numbers the feed gives at each width from the start, against
/// those the rows of `results` carry (read from the table, not the log).
async fn feed_matches_the_table(store: &SqliteStore, path: &std::path::Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    for width in [MIN, HOUR, 24 * HOUR] {
        let mut stmt = c
            .prepare("SELECT changed FROM results WHERE width = ?1 ORDER BY changed")
            .unwrap();
        let table: Vec<u64> = stmt
            .query_map([width], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|c| u64::try_from(c.unwrap()).unwrap())
            .collect();
        let w = Width::new(width).unwrap();
        let fed: Vec<u64> = store
            .changed_since(w, 0, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|c| c.change)
            .collect();
        assert_eq!(fed, table, "width {width}");
        // Read as a sink reads: pages of 7 from the last change seen, so
        // most pages start and end inside an entry.
        let mut paged = Vec::new();
        loop {
            let after = paged.last().copied().unwrap_or(0);
            let page = store.changed_since(w, after, 7).await.unwrap();
            assert!(page.len() <= 7);
            paged.extend(page.iter().map(|c| c.change));
            if page.len() < 7 {
                break;
            }
        }
        assert_eq!(paged, table, "width {width}, in pages");
    }
}

/// The change feed's log (one entry per transaction and width) keeps one
/// live key per stored row however often the roll-ups are rewritten, and
/// gives up the keys of rows retention deletes: the live counts add up to
/// the table's rows, the feed from the start gives exactly the table's
/// rows at their change numbers, and nothing is left at a width expired
/// whole. Each batch is its own transaction, so every one rewrites the
/// roll-ups the batches before it wrote.
#[tokio::test]
async fn the_change_feed_log_keeps_one_live_key_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = open(&dir, "a.db");
    let (batches, truth) = workload(3, 30);
    for b in &batches {
        store.apply(std::slice::from_ref(b)).await.unwrap();
    }
    assert_judged(&store, &truth, MIN).await;
    let rows = sql_int(&path, "SELECT count(*) FROM results");
    let writes = sql_int(&path, "SELECT value FROM meta WHERE key = 'change'");
    assert!(
        writes > 2 * rows,
        "{writes} writes of {rows} rows: rewrites expected"
    );
    assert_eq!(sql_int(&path, "SELECT sum(live) FROM feed"), rows);
    feed_matches_the_table(&store, &path).await;

    // Retention deletes every one-minute row: their keys leave the log.
    let minute = Width::new(MIN).unwrap();
    while store.expire(minute, i64::MAX, 100).await.unwrap() > 0 {}
    assert_eq!(
        sql_int(&path, "SELECT count(*) FROM results WHERE width = 60000"),
        0
    );
    assert_eq!(
        sql_int(&path, "SELECT count(*) FROM feed WHERE width = 60000"),
        0
    );
    assert_eq!(
        sql_int(&path, "SELECT sum(live) FROM feed"),
        sql_int(&path, "SELECT count(*) FROM results")
    );
    feed_matches_the_table(&store, &path).await;
}

/// A transaction writing more rows at one width than an entry lists gets
/// several entries, none longer than the bound, and the feed reads across
/// them in order, whole or in pages: 50 series × 120 minutes in one
/// group are 6,000 one-minute rows.
#[tokio::test]
async fn a_large_transaction_is_logged_in_bounded_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = open(&dir, "a.db");
    let partials: Vec<Partial> = (0..50)
        .flat_map(|d| {
            (0..120).map(move |m| {
                let start = T0 + m * MIN;
                partial_of(&format!("dev-{d:02}"), MIN, start, &[(start, 20_000 + d)])
            })
        })
        .collect();
    store
        .apply(&[Batch::new("agent-0", 0, T0 + 120 * MIN, partials)])
        .await
        .unwrap();
    assert_eq!(
        sql_int(&path, "SELECT count(*) FROM results WHERE width = 60000"),
        6_000
    );
    assert!(sql_int(&path, "SELECT count(*) FROM feed WHERE width = 60000") >= 2);
    assert!(sql_int(&path, "SELECT max(keys) FROM feed") <= 4_096);
    assert_eq!(
        sql_int(&path, "SELECT sum(keys) FROM feed WHERE width = 60000"),
        6_000
    );
    feed_matches_the_table(&store, &path).await;
}

/// An entry of the log left with at most a quarter of its keys alive is
/// rewritten with only those: 40 series' hour roll-ups written by one
/// transaction, 31 of them rewritten by the next, leave that transaction's
/// hour entry listing the 9 rows it still names; the feed still gives all
/// 40 rows once each, in change order.
#[tokio::test]
async fn a_sparse_entry_of_the_log_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = open(&dir, "a.db");
    let devices: Vec<String> = (0..40).map(|d| format!("dev-{d:02}")).collect();
    let minute = |start: i64, devices: &[String]| -> Vec<Partial> {
        devices
            .iter()
            .map(|d| partial_of(d, MIN, start, &[(start, 20_000)]))
            .collect()
    };
    store
        .apply(&[Batch::new("agent-0", 0, T0 + MIN, minute(T0, &devices))])
        .await
        .unwrap();
    let first: i64 = sql_int(&path, "SELECT min(first) FROM feed WHERE width = 3600000");
    let entry = |first: i64| {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row(
            "SELECT keys, live FROM feed WHERE width = 3600000 AND first >= ?1 ORDER BY first",
            [first],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .unwrap()
    };
    assert_eq!(entry(first), (40, 40));
    store
        .apply(&[Batch::new(
            "agent-0",
            1,
            T0 + 2 * MIN,
            minute(T0 + MIN, &devices[..31]),
        )])
        .await
        .unwrap();
    assert_eq!(entry(first), (9, 9));
    let hour = Width::new(HOUR).unwrap();
    let fed = store.changed_since(hour, 0, usize::MAX).await.unwrap();
    let mut series: Vec<String> = fed.iter().map(|c| c.series.device().to_string()).collect();
    series.sort();
    assert_eq!(series, devices);
    assert!(fed.windows(2).all(|p| p[0].change < p[1].change));
    feed_matches_the_table(&store, &path).await;
}

/// The store keeps committed rows in memory to merge into; the database
/// stays the truth. Two stores writing the same file in turn (each one's
/// memory made stale by the other) must still end with every window and
/// roll-up exact.
#[tokio::test]
async fn two_writers_on_one_file_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, truth) = workload(3, 30);
    let a = open(&dir, "shared.db");
    let b = open(&dir, "shared.db");
    let single = open(&dir, "single.db");
    apply_in_turn(&a, &b, &batches).await;
    for chunk in batches.chunks(4) {
        single.apply(chunk).await.unwrap();
    }
    for width in [MIN, HOUR, 24 * HOUR] {
        assert_judged(&a, &truth, width).await;
        assert_eq!(
            all_windows(&a, width).await,
            all_windows(&single, width).await
        );
        assert_eq!(
            all_windows(&b, width).await,
            all_windows(&single, width).await
        );
    }
}

/// A transaction that fails after it has merged into rows the store holds
/// in memory leaves neither the database nor that memory changed: later
/// merges build on the committed state only.
#[tokio::test]
async fn a_failed_transaction_leaves_no_stale_merge_behind() {
    let dir = tempfile::tempdir().unwrap();
    // No roll-ups, so the failure happens when merging into stored rows.
    let store = SqliteStore::open(&dir.path().join("a.db"), &[]).unwrap();
    let (batches, truth) = workload(1, 1);
    let first = &batches[0];
    store.apply(std::slice::from_ref(first)).await.unwrap();
    // A group that merges the same partials again (into the rows the store
    // now holds in memory) plus one whose quantum differs from its stored
    // window's: the group fails as a whole.
    let again = Batch::new("agent-y", 1, T0, first.partials.clone());
    let mut clash = first.partials[1].clone();
    clash.summary = Summary::new(Quantum::new(-1).unwrap());
    clash.summary.insert(clash.window.start(), 5).unwrap();
    let bad = Batch::new("agent-z", 1, T0, vec![clash]);
    assert!(store.apply(&[again.clone(), bad]).await.is_err());
    // Applying the good batch alone merges it exactly once.
    assert_eq!(store.apply(&[again]).await.unwrap(), vec![Applied::New]);
    // Every reading of the first batch is stored exactly twice, as the
    // oracle computes it from the raw readings.
    let mut twice = truth;
    for readings in twice.values_mut() {
        readings.extend(readings.clone());
    }
    assert_judged(&store, &twice, MIN).await;
    let single = SqliteStore::open(&dir.path().join("b.db"), &[]).unwrap();
    for p in &first.partials {
        let stored = store
            .windows(
                &p.series,
                p.window.width(),
                p.window.start(),
                p.window.end(),
            )
            .await
            .unwrap();
        assert_eq!(stored[0].revision, 1, "{}", p.series);
    }
    // And what a fresh store computes from the same committed batches agrees.
    single
        .apply(&[
            first.clone(),
            Batch::new("agent-y", 1, T0, first.partials.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(
        all_windows(&store, MIN).await,
        all_windows(&single, MIN).await
    );
}

/// The writer does not have SQLite check `results.series` against
/// `series` (a look-up per row, about 13 % of its rate): every id it
/// writes must still name a stored series — also after a group that
/// created series failed and rolled back, and with another store writing
/// the file in turn (which clears each one's memory of ids).
#[tokio::test]
async fn every_result_row_names_a_stored_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let (a, b) = (open(&dir, "a.db"), open(&dir, "a.db"));
    let (batches, truth) = workload(3, 30);
    // The first group creates the series of its batch, then fails on a
    // partial whose quantum differs from its window's other partial.
    let mut bad = batches[0].clone();
    let mut clash = bad.partials[0].clone();
    clash.summary = Summary::new(Quantum::new(-1).unwrap());
    clash.summary.insert(clash.window.start(), 5).unwrap();
    bad.partials.push(clash);
    assert!(a.apply(&[bad]).await.is_err());
    assert_eq!(sql_int(&path, "SELECT count(*) FROM series"), 0);
    apply_in_turn(&a, &b, &batches).await;
    assert!(sql_int(&path, "SELECT count(*) FROM results") > 0);
    assert_eq!(
        sql_int(
            &path,
            "SELECT count(*) FROM results WHERE series NOT IN (SELECT id FROM series)"
        ),
        0
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let violations: Vec<(String, i64)> = c
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(violations, vec![]);
    assert_judged(&a, &truth, MIN).await;
    assert_judged(&b, &truth, HOUR).await;
}

/// Queries run on the store's own reader connections: they see each
/// commit as soon as `apply` returns, and cannot write.
#[tokio::test]
async fn readers_see_each_commit_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    let store = open(&dir, "a.db");
    store.apply(&batches[..5]).await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let single = open(&fresh, "b.db");
    single.apply(&batches[..5]).await.unwrap();
    assert_eq!(
        all_windows(&store, MIN).await,
        all_windows(&single, MIN).await
    );
    store.apply(&batches[5..]).await.unwrap();
    single.apply(&batches[5..]).await.unwrap();
    assert_eq!(
        all_windows(&store, HOUR).await,
        all_windows(&single, HOUR).await
    );
    let wrote = store
        .read(|c| Ok(c.execute("INSERT INTO cursors (name, value) VALUES ('x', 1)", [])?))
        .await;
    assert!(wrote.is_err(), "a reader wrote");
    assert_eq!(store.cursor("x").await.unwrap(), 0);
}

/// A query held open on a reader (a long read transaction) neither waits
/// for nor holds up an ingest commit, nor other queries: the commit goes
/// through while the query still holds its snapshot, which does not see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_held_open_does_not_delay_an_ingest_commit() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    let store = open(&dir, "a.db");
    store.apply(&batches[..5]).await.unwrap();
    let (held_tx, held_rx) = mpsc::channel::<i64>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let count = "SELECT coalesce(sum(batches), 0) FROM incarnations";
    let held = tokio::spawn(store.read(move |c| {
        c.execute_batch("BEGIN")?;
        let before: i64 = c.query_row(count, [], |r| r.get(0))?;
        let _ = held_tx.send(before);
        // Held until the test has committed (or gives up after 30 s).
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
        let still: i64 = c.query_row(count, [], |r| r.get(0))?;
        c.execute_batch("COMMIT")?;
        Ok(still)
    }));
    let before = tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
        .await
        .unwrap();
    assert_eq!(before, 5);
    // The hang guard: with the query holding the store, this would wait
    // for the release below, which comes only after it.
    let guard = Duration::from_secs(10);
    let applied = tokio::time::timeout(guard, store.apply(&batches[5..]))
        .await
        .expect("ingest commits while a query is held open")
        .unwrap();
    assert!(applied.iter().all(|a| *a == Applied::New));
    let series = tokio::time::timeout(guard, store.series())
        .await
        .expect("other queries are served meanwhile")
        .unwrap();
    assert_eq!(series.len(), 3);
    let now = store
        .read(move |c| Ok(c.query_row(count, [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap();
    assert_eq!(now, batches.len() as i64, "a new query sees the commit");
    release_tx.send(()).unwrap();
    let still = held.await.unwrap().unwrap();
    assert_eq!(still, before, "the held query kept its snapshot");
}

/// The identity contract: a re-provisioned agent's new incarnation is
/// applied, and a long run keeps the de-duplication memory bounded (rows of
/// `applied`, counted in SQL) while every replay is recognised.
#[tokio::test]
async fn a_new_incarnation_applies_and_the_dedupe_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    store_common::identity::check_new_incarnation(&store).await;
    let store = open(&dir, "long.db");
    let rows = || {
        store.read(|c| {
            Ok(c.query_row("SELECT count(*) FROM applied", [], |r| r.get::<_, i64>(0))? as u64)
        })
    };
    let started = std::time::Instant::now();
    store_common::identity::check_bounded_dedupe(&store, || async { rows().await.unwrap() }, 1000)
        .await;
    println!("1000 rounds in {:?}", started.elapsed());
}

/// The refusals contract: partials refused inside applied batches, and
/// batches refused whole, are counted exactly, once, per incarnation and
/// reason, and survive a reopen.
#[tokio::test]
async fn refused_partials_are_counted_once_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_common::refused::workload();
    let store = open(&dir, "refused.db");
    store_common::refused::apply_with_redelivery(&store, &w).await;
    store_common::refused::record_whole(&store, &mut w).await;
    drop(store);
    let store = open(&dir, "refused.db");
    store_common::refused::check_stored(&store, &w).await;
}

#[tokio::test]
async fn expiry_deletes_in_bounded_batches_and_a_feed_reader_crosses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, truth) = workload(3, 20);
    store_common::retention::check_retention(&open(&dir, "a.db"), &batches, &truth).await;
}

/// A retention step failing for one width stops no other width's expiry,
/// nor the reclaim; it is counted by width and step.
#[tokio::test]
async fn a_retention_step_failing_at_one_width_stops_no_other() {
    let dir = tempfile::tempdir().unwrap();
    store_common::retention::check_one_failing_width(&open(&dir, "a.db")).await;
}

/// `oldest` is the least start written at each width, also negative, and
/// after expiry.
#[tokio::test]
async fn oldest_is_the_least_start_written() {
    let dir = tempfile::tempdir().unwrap();
    store_common::retention::check_oldest(&open(&dir, "a.db"), || {}).await;
}

/// A new database gives expired rows' pages back to the file system in
/// bounded steps (`auto_vacuum = INCREMENTAL`), judged by the file's page
/// count.
#[tokio::test]
async fn expired_pages_are_given_back_in_bounded_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let (batches, _) = store_common::workload(7, 4, 200, 50, 40, 600);
    store.apply(&batches).await.unwrap();
    let pages = |store: &SqliteStore| {
        store.read(|c| {
            let n: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok((n, free, size))
        })
    };
    let (full, _, size) = pages(&store).await.unwrap();
    let size = u64::try_from(size).unwrap();
    let minute = Width::new(MIN).unwrap();
    let mut deleted = 0;
    loop {
        let n = store.expire(minute, T0 + 600 * MIN, 500).await.unwrap();
        assert!(n <= 500);
        deleted += n;
        if n < 500 {
            break;
        }
    }
    assert!(deleted > 1000, "{deleted}");
    let (_, free, _) = pages(&store).await.unwrap();
    assert!(free > 0, "deletes left free pages");
    // Steps of at most 8 pages until nothing is left.
    let mut freed = 0;
    loop {
        let bytes = store.reclaim(8).await.unwrap();
        assert!(bytes <= 8 * size, "{bytes}");
        if bytes == 0 {
            break;
        }
        freed += bytes;
    }
    let (after, free_after, _) = pages(&store).await.unwrap();
    assert_eq!(free_after, 0);
    assert_eq!(freed, u64::try_from(free).unwrap() * size);
    assert!(after <= full - free, "{after} pages of {full}");
}

/// A new database is made with 8 KiB pages (a fan-in-1 row lands among its
/// series' earlier windows, and larger leaves split less often); one made
/// with 4 KiB pages keeps them — SQLite changes a page size only by a
/// `VACUUM` outside WAL mode — and holds the same windows: each as the
/// oracle makes it from its readings.
#[tokio::test]
async fn new_databases_get_8_kib_pages_and_older_ones_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |name: &str| {
        rusqlite::Connection::open(dir.path().join(name))
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    // A file an earlier build made: 4 KiB pages, in WAL mode, no tables.
    rusqlite::Connection::open(dir.path().join("old.db"))
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;")
        .unwrap();
    let (batches, truth) = workload(2, 10);
    for (name, size) in [("new.db", 8192), ("old.db", 4096)] {
        let store = open(&dir, name);
        store.apply(&batches).await.unwrap();
        assert_judged(&store, &truth, MIN).await;
        drop(store);
        assert_eq!(page_size(name), size, "{name}");
    }
}

/// A database of version 5 (before retention, `auto_vacuum` off) is
/// migrated to the current version at open: the expiry index made (7) and
/// gone again with the time-first layout (9), the `refused` table (8),
/// small enough to be switched to incremental auto-vacuum at once, every
/// row kept.
#[tokio::test]
async fn a_version_5_database_gets_the_expiry_index_and_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let (batches, _) = workload(2, 10);
    let store = open(&dir, "a.db");
    store.apply(&batches).await.unwrap();
    let before = all_windows(&store, MIN).await;
    drop(store);
    let state = || {
        let c = rusqlite::Connection::open(&path).unwrap();
        let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        (
            q("PRAGMA user_version"),
            q("PRAGMA auto_vacuum"),
            q("SELECT count(*) FROM sqlite_schema WHERE name IN ('results_expiry', 'refused')"),
        )
    };
    assert_eq!(state(), (SCHEMA_VERSION, 2, 1));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA auto_vacuum = NONE; VACUUM; DROP TABLE refused; PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    assert_eq!(state(), (5, 0, 0));
    let store = open(&dir, "a.db");
    assert_eq!(all_windows(&store, MIN).await, before);
    drop(store);
    assert_eq!(state(), (SCHEMA_VERSION, 2, 1));
}

/// The primary key of `results`, column by column.
fn results_key(path: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c
        .prepare("SELECT name FROM pragma_table_info('results') WHERE pk > 0 ORDER BY pk")
        .unwrap();
    let names = stmt.query_map([], |r| r.get(0)).unwrap();
    names.collect::<Result<_, _>>().unwrap()
}

/// A database of version 8 (results clustered by series) is migrated to the
/// time-first layout of version 9 at open: every row kept with its
/// revision and change number, and each row's span is its start divided by
/// 16 windows of its width; then to the change feed's log of version 10,
/// built from the rows in change order: the feed reads the same, and the
/// `(width, changed)` index is gone.
#[tokio::test]
async fn a_version_8_database_is_clustered_time_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let (batches, truth) = workload(2, 10);
    let store = open(&dir, "a.db");
    store.apply(&batches).await.unwrap();
    let before = all_windows(&store, MIN).await;
    let feed = |store: SqliteStore| async move {
        let mut rows = Vec::new();
        for width in [MIN, HOUR, 24 * HOUR] {
            let width = Width::new(width).unwrap();
            for c in store.changed_since(width, 0, 100_000).await.unwrap() {
                let w = c.stored;
                rows.push((c.change, c.series, w.window.start(), w.revision, w.summary));
            }
        }
        rows
    };
    let changes = feed(store).await;
    assert_eq!(results_key(&path), ["width", "span", "series", "start"]);
    {
        // Version 8's layout, rows and all, as that build left it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE old (series INTEGER NOT NULL REFERENCES series(id), width INTEGER NOT NULL,
                 start INTEGER NOT NULL, revision INTEGER NOT NULL, summary BLOB NOT NULL,
                 changed INTEGER NOT NULL, PRIMARY KEY (series, width, start)) WITHOUT ROWID;
             INSERT INTO old SELECT series, width, start, revision, summary, changed FROM results;
             DROP TABLE results;
             ALTER TABLE old RENAME TO results;
             CREATE INDEX results_changed ON results (width, changed);
             CREATE INDEX results_expiry ON results (width, start);
             PRAGMA user_version = 8;",
        )
        .unwrap();
    }
    assert_eq!(results_key(&path), ["series", "width", "start"]);
    let store = open(&dir, "a.db");
    let after = all_windows(&store, MIN).await;
    assert_eq!(after, before);
    assert_judged(&store, &truth, MIN).await;
    assert_eq!(feed(store).await, changes);
    assert_eq!(results_key(&path), ["width", "span", "series", "start"]);
    let c = rusqlite::Connection::open(&path).unwrap();
    let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(q("PRAGMA user_version"), SCHEMA_VERSION);
    assert_eq!(
        q("SELECT count(*) FROM results WHERE span != start / (width * 16)"),
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM sqlite_schema WHERE name IN ('results_expiry', 'results_changed')"),
        0
    );
    assert_eq!(
        q("SELECT sum(keys) FROM feed"),
        i64::try_from(changes.len()).unwrap()
    );
}

/// A partial of `device` at `width` starting at `start`, of `readings`.
fn partial_of(device: &str, width: i64, start: i64, readings: &[(i64, i64)]) -> Partial {
    Partial {
        series: store_common::key(device),
        window: Window::new(start, Width::new(width).unwrap()).unwrap(),
        summary: summary_of(readings),
    }
}

/// Agents' partials of several widths — one minute, five minutes (finer
/// than every roll-up) and one hour (a roll-up width: an agent whose
/// outbox coarsened) — in one group, then more with the cache warm, then
/// more after a reopen (cache cold, rows read back): every stored window
/// of every width agrees with the oracle on the raw readings inside it,
/// whichever path wrote it (the agents' windows are written while the
/// roll-ups are computed beside them: 600 of them a group, past the store's
/// threshold for doing so).
#[tokio::test]
async fn partials_of_every_width_and_their_roll_ups_add_up_across_groups() {
    let dir = tempfile::tempdir().unwrap();
    const FIVE: i64 = 5 * MIN;
    // Every reading by (device, width of the partial, window start).
    let mut raw: BTreeMap<(String, i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
    let mut group = |agent: &str, seq: u64, round: i64| {
        let mut partials = Vec::new();
        for (d, device) in ["dev-a", "dev-b"].iter().enumerate() {
            for (width, count) in [(MIN, 300), (FIVE, 3), (HOUR, 1)] {
                for i in 0..count {
                    let start = T0 + i * width + (d as i64) * 2 * HOUR * (width / HOUR);
                    let readings: Vec<(i64, i64)> = (0..3)
                        .map(|j| (start + j * 1_000 + round, 20_000 + round * 7 + j * 11 + i))
                        .collect();
                    raw.entry((device.to_string(), width, start))
                        .or_default()
                        .extend(&readings);
                    partials.push(partial_of(device, width, start, &readings));
                }
            }
        }
        Batch::new(agent, seq, T0, partials)
    };
    let (first, second) = (group("agent-0", 0, 0), group("agent-1", 0, 1));
    let third = group("agent-2", 0, 2);
    {
        let store = open(&dir, "a.db");
        store.apply(&[first]).await.unwrap();
        store.apply(&[second]).await.unwrap();
    }
    let store = open(&dir, "a.db");
    store.apply(&[third]).await.unwrap();

    // The judge: the oracle, on the raw readings of each width's windows,
    // a partial's readings counting in every window that contains it.
    for width in [MIN, FIVE, HOUR, 24 * HOUR] {
        let mut want = Truth::new();
        for ((device, w, start), readings) in &raw {
            let at_own_width = *w == width;
            let rolled_up = [HOUR, 24 * HOUR].contains(&width) && *w < width;
            if at_own_width || rolled_up {
                want.entry((device.clone(), start.div_euclid(width) * width))
                    .or_default()
                    .extend(readings);
            }
        }
        assert_judged(&store, &want, width).await;
    }
}

/// Rows the store does not hold in memory are inserted sixteen to a
/// statement, and a stored row among them is folded into instead: groups
/// large enough for that path (over 512 one-minute rows) where each run of
/// sixteen mixes stored and new rows, then cached and uncached ones, then
/// (after a reopen) only stored ones, end with every window and roll-up
/// equal to the oracle on the raw readings, and the feed giving each row
/// at its last change.
#[tokio::test]
async fn rows_inserted_many_at_a_time_fold_into_the_stored_ones_among_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let mut raw: BTreeMap<(String, i64), Vec<(i64, i64)>> = BTreeMap::new();
    // Agent `agent`'s partials of 40 devices over the minutes `minutes`
    // (32 minutes: two spans of the table's clustering).
    let mut group = |agent: u64, minutes: &dyn Fn(i64) -> bool| {
        let mut partials = Vec::new();
        for d in 0..40 {
            let device = format!("dev-{d:02}");
            for m in (0..32).filter(|&m| minutes(m)) {
                let start = T0 + m * MIN;
                let readings: Vec<(i64, i64)> = (0..2)
                    .map(|j| {
                        let v = 20_000 + (agent as i64) * 1_000 + d * 31 + m * 7 + j;
                        (start + j * 1_000 + agent as i64, v)
                    })
                    .collect();
                raw.entry((device.clone(), start))
                    .or_default()
                    .extend(&readings);
                partials.push(partial_of(&device, MIN, start, &readings));
            }
        }
        Batch::new(format!("agent-{agent}"), 0, T0, partials)
    };
    let even = group(0, &|m| m % 2 == 0);
    let all = [
        group(1, &|_| true),
        group(2, &|_| true),
        group(3, &|_| true),
    ];
    {
        let store = open(&dir, "a.db");
        store.apply(&[even]).await.unwrap();
        // Half of every run stored, half new.
        store.apply(&[all[0].clone()]).await.unwrap();
        // Now the even minutes are in memory and the odd ones are not.
        store.apply(&[all[1].clone()]).await.unwrap();
    }
    // A cold memory: every row is stored and none is held.
    let store = open(&dir, "a.db");
    store.apply(&[all[2].clone()]).await.unwrap();
    assert_eq!(
        sql_int(&path, "SELECT count(*) FROM results WHERE width = 60000"),
        40 * 32
    );
    for width in [MIN, HOUR, 24 * HOUR] {
        let mut want = Truth::new();
        for ((device, start), readings) in &raw {
            want.entry((device.clone(), start.div_euclid(width) * width))
                .or_default()
                .extend(readings);
        }
        assert_judged(&store, &want, width).await;
    }
    feed_matches_the_table(&store, &path).await;
    assert_eq!(
        sql_int(&path, "SELECT sum(live) FROM feed"),
        sql_int(&path, "SELECT count(*) FROM results")
    );
}
