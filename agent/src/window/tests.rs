//! Tests of the windowing state machine.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

use super::*;

fn key(m: &str) -> SeriesKey {
    SeriesKey::new(m, "dev", BTreeMap::new()).unwrap()
}

fn w(ms: i64) -> Width {
    Width::new(ms).unwrap()
}

/// `has_due` tells the engine a flush would close a window now (so it can
/// commit early), exactly when the watermark has passed end + lateness.
#[test]
fn an_input_that_makes_a_window_due_is_flagged_until_the_flush() {
    let mut win = Windower::new(w(1000), 200, 1_000_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    win.insert(s, 100, 1, 0).unwrap();
    win.insert(s, 1100, 2, 0).unwrap();
    assert!(!win.has_due(), "watermark 1100 < 1000 + 200");
    win.insert(s, 1200, 3, 0).unwrap();
    assert!(win.has_due());
    let f = win.flush(0);
    assert_eq!(f.emitted.len(), 1);
    assert!(!win.has_due(), "the flush closed it");
    // A device summary past the next window's end flags it too.
    let mut sum = Summary::new(Quantum::DEFAULT);
    sum.insert(2500, 4).unwrap();
    let window = Window::new(2000, w(1000)).unwrap();
    win.merge(s, window, &sum, 0).unwrap();
    assert!(win.has_due(), "window 1000 ends at 2000 + 200 <= 2500");
    assert_eq!(win.flush(0).emitted.len(), 1);
    assert!(!win.has_due());
}

#[test]
fn closes_by_watermark_plus_lateness() {
    let mut win = Windower::new(w(1000), 200, 1_000_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    win.insert(s, 100, 1, 0).unwrap();
    win.insert(s, 900, 2, 0).unwrap();
    win.insert(s, 1100, 3, 0).unwrap();
    let f = win.flush(0);
    assert!(f.emitted.is_empty(), "watermark 1100 < 1000 + 200");
    assert_eq!(f.checkpoints.len(), 2);
    win.insert(s, 1200, 4, 0).unwrap();
    let f = win.flush(0);
    assert_eq!(f.emitted.len(), 1);
    assert_eq!(f.emitted[0].window.start(), 0);
    assert_eq!(f.emitted[0].summary.count(), 2);
    assert!(!f.emitted[0].revision);
    assert_eq!(f.deleted, vec![(s, 0)]);
    assert_eq!(f.closed_before, vec![(s, 1000)]);
    assert_eq!(f.checkpoints.len(), 1, "only the changed window 1000");
}

#[test]
fn late_data_becomes_a_revision_delta() {
    let mut win = Windower::new(w(1000), 0, 1_000_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    win.insert(s, 10, 1, 0).unwrap();
    win.insert(s, 2000, 1, 0).unwrap();
    let f = win.flush(0);
    assert_eq!(f.emitted.len(), 1);
    win.insert(s, 20, 5, 0).unwrap();
    win.insert(s, 30, 6, 0).unwrap();
    let f = win.flush(0);
    assert_eq!(f.emitted.len(), 1);
    let e = &f.emitted[0];
    assert!(e.revision);
    assert_eq!(e.window.start(), 0);
    assert_eq!(e.summary.count(), 2, "only the late readings");
    assert_eq!(e.summary.sum_ticks(), 11);
    assert!(f.checkpoints.is_empty(), "late data is not checkpointed");
}

#[test]
fn idle_sources_close_everything() {
    let mut win = Windower::new(w(1000), 0, 5_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    win.insert(s, 10_500, 1, 100).unwrap();
    assert!(win.flush(4_000).emitted.is_empty());
    let f = win.flush(5_100);
    assert_eq!(f.emitted.len(), 1);
    assert_eq!(f.emitted[0].window.start(), 10_000);
}

#[test]
fn merges_device_summaries_into_the_agent_window() {
    let mut win = Windower::new(w(60_000), 0, 1_000_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    let mut a = Summary::new(Quantum::DEFAULT);
    a.insert(61_000, 5).unwrap();
    let mut b = Summary::new(Quantum::DEFAULT);
    b.insert(75_000, 7).unwrap();
    win.merge(s, Window::new(60_000, w(10_000)).unwrap(), &a, 0)
        .unwrap();
    win.merge(s, Window::new(70_000, w(10_000)).unwrap(), &b, 0)
        .unwrap();
    win.insert(s, 200_000, 1, 0).unwrap();
    let f = win.flush(0);
    let e = f
        .emitted
        .iter()
        .find(|e| e.window.start() == 60_000)
        .unwrap();
    assert_eq!(e.summary.count(), 2);
    assert_eq!(e.summary.sum_ticks(), 12);
}

/// Event times at the ends of their range are refused, never overflow, and
/// the readings beside them still count.
#[test]
fn extreme_event_times_are_refused() {
    let mut win = Windower::new(w(1000), 0, 1_000_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    let done = win.insert_many(s, &[(i64::MIN, 1), (5_500, 2), (i64::MAX, 3)], 0);
    assert_eq!((done.accepted, done.invalid), (1, 2));
    assert!(done.first_invalid.is_some());
    // No window holds a time within a width of i64::MAX, so no device
    // summary can name one.
    assert!(Window::checked_containing(i64::MAX - 1, w(1000)).is_err());
    let f = win.flush(1_000_000);
    assert_eq!(f.emitted.len(), 1, "the idle source's one window");
    assert_eq!(f.emitted[0].summary.count(), 1);
}

#[test]
fn restored_state_continues_where_it_left() {
    let mut win = Windower::new(w(1000), 0, 1_000_000);
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    win.insert(s, 1500, 3, 0).unwrap();
    let f = win.flush(0);
    let (_, start, sum) = f.checkpoints[0].clone();
    // A new windower from the checkpoint and a closed_before mark.
    let mut win2 = Windower::new(w(1000), 0, 1_000_000);
    let src2 = win2.add_source(0);
    let s2 = win2.add_series(key("t"), Quantum::DEFAULT, src2, 1000);
    win2.restore_window(s2, start, sum);
    win2.restore_watermark(src2, 1500);
    win2.insert(s2, 1600, 4, 0).unwrap();
    win2.insert(s2, 500, 1, 0).unwrap(); // before closed_before: a revision
    win2.insert(s2, 3000, 1, 0).unwrap();
    let f = win2.flush(0);
    let main = f.emitted.iter().find(|e| !e.revision).unwrap();
    assert_eq!(main.summary.count(), 2);
    assert_eq!(main.summary.sum_ticks(), 7);
    assert!(f
        .emitted
        .iter()
        .any(|e| e.revision && e.window.start() == 0));
}

proptest! {
    /// Whatever the arrival order and flush points, the emitted partials of
    /// each window add up exactly to the readings in it, and every
    /// emitted-or-open reading is accounted for.
    #[test]
    fn emitted_partials_add_up_exactly(
        readings in prop::collection::vec((0u8..3, 0i64..20_000, -1000i64..1000), 1..300),
        flush_every in 1usize..50,
        lateness in 0i64..3000,
    ) {
        let mut win = Windower::new(w(1000), lateness, 1_000_000);
        let src = win.add_source(0);
        let ids: Vec<_> = (0..3).map(|i| win.add_series(key(&format!("m{i}")), Quantum::DEFAULT, src, i64::MIN)).collect();
        let mut truth: HashMap<(u32, i64), (u64, i128)> = HashMap::new();
        let mut got: HashMap<(u32, i64), (u64, i128)> = HashMap::new();
        let collect = |f: Flush, got: &mut HashMap<(u32, i64), (u64, i128)>| {
            for e in f.emitted {
                let g = got.entry((e.series, e.window.start())).or_default();
                g.0 += e.summary.count();
                g.1 += e.summary.sum_ticks();
            }
        };
        for (i, &(s, t, v)) in readings.iter().enumerate() {
            win.insert(ids[s as usize], t, v, 0).unwrap();
            let e = truth.entry((ids[s as usize], t.div_euclid(1000) * 1000)).or_default();
            e.0 += 1;
            e.1 += i128::from(v);
            if i % flush_every == 0 {
                let f = win.flush(0);
                collect(f, &mut got);
            }
        }
        // Going idle closes everything that is left.
        let f = win.flush(10_000_000);
        collect(f, &mut got);
        prop_assert_eq!(win.open_readings(), 0);
        prop_assert_eq!(truth, got);
    }
}

/// Bounds: ±1 s future, 10 s age around a wall clock of 100 s.
fn bounded() -> (Windower, SeriesId, SourceId) {
    let mut win = Windower::new(w(1000), 200, 1_000_000).with_bounds(TimeBounds {
        max_future_ms: 1_000,
        max_age_ms: 10_000,
    });
    let src = win.add_source(0);
    let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
    (win, s, src)
}

const NOW: i64 = 100_000;

/// A reading or summary outside the time bounds is refused by reason and
/// touches no window and no watermark (issue #12: one reading stamped far
/// ahead closed every later window at once).
#[test]
fn out_of_bounds_input_moves_no_watermark() {
    let (mut win, s, src) = bounded();
    assert!(matches!(
        win.insert(s, NOW + 1_001, 1, NOW),
        Err(Refused::Time(TimeRefused::Future { .. }))
    ));
    assert!(matches!(
        win.insert(s, NOW - 10_001, 1, NOW),
        Err(Refused::Time(TimeRefused::Past { .. }))
    ));
    let done = win.insert_many(s, &[(i64::MAX, 1), (i64::MIN, 1), (NOW + 5_000, 1)], NOW);
    assert_eq!(
        (done.accepted, done.future, done.past, done.invalid),
        (0, 2, 1, 0)
    );
    // A device summary ahead of the bounds, empty or not, and one whose
    // window started too long ago.
    let ahead = Window::new(NOW + 2_000, w(1000)).unwrap();
    let mut sum = Summary::new(Quantum::DEFAULT);
    sum.insert(NOW + 2_500, 1).unwrap();
    assert!(win.merge(s, ahead, &sum, NOW).is_err());
    assert!(win
        .merge(s, ahead, &Summary::new(Quantum::DEFAULT), NOW)
        .is_err());
    let old = Window::new(NOW - 20_000, w(1000)).unwrap();
    let mut sum = Summary::new(Quantum::DEFAULT);
    sum.insert(NOW - 19_500, 1).unwrap();
    assert!(matches!(
        win.merge(s, old, &sum, NOW),
        Err(Refused::Time(TimeRefused::Past { .. }))
    ));
    assert_eq!(win.source_watermark(src), None, "no watermark moved");
    let f = win.flush(NOW);
    assert!(f.emitted.is_empty() && f.checkpoints.is_empty(), "{f:?}");
    // Within the bounds: accepted, and the watermark follows.
    win.insert(s, NOW + 1_000, 1, NOW).unwrap();
    win.insert(s, NOW - 10_000, 1, NOW).unwrap();
    assert_eq!(win.source_watermark(src), Some(NOW + 1_000));
}

/// A summary's last reading beyond its window moves the watermark only to
/// the window's end.
#[test]
fn a_summary_moves_the_watermark_at_most_to_its_window_end() {
    let (mut win, s, src) = bounded();
    let window = Window::new(NOW - 1_000, w(1000)).unwrap();
    let mut sum = Summary::new(Quantum::DEFAULT);
    sum.insert(NOW + 900, 1).unwrap(); // claims a time past the window
    win.merge(s, window, &sum, NOW).unwrap();
    assert_eq!(win.source_watermark(src), Some(NOW - 1));
}

proptest! {
    /// Whatever the times (the ends of i64 included) and the clock: no
    /// panic, a reading is accepted exactly when its time lies within the
    /// bounds (judged by i128 arithmetic) and a window can hold it, and the
    /// watermark is the largest accepted time.
    #[test]
    fn any_times_any_clock(
        times in proptest::collection::vec(
            prop_oneof![
                any::<i64>(),
                (0i64..5_000).prop_map(|d| i64::MIN + d),
                (0i64..5_000).prop_map(|d| i64::MAX - d),
                -20_000i64..20_000,
            ],
            1..40,
        ),
        now in prop_oneof![any::<i64>(), -5_000i64..5_000, Just(i64::MAX), Just(i64::MIN)],
    ) {
        let mut win = Windower::new(w(1000), 0, 1_000_000).with_bounds(TimeBounds {
            max_future_ms: 1_000,
            max_age_ms: 10_000,
        });
        let src = win.add_source(0);
        let s = win.add_series(key("t"), Quantum::DEFAULT, src, i64::MIN);
        let points: Vec<(i64, i64)> = times.iter().map(|&t| (t, 1)).collect();
        let done = win.insert_many(s, &points, now);
        let in_bounds = |t: i64| {
            let (t, n) = (i128::from(t), i128::from(now));
            t <= n + 1_000 && t >= n - 10_000
        };
        let holdable = |t: i64| {
            let start = i128::from(t).div_euclid(1000) * 1000;
            start >= i128::from(i64::MIN) && start + 1000 <= i128::from(i64::MAX)
        };
        let accepted: Vec<i64> = times.iter().copied().filter(|&t| in_bounds(t) && holdable(t)).collect();
        prop_assert_eq!(done.accepted, accepted.len());
        prop_assert_eq!(done.accepted + done.future + done.past + done.invalid, times.len());
        prop_assert_eq!(win.source_watermark(src), accepted.iter().copied().max());
        let f = win.flush(now);
        let emitted: u64 = f.emitted.iter().map(|e| e.summary.count()).sum();
        let open = win.open_readings();
        prop_assert_eq!(emitted + open, accepted.len() as u64);
        for e in &f.emitted {
            prop_assert_eq!(e.window.start().rem_euclid(1000), 0);
        }
    }
}
