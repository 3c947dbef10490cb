//! Tests of the outbox's levels, budget and floor. The judge is arithmetic on
//! the readings the tests put in (`summary(n)` holds the values
//! `1000·i + 7` for `i < n`), never the pipeline's own summaries.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tributary_core::batch::{Batch, Encoding};

use crate::store::tests::{commit, emit, open, setup, summary};
use crate::store::{codec, Commit, Store};

/// The ladder of the tests: base windows of 1 s, levels of 4 s and 16 s.
const LADDER: [i64; 2] = [4000, 16000];

/// (count, Σticks) of `summary(n)`, by arithmetic.
fn truth(n: i64) -> (u64, i128) {
    (n as u64, i128::from(1000 * n * (n - 1) / 2 + 7 * n))
}

/// The outbox rows: (series, start, width, readings, bytes).
fn rows(st: &Store) -> Vec<(i64, i64, i64, i64, i64)> {
    let mut q = st
        .conn
        .prepare("SELECT series, start, width, readings, bytes FROM outbox ORDER BY start, id")
        .unwrap();
    q.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every level holds at most one row per (series, window), each aligned;
/// the byte counts kept in memory match the table.
fn assert_levels(st: &Store) {
    let rows = rows(st);
    let mut seen = BTreeSet::new();
    for &(series, start, width, _, _) in &rows {
        assert_eq!(start.rem_euclid(width), 0, "aligned: {start} at {width}");
        if LADDER.contains(&width) {
            assert!(
                seen.insert((series, start, width)),
                "a second row of series {series} at {start} width {width}"
            );
        }
    }
    let mut per_width: BTreeMap<i64, u64> = BTreeMap::new();
    for r in &rows {
        *per_width.entry(r.2).or_default() += r.4 as u64;
    }
    let kept: BTreeMap<i64, u64> = st.row_bytes().iter().filter(|w| w.1 > 0).collect();
    assert_eq!(kept, per_width, "bytes per width as kept and as stored");
}

/// Forms batches of everything (limits lifted), confirms them and returns
/// per series (count, Σticks), the widths seen and the dropped readings
/// the batches reported.
fn drain(st: &mut Store) -> (BTreeMap<String, (u64, i128)>, BTreeSet<i64>, u64) {
    st.set_limits(crate::store::tests::limits(u64::MAX));
    let mut per_series: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    let mut widths = BTreeSet::new();
    let mut dropped = 0;
    loop {
        let b = st.form_batches("gw", 0, 100, Encoding::Json).unwrap();
        if b.is_empty() {
            break;
        }
        for batch in &b {
            let d = Batch::decode(&batch.payload).unwrap();
            dropped += d.dropped_readings;
            for p in &d.partials {
                let e = per_series.entry(p.series.metric().to_string()).or_default();
                e.0 += p.summary.count();
                e.1 += p.summary.sum_ticks();
                widths.insert(p.window.width().ms());
            }
        }
        st.confirm(&b.iter().map(|b| b.seq).collect::<Vec<_>>())
            .unwrap();
    }
    (per_series, widths, dropped)
}

#[test]
fn each_level_holds_one_row_per_series_and_window_and_counts_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 3, 1000);
    // The size of everything at the base width, to set a limit below it.
    let all: Vec<_> = (0..3u32)
        .flat_map(|s| (0..64).map(move |i| emit(s, i * 1000, 3)))
        .collect();
    let full: u64 = all
        .iter()
        .map(|e| codec::summary(&e.summary).len() as u64)
        .sum();
    let mut coarsened = 0;
    for chunk in all.chunks(24) {
        let mut c = Commit::default();
        c.flush.emitted = chunk.to_vec();
        let out = commit(&mut st, &c, full / 3);
        assert_eq!(out.dropped_readings, 0);
        coarsened += out.coarsened;
        assert!(st.outbox_bytes() <= full / 3);
        assert_levels(&st);
    }
    assert!(coarsened > 0);
    let (got, widths, dropped) = drain(&mut st);
    assert_eq!(dropped, 0);
    let per_series = (truth(3).0 * 64, truth(3).1 * 64);
    for m in ["m0", "m1", "m2"] {
        assert_eq!(got[m], per_series, "{m}");
    }
    assert!(widths.iter().any(|&w| w > 1000), "{widths:?}");
}

