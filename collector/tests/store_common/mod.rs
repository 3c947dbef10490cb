//! Helpers shared by the store tests (SQLite and PostgreSQL): seeded workloads, their readings'
//! judgement by the oracle ([`judge`]) and whole-store snapshots to compare backends with.
#![allow(dead_code, clippy::unwrap_used)]

pub(crate) mod identity;
pub(crate) mod judge;
pub(crate) mod refused;
pub(crate) mod retention;

use std::collections::BTreeMap;

use tributary_collector::store::prelude::*;
use tributary_collector::store::{self, StoredWindow};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

pub(crate) use judge::assert_judged;

pub(crate) const MIN: i64 = 60_000;
pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 24 * HOUR;
pub(crate) const T0: i64 = 1_700_000_000_000 / HOUR * HOUR;

pub(crate) fn key(device: &str) -> SeriesKey {
    let mut tags = BTreeMap::new();
    tags.insert("site".to_string(), "north".to_string());
    SeriesKey::new("temperature", device, tags).unwrap()
}

/// Every reading (time, ticks) per (device, minute window).
pub(crate) type Truth = BTreeMap<(String, i64), Vec<(i64, i64)>>;

/// A seeded workload: `agents` agents each sending `batches` batches of
/// `per_batch` partials for `devices` devices over `minutes` one-minute
/// windows (so many agents report the same windows); also every reading.
pub(crate) fn workload(
    seed: u64,
    agents: u64,
    batches: u64,
    per_batch: usize,
    devices: u64,
    minutes: u64,
) -> (Vec<Batch>, Truth) {
    let q = Quantum::new(-3).unwrap();
    let mut out = Vec::new();
    let mut truth = Truth::new();
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for a in 0..agents {
        for s in 0..batches {
            let mut partials = Vec::new();
            for _ in 0..per_batch {
                let device = format!("dev-{:04}", next() % devices);
                let start = T0 + (next() % minutes) as i64 * MIN;
                let mut sum = Summary::new(q);
                for _ in 0..(1 + next() % 20) {
                    let t = start + (next() % MIN as u64) as i64;
                    let v = 20_000 + (next() % 5_000) as i64 - 2_500;
                    sum.insert(t, v).unwrap();
                    truth
                        .entry((device.clone(), start))
                        .or_default()
                        .push((t, v));
                }
                partials.push(Partial {
                    series: key(&device),
                    window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                    summary: sum,
                });
            }
            out.push(Batch::new(
                format!("agent-{a}"),
                s,
                T0 + s as i64 * MIN,
                partials,
            ));
        }
    }
    (out, truth)
}

/// The summary of a list of readings: input for a test to send, never its
/// judge (that is [`assert_judged`], the oracle's).
pub(crate) fn summary_of(readings: &[(i64, i64)]) -> Summary {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    for &(t, v) in readings {
        s.insert(t, v).unwrap();
    }
    s
}

/// Every stored summary at `width`, by (series, start).
pub(crate) async fn all_windows<S: Store>(
    store: &S,
    width: i64,
) -> BTreeMap<(String, i64), Summary> {
    all_stored(store, width)
        .await
        .into_iter()
        .map(|(k, w)| (k, w.summary))
        .collect()
}

/// Every stored window at `width` (with its revision), by (series, start).
pub(crate) async fn all_stored<S: Store>(
    store: &S,
    width: i64,
) -> BTreeMap<(String, i64), StoredWindow> {
    store::all_windows(store, Width::new(width).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|((k, start), w)| ((k.to_string(), start), w))
        .collect()
}

/// `windows_of` answers as one `windows` per series does: for every stored
/// series, a key never seen and a key given twice; at each width; over the
/// whole range and over a part of it.
pub(crate) async fn check_windows_of<S: Store>(store: &S) {
    let mut keys = store.series().await.unwrap();
    assert!(keys.len() >= 2, "needs a workload");
    keys.push(key("never"));
    keys.push(keys[0].clone());
    let count = |ws: &[Vec<StoredWindow>]| ws.iter().map(Vec::len).sum::<usize>();
    for width in [MIN, HOUR, DAY] {
        let w = Width::new(width).unwrap();
        let mut sizes = Vec::new();
        for (from, to) in [(i64::MIN, i64::MAX), (T0 + 3 * MIN, T0 + 9 * MIN)] {
            let mut each = Vec::new();
            for k in &keys {
                each.push(store.windows(k, w, from, to).await.unwrap());
            }
            let one = store.windows_of(&keys, w, from, to).await.unwrap();
            assert_eq!(one, each, "width {width}, [{from}, {to})");
            sizes.push(count(&one));
        }
        assert!(sizes[0] > 0, "width {width}: nothing stored");
        if width == MIN {
            assert!(0 < sizes[1] && sizes[1] < sizes[0], "{sizes:?}");
        }
    }
}

