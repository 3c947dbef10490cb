//! The SQLite store's guarantees: batches apply exactly once (also after a
//! reopen), stored results do not depend on arrival order or grouping, each
//! stored window equals the summary of its readings, and roll-ups equal the
//! merge of the windows inside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::{self, Applied, Lease, Store};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, Summary, Width, Window};

mod store_common;

use store_common::{
    check_change_feed, check_cursors, check_leases, check_parking, check_progress,
    check_windows_of, summary_of, Truth, HOUR, MIN, T0,
};

/// The SQLite tests' workload: `agents` agents sending `batches` batches of 4
/// partials for 3 devices over 90 one-minute windows.
fn workload(agents: u64, batches: u64) -> (Vec<Batch>, Truth) {
    store_common::workload(12345, agents, batches, 4, 3, 90)
}

fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(&dir.path().join(name), &[HOUR, 24 * HOUR]).unwrap()
}

fn all_windows(store: &SqliteStore, width: i64) -> BTreeMap<(String, i64), Summary> {
    store::all_windows(store, Width::new(width).unwrap())
        .unwrap()
        .into_iter()
        .map(|((k, start), w)| ((k.device().to_string(), start), w.summary))
        .collect()
}

#[test]
fn each_window_equals_the_summary_of_its_readings() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, truth) = workload(3, 20);
    let applied = store.apply(&batches).unwrap();
    assert!(applied.iter().all(|a| *a == Applied::New));
    let stored = all_windows(&store, MIN);
    assert_eq!(stored.len(), truth.len());
    for ((device, start), readings) in &truth {
        assert_eq!(
            stored[&(device.clone(), *start)],
            summary_of(readings),
            "{device} {start}"
        );
    }
    check_windows_of(&store);
}

#[test]
fn redelivered_batches_change_nothing_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    let before = {
        let mut store = open(&dir, "a.db");
        store.apply(&batches[..12]).unwrap();
        // The same batch twice in one group: applied once.
        let again = store
            .apply(&[batches[12].clone(), batches[12].clone()])
            .unwrap();
        assert_eq!(again, vec![Applied::New, Applied::Duplicate]);
        all_windows(&store, MIN)
    };
    let mut store = open(&dir, "a.db");
    let replay = store.apply(&batches[..13]).unwrap();
    assert!(replay.iter().all(|a| *a == Applied::Duplicate));
    assert_eq!(all_windows(&store, MIN), before);
    assert_eq!(all_windows(&store, HOUR), {
        let fresh_dir = tempfile::tempdir().unwrap();
        let mut fresh = open(&fresh_dir, "b.db");
        fresh.apply(&batches[..13]).unwrap();
        all_windows(&fresh, HOUR)
    });
}

#[test]
fn results_do_not_depend_on_order_or_grouping() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(3, 15);
    let mut one = open(&dir, "one.db");
    one.apply(&batches).unwrap();
    let mut other = open(&dir, "other.db");
    let mut reversed = batches.clone();
    reversed.reverse();
    for chunk in reversed.chunks(7) {
        other.apply(chunk).unwrap();
    }
    for width in [MIN, HOUR, 24 * HOUR] {
        assert_eq!(
            all_windows(&one, width),
            all_windows(&other, width),
            "width {width}"
        );
    }
    assert_eq!(one.watermarks().unwrap(), other.watermarks().unwrap());
    assert_eq!(
        one.watermarks().unwrap()[0],
        ("agent-0".to_string(), T0 + 14 * MIN)
    );
}

#[test]
fn rollups_equal_the_merge_of_their_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(2, 20);
    store.apply(&batches).unwrap();
    let minutes = all_windows(&store, MIN);
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
        assert_eq!(all_windows(&store, width), expected, "width {width}");
    }
}

#[test]
fn later_merges_bump_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(1, 1);
    let p = &batches[0].partials[0];
    let mk = |seq| Batch::new("agent-x", seq, T0, vec![p.clone()]);
    store.apply(&[mk(1)]).unwrap();
    store.apply(&[mk(2)]).unwrap();
    store.apply(&[mk(2)]).unwrap(); // duplicate: no bump
    let w = store
        .windows(
            &p.series,
            p.window.width(),
            p.window.start(),
            p.window.end(),
        )
        .unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].revision, 1);
    assert_eq!(w[0].summary.count(), 2 * p.summary.count());
}

#[test]
fn a_quantum_mismatch_fails_the_whole_group_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(1, 2);
    let mut bad = batches[1].clone();
    let mut other = Summary::new(Quantum::new(-1).unwrap());
    other.insert(bad.partials[0].window.start(), 5).unwrap();
    bad.partials.push(Partial {
        summary: other,
        ..bad.partials[0].clone()
    });
    assert!(store.apply(&[batches[0].clone(), bad]).is_err());
    assert!(store.series().unwrap().is_empty());
    // Nothing was recorded as applied either: the good batch still applies.
    assert_eq!(
        store.apply(&[batches[0].clone()]).unwrap(),
        vec![Applied::New]
    );
}

#[test]
fn progress_lists_the_agents_of_each_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(1, 1);
    check_progress(&mut store, &batches[0]);
}

#[test]
fn the_change_feed_returns_each_row_at_its_latest_write_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    let (batches, _) = workload(2, 10);
    check_change_feed(&mut store, &batches);
}

#[test]
fn cursors_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, "a.db");
    check_cursors(&mut store);
    drop(store);
    let store = open(&dir, "a.db");
    assert_eq!(store.cursor("check-a").unwrap(), 43);
    assert_eq!(store.cursor("check-b").unwrap(), 7);
}