#[test]
fn partials_merge_into_the_floor_before_the_oldest_floor_windows_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 2, 1000);
    let mut c = Commit::default();
    for s in 0..2u32 {
        for i in 0..64 {
            c.flush.emitted.push(emit(s, i * 1000, 3));
        }
    }
    commit(&mut st, &c, u64::MAX);
    // A floor row holds 16 windows of 3 readings; every one is alike.
    let mut floor = summary(3);
    for _ in 1..16 {
        floor.merge(&summary(3)).unwrap();
    }
    let row = codec::summary(&floor).len() as u64;
    // Room for five of the eight floor rows (2 series × 4 windows).
    let limit = 5 * row + row / 2;
    let out = commit(&mut st, &Commit::default(), limit);
    assert_levels(&st);
    let left = rows(&st);
    assert!(
        left.iter().all(|r| r.2 == 16000),
        "all at the floor: {left:?}"
    );
    assert_eq!(out.dropped_readings, 3 * 48, "three floor rows dropped");
    let starts: Vec<i64> = left.iter().map(|r| r.1).collect();
    assert_eq!(
        starts,
        [16000, 32000, 32000, 48000, 48000],
        "the oldest windows went first"
    );
    // New partials of a window already at the floor merge into its row.
    let mut c = Commit::default();
    for s in 0..2u32 {
        for i in 48..52 {
            c.flush.emitted.push(emit(s, i * 1000, 3));
        }
    }
    let out = commit(&mut st, &c, limit);
    assert_eq!(out.dropped_readings, 0);
    assert_levels(&st);
    let after = rows(&st);
    assert_eq!(after.len(), 5);
    let at_48: Vec<i64> = after.iter().filter(|r| r.1 == 48000).map(|r| r.3).collect();
    assert_eq!(at_48, [48 + 12, 48 + 12]);
    assert_eq!(st.dropped_total(), 3 * 48);
}

#[test]
fn formed_batches_keep_to_their_share_so_new_partials_are_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 4, 200);
    // Room for the 16 floor rows of what comes (~550 bytes each: the
    // sketches span eight octaves), not for all of it as JSON batches.
    let limit = 16_000;
    let window = |from: i64| {
        let mut c = Commit::default();
        for s in 0..4u32 {
            for i in from..from + 32 {
                c.flush.emitted.push(emit(s, i * 1000, 3));
            }
        }
        c
    };
    let out = commit(&mut st, &window(0), limit);
    assert_eq!(out.dropped_readings, 0);
    // The uplink is back: as many batches as the in-flight limit allows.
    let b = st.form_batches("gw", 0, 16, Encoding::Json).unwrap();
    assert!(!b.is_empty());
    let formed: u64 = b.iter().map(|b| b.payload.len() as u64).sum();
    assert_eq!(formed, st.batch_bytes());
    assert!(
        formed <= limit / 4,
        "{formed} bytes of batches; their share is {}",
        limit / 4
    );
    // The partials that keep coming are coarsened, not dropped.
    let out = commit(&mut st, &window(32), limit);
    assert_eq!(out.dropped_readings, 0);
    assert!(st.outbox_bytes() <= limit);
    st.confirm(&b.iter().map(|b| b.seq).collect::<Vec<_>>())
        .unwrap();
    let sent: u64 = b.iter().map(|b| b.readings).sum();
    let (got, _, _) = drain(&mut st);
    let kept: u64 = got.values().map(|v| v.0).sum();
    assert_eq!(sent + kept, 2 * 4 * 32 * 3);
}

#[test]
fn dropped_readings_are_durable_and_reported_in_exactly_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = setup(&dir, 1, 2);
    let mut c = Commit::default();
    for i in 0..64 {
        c.flush.emitted.push(emit(0, i * 1000, 3));
    }
    let out = commit(&mut st, &c, 200);
    let first = out.dropped_readings;
    assert!(first > 0);
    drop(st);
    let mut st = open(&dir, 2);
    assert_eq!(st.dropped_total(), first, "durable across a restart");
    let (_, _, reported) = drain(&mut st);
    assert_eq!(reported, first, "reported once");
    let (_, _, again) = drain(&mut st);
    assert_eq!(again, 0, "and only once");

    // Batches in flight take all the room: new partials are dropped; their
    // count rides in a batch of no partials once nothing is in flight.
    let mut c = Commit::default();
    for i in 64..72 {
        c.flush.emitted.push(emit(0, i * 1000, 3));
    }
    commit(&mut st, &c, u64::MAX);
    let held = st.form_batches("gw", 0, 10, Encoding::Json).unwrap();
    let mut c = Commit::default();
    c.flush.emitted.push(emit(0, 72_000, 5));
    let limit = st.batch_bytes();
    let out = commit(&mut st, &c, limit);
    assert_eq!(out.dropped_readings, 5);
    assert!(st
        .form_batches("gw", 0, 10, Encoding::Json)
        .unwrap()
        .is_empty());
    st.confirm(&held.iter().map(|b| b.seq).collect::<Vec<_>>())
        .unwrap();
    let b = st.form_batches("gw", 0, 10, Encoding::Json).unwrap();
    assert_eq!(b.len(), 1);
    let d = Batch::decode(&b[0].payload).unwrap();
    assert!(d.partials.is_empty());
    assert_eq!(d.dropped_readings, 5);
    assert_eq!(st.dropped_total(), first + 5);
}