/// Cursors: unset reads 0, each name is its own, and a cursor never moves
/// back (a lower value is ignored).
pub(crate) async fn check_cursors<S: Store>(store: &mut S) {
    assert_eq!(store.cursor("check-a").await.unwrap(), 0);
    store.set_cursor("check-a", 42).await.unwrap();
    store.set_cursor("check-b", 7).await.unwrap();
    store.set_cursor("check-a", 43).await.unwrap();
    assert_eq!(store.cursor("check-a").await.unwrap(), 43);
    assert_eq!(store.cursor("check-b").await.unwrap(), 7);
    store.set_cursor("check-a", 40).await.unwrap();
    assert_eq!(
        store.cursor("check-a").await.unwrap(),
        43,
        "a cursor moved back"
    );
}

/// Leases: one holder at a time until it releases or its lease expires; a
/// release by anyone else changes nothing; names are independent.
pub(crate) async fn check_leases<S: Store>(store: &mut S) {
    use std::time::Duration;
    use store::Lease::{Ours, Theirs};
    let long = Duration::from_secs(60);
    let theirs = |h: &str| Theirs(h.to_string());
    assert_eq!(store.lease("job", "a", long).await.unwrap(), Ours);
    assert_eq!(store.lease("job", "b", long).await.unwrap(), theirs("a"));
    assert_eq!(
        store.lease("job", "a", long).await.unwrap(),
        Ours,
        "renewed"
    );
    assert_eq!(store.lease("other", "b", long).await.unwrap(), Ours);

    store.release("job", "b").await.unwrap(); // not b's to give up
    assert_eq!(store.lease("job", "b", long).await.unwrap(), theirs("a"));
    store.release("job", "a").await.unwrap();
    assert_eq!(
        store.lease("job", "b", long).await.unwrap(),
        Ours,
        "released"
    );
    assert_eq!(store.lease("job", "a", long).await.unwrap(), theirs("b"));

    // Renewed with a short life, then left to expire: taken over.
    assert_eq!(
        store
            .lease("job", "b", Duration::from_millis(200))
            .await
            .unwrap(),
        Ours
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.lease("job", "a", long).await.unwrap(),
        Ours,
        "expired"
    );
    assert_eq!(store.lease("job", "b", long).await.unwrap(), theirs("a"));
    assert_eq!(store.lease("other", "a", long).await.unwrap(), theirs("b"));
}

/// The change feed returns each row at its latest write, in change order:
/// after applying the first half of `batches` and then the rest, the rows
/// past the mark are exactly those the rest wrote, each as stored now.
pub(crate) async fn check_change_feed<S: Store>(store: &mut S, batches: &[Batch]) {
    let minute = Width::new(MIN).unwrap();
    let half = batches.len() / 2;
    store.apply(&batches[..half]).await.unwrap();
    let first = store.changed_since(minute, 0, usize::MAX).await.unwrap();
    assert!(!first.is_empty());
    assert!(first.windows(2).all(|w| w[0].change < w[1].change));
    let mark = first.last().unwrap().change;
    assert!(store
        .changed_since(minute, mark, 10)
        .await
        .unwrap()
        .is_empty());
    store.apply(&batches[half..]).await.unwrap();
    let later = store.changed_since(minute, mark, usize::MAX).await.unwrap();
    // Every row the later batches wrote, and only those, follows the mark;
    // each comes with its stored state as it is now.
    let mut touched: Vec<(String, i64)> = batches[half..]
        .iter()
        .flat_map(|b| b.partials.iter())
        .map(|p| (p.series.to_string(), p.window.start()))
        .collect();
    touched.sort();
    touched.dedup();
    let mut seen: Vec<(String, i64)> = later
        .iter()
        .map(|c| (c.series.to_string(), c.stored.window.start()))
        .collect();
    seen.sort();
    assert_eq!(seen, touched);
    for c in &later {
        let now = store
            .windows(
                &c.series,
                minute,
                c.stored.window.start(),
                c.stored.window.end(),
            )
            .await
            .unwrap();
        assert_eq!(now[0], c.stored);
    }
    // `limit` pages through the feed.
    let page = store.changed_since(minute, mark, 3).await.unwrap();
    assert_eq!(page[..], later[..3]);
    // Roll-up rows are a separate feed.
    assert!(!store
        .changed_since(Width::new(HOUR).unwrap(), 0, 1)
        .await
        .unwrap()
        .is_empty());
}