#[test]
fn parked_rows_come_back_as_stored_until_unparked() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    check_parking(&mut open(&dir, "a.db"), &batches);
}

#[test]
fn leases_have_one_holder_until_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    check_leases(&mut open(&dir, "a.db"));
    // Two handles on one file (two processes) see the same leases.
    let (mut one, mut two) = (open(&dir, "b.db"), open(&dir, "b.db"));
    let long = std::time::Duration::from_secs(60);
    assert_eq!(one.lease("sink:x", "one", long).unwrap(), Lease::Ours);
    assert_eq!(
        two.lease("sink:x", "two", long).unwrap(),
        Lease::Theirs("one".into())
    );
}

#[test]
fn a_database_from_a_newer_collector_is_refused() {
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
#[test]
fn a_database_of_tick_indexed_sketches_is_refused_unless_empty() {
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
    assert_eq!(
        user_version(None),
        tributary_collector::store::sqlite::SCHEMA_VERSION
    );
    let (batches, _) = workload(1, 1);
    open(&dir, "a.db").apply(&batches).unwrap();
    user_version(Some(3));
    let err = SqliteStore::open(&path, &[HOUR]).unwrap_err();
    assert!(
        matches!(err, store::StoreError::TickIndexed { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tick counts"), "{err}");
}

/// The store keeps committed rows in memory to merge into; the database
/// stays the truth. Two stores writing the same file in turn (each one's
/// memory made stale by the other) must still end with every window and
/// roll-up exact.
#[test]
fn two_writers_on_one_file_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, truth) = workload(3, 30);
    let mut a = open(&dir, "shared.db");
    let mut b = open(&dir, "shared.db");
    let mut single = open(&dir, "single.db");
    for (i, chunk) in batches.chunks(4).enumerate() {
        if i % 2 == 0 {
            a.apply(chunk)
        } else {
            b.apply(chunk)
        }
        .unwrap();
        single.apply(chunk).unwrap();
    }
    let stored = all_windows(&a, MIN);
    assert_eq!(stored.len(), truth.len());
    for ((device, start), readings) in &truth {
        assert_eq!(stored[&(device.clone(), *start)], summary_of(readings));
    }
    for width in [MIN, HOUR, 24 * HOUR] {
        assert_eq!(all_windows(&a, width), all_windows(&single, width));
        assert_eq!(all_windows(&b, width), all_windows(&single, width));
    }
}

/// A transaction that fails after it has merged into rows the store holds
/// in memory leaves neither the database nor that memory changed: later
/// merges build on the committed state only.
#[test]
fn a_failed_transaction_leaves_no_stale_merge_behind() {
    let dir = tempfile::tempdir().unwrap();
    // No roll-ups, so the failure happens when merging into stored rows.
    let mut store = SqliteStore::open(&dir.path().join("a.db"), &[]).unwrap();
    let (batches, _) = workload(1, 1);
    let first = &batches[0];
    store.apply(std::slice::from_ref(first)).unwrap();
    // A group that merges the same partials again (into the rows the store
    // now holds in memory) plus one whose quantum differs from its stored
    // window's: the group fails as a whole.
    let again = Batch::new("agent-y", 1, T0, first.partials.clone());
    let mut clash = first.partials[1].clone();
    clash.summary = Summary::new(Quantum::new(-1).unwrap());
    clash.summary.insert(clash.window.start(), 5).unwrap();
    let bad = Batch::new("agent-z", 1, T0, vec![clash]);
    assert!(store.apply(&[again.clone(), bad]).is_err());
    // Applying the good batch alone merges it exactly once.
    assert_eq!(store.apply(&[again]).unwrap(), vec![Applied::New]);
    let mut single = SqliteStore::open(&dir.path().join("b.db"), &[]).unwrap();
    for p in &first.partials {
        let stored = store
            .windows(
                &p.series,
                p.window.width(),
                p.window.start(),
                p.window.end(),
            )
            .unwrap();
        let mut expected = p.summary.clone();
        expected.merge(&p.summary).unwrap();
        assert_eq!(stored[0].summary, expected, "{}", p.series);
        assert_eq!(stored[0].revision, 1);
    }
    // And what a fresh store computes from the same committed batches agrees.
    single
        .apply(&[
            first.clone(),
            Batch::new("agent-y", 1, T0, first.partials.clone()),
        ])
        .unwrap();
    assert_eq!(all_windows(&store, MIN), all_windows(&single, MIN));
}

/// The query handle sees every commit of the writer, and cannot write.
#[test]
fn the_reader_sees_commits_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(2, 10);
    let mut writer = open(&dir, "a.db");
    writer.apply(&batches[..5]).unwrap();
    let mut reader = writer.reader().unwrap();
    assert_eq!(all_windows(&reader, MIN), all_windows(&writer, MIN));
    writer.apply(&batches[5..]).unwrap();
    assert_eq!(all_windows(&reader, HOUR), all_windows(&writer, HOUR));
    assert!(reader.apply(&batches[..1]).is_err(), "the reader wrote");
    assert!(reader.set_cursor("sink", 3).is_err(), "the reader wrote");
    // Nothing the reader tried changed the data.
    assert_eq!(
        writer.apply(&batches[..1]).unwrap(),
        vec![Applied::Duplicate]
    );
    assert_eq!(writer.cursor("sink").unwrap(), 0);
}