/// What a model run did, by arithmetic on what went in.
#[derive(Debug, Clone)]
enum Op {
    /// Partials of `series` for base windows `from..from + n`, `k` readings each.
    Emit {
        series: u32,
        from: i64,
        n: i64,
        k: i64,
    },
    /// Commit nothing under a new limit.
    Limit(u64),
    /// Form up to this many batches.
    Form(usize),
    /// Confirm every formed batch.
    Confirm,
    /// Close and open the store.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u32, 0..80i64, 1..12i64, 1..6i64)
            .prop_map(|(series, from, n, k)| Op::Emit { series, from, n, k }),
        2 => (400..6000u64).prop_map(Op::Limit),
        2 => (1..4usize).prop_map(Op::Form),
        1 => Just(Op::Confirm),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever happens, readings are conserved — in rows, in batches, or
    /// counted as dropped — each level keeps one row per (series, window),
    /// the rows fit their budget after every commit, and every dropped
    /// reading is reported in exactly one batch.
    #[test]
    fn the_outbox_conserves_every_reading(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut st = setup(&dir, 3, 5);
        let mut limit = 3000u64;
        let mut inserted = (0u64, 0i128);
        let mut in_flight = Vec::new();
        let (mut batched, mut reported) = ((0u64, 0i128), 0u64);
        for op in ops {
            match op {
                Op::Emit { series, from, n, k } => {
                    let mut c = Commit::default();
                    for i in from..from + n {
                        c.flush.emitted.push(emit(series, i * 1000, k));
                        inserted.0 += truth(k).0;
                        inserted.1 += truth(k).1;
                    }
                    commit(&mut st, &c, limit);
                    prop_assert!(st.row_bytes().total() <= limit.saturating_sub(st.batch_bytes()));
                }
                Op::Limit(l) => {
                    limit = l;
                    commit(&mut st, &Commit::default(), limit);
                    prop_assert!(st.row_bytes().total() <= limit.saturating_sub(st.batch_bytes()));
                }
                Op::Form(n) => {
                    for b in st.form_batches("gw", 0, n, Encoding::Binary).unwrap() {
                        let d = Batch::decode(&b.payload).unwrap();
                        reported += d.dropped_readings;
                        for p in &d.partials {
                            batched.0 += p.summary.count();
                            batched.1 += p.summary.sum_ticks();
                        }
                        in_flight.push(b.seq);
                    }
                }
                Op::Confirm => {
                    st.confirm(&in_flight).unwrap();
                    in_flight.clear();
                }
                Op::Reopen => {
                    drop(st);
                    st = open(&dir, 5);
                    st.set_limits(crate::store::tests::limits(limit));
                }
            }
            assert_levels(&st);
            let in_rows = rows(&st);
            let row_readings: i64 = in_rows.iter().map(|r| r.3).sum();
            prop_assert_eq!(
                row_readings as u64 + batched.0 + st.dropped_total(),
                inserted.0
            );
            let unreported: i64 = st
                .conn
                .query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| r.get(0))
                .unwrap();
            prop_assert_eq!(reported + unreported as u64, st.dropped_total());
        }
        // With nothing dropped, the sums are exact too.
        if st.dropped_total() == 0 {
            st.confirm(&in_flight).unwrap();
            let (got, _, _) = drain(&mut st);
            let rest: i128 = got.values().map(|v| v.1).sum();
            prop_assert_eq!(batched.1 + rest, inserted.1);
        }
    }
}