/// Progress lists the agents of each series with their latest watermarks,
/// and `progress_of` answers as one `progress` per series does. `first` is
/// any batch with a partial.
pub(crate) async fn check_progress<S: Store>(store: &mut S, first: &Batch) {
    let p = first.partials[0].clone();
    let mut q = p.clone();
    q.series = key("dev-other");
    store
        .apply(&[
            Batch::new("agent-a", 1, T0 + MIN, vec![p.clone()]),
            Batch::new("agent-b", 1, T0 + 5 * MIN, vec![p.clone(), q.clone()]),
            Batch::new("agent-a", 2, T0 + 2 * MIN, vec![]),
        ])
        .await
        .unwrap();
    let progress = store.progress(&p.series).await.unwrap();
    let agents: Vec<(&str, i64)> = progress
        .iter()
        .map(|a| (a.agent.as_str(), a.watermark))
        .collect();
    assert_eq!(
        agents,
        [("agent-a", T0 + 2 * MIN), ("agent-b", T0 + 5 * MIN)]
    );
    assert!(progress.iter().all(|a| a.seen_ms > 1_700_000_000_000));
    let only_b: Vec<String> = store
        .progress(&q.series)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.agent)
        .collect();
    assert_eq!(only_b, ["agent-b"]);
    assert!(store.progress(&key("never")).await.unwrap().is_empty());
    // One query for many series answers as one query per series does.
    let keys = [q.series.clone(), key("never"), p.series.clone()];
    let mut each = Vec::new();
    for k in &keys {
        each.push(store.progress(k).await.unwrap());
    }
    assert_eq!(store.progress_of(&keys).await.unwrap(), each);
    assert_eq!(each[2].len(), 2);
}

/// Parking: parked rows come back as stored now, in change order, paged
/// by `after`; parking twice changes nothing; `unpark` forgets; other names
/// and widths are separate; keys never stored are ignored. `batches` write
/// at least four minute windows.
pub(crate) async fn check_parking<S: Store>(store: &mut S, batches: &[Batch]) {
    let (minute, hour) = (Width::new(MIN).unwrap(), Width::new(HOUR).unwrap());
    store.apply(batches).await.unwrap();
    let all = store.changed_since(minute, 0, usize::MAX).await.unwrap();
    assert!(all.len() >= 4);
    let at = |c: &store::Changed| (c.series.clone(), c.stored.window.start());
    let never = (key("never-stored"), T0);
    store
        .park(
            "s1",
            minute,
            &[at(&all[3]), at(&all[0]), at(&all[2]), never.clone()],
        )
        .await
        .unwrap();
    store.park("s1", minute, &[at(&all[0])]).await.unwrap();
    let parked = |store: &S| {
        let store = store.clone();
        async move { store.parked("s1", minute, 0, usize::MAX).await.unwrap() }
    };
    assert_eq!(
        parked(store).await,
        [all[0].clone(), all[2].clone(), all[3].clone()]
    );
    assert_eq!(
        store.parked("s1", minute, all[0].change, 1).await.unwrap(),
        [all[2].clone()]
    );
    assert!(store
        .parked("s2", minute, 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .parked("s1", hour, 0, usize::MAX)
        .await
        .unwrap()
        .is_empty());

    store
        .unpark("s1", minute, &[at(&all[2]), never])
        .await
        .unwrap();
    assert_eq!(parked(store).await, [all[0].clone(), all[3].clone()]);

    // A parked row written again comes back as stored now.
    let again = batches
        .iter()
        .flat_map(|b| &b.partials)
        .find(|p| p.series == all[0].series && p.window == all[0].stored.window)
        .unwrap()
        .clone();
    store
        .apply(&[Batch::new("agent-late", 1, T0, vec![again])])
        .await
        .unwrap();
    let now = store
        .windows(
            &all[0].series,
            minute,
            all[0].stored.window.start(),
            all[0].stored.window.end(),
        )
        .await
        .unwrap();
    let got = parked(store).await;
    assert_eq!(got[0], all[3]);
    assert_eq!(got[1].stored, now[0]);
    assert_eq!(got[1].stored.revision, all[0].stored.revision + 1);
    assert!(got[1].change > all[3].change);
}
