//! The retention contract on either backend: expiry deletes exactly the
//! windows of a width that start before the cut, in batches no larger than
//! asked, leaves every other width and every later window as its readings
//! make it, takes expired rows' parked entries with them, and a change-feed
//! reader following across an expiry neither skips a live change nor gets
//! one twice.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use tributary_collector::retention::{Policy, RetentionConfig, RetentionTask, GRACE_MS};
use tributary_collector::store::prelude::*;
use tributary_collector::store::Changed;
use tributary_core::batch::Batch;
use tributary_core::Width;

use super::{all_windows, key, rolled_up, summary_of, Truth, DAY, HOUR, MIN, T0};

/// Runs the contract on an empty `store` keeping roll-ups of 1 h and 1 d,
/// with `batches` (one-minute partials from `T0` on, all of `truth`'s
/// readings) in two halves around a feed reader's first read.
pub(crate) async fn check_retention<S: Store>(store: &S, batches: &[Batch], truth: &Truth) {
    let minute = Width::new(MIN).unwrap();
    let cut = T0 + 30 * MIN;
    let half = batches.len() / 2;
    store.apply(&batches[..half]).await.unwrap();

    // A sink reads the feed so far; parks one row that will expire and one
    // that will not.
    let first = store.changed_since(minute, 0, usize::MAX).await.unwrap();
    let mark = first.last().unwrap().change;
    let at = |c: &Changed| (c.series.clone(), c.stored.window.start());
    let old = first
        .iter()
        .find(|c| c.stored.window.start() < cut)
        .unwrap();
    let live = first
        .iter()
        .find(|c| c.stored.window.start() >= cut)
        .unwrap();
    store.park("s", minute, &[at(old), at(live)]).await.unwrap();
    store.apply(&batches[half..]).await.unwrap();

    // One bounded batch, then the task for the rest.
    let expiring = truth.keys().filter(|(_, start)| *start < cut).count();
    assert!(expiring > 5, "the workload has windows to expire");
    assert_eq!(store.expire(minute, cut, 5).await.unwrap(), 5);
    let keep = DAY;
    let policy = Policy::new(keep, vec![(HOUR, 0), (DAY, 0)]);
    let now = cut + GRACE_MS + keep + MIN - 1;
    assert_eq!(policy.delete_before(minute, now), Some(cut));
    let cfg = RetentionConfig {
        batch_rows: 4,
        ..RetentionConfig::default()
    };
    let task = RetentionTask::new(store.clone(), policy, cfg);
    let run = task.run_once(now).await.unwrap();
    let rest = u64::try_from(expiring - 5).unwrap();
    assert_eq!(run.expired, vec![(minute, rest)]);
    assert!(run.behind.is_empty());
    assert_eq!(task.metrics().expired(minute), rest);
    assert_eq!(task.metrics().lag_ms(minute), 0);
    // Nothing left to do.
    assert_eq!(task.run_once(now).await.unwrap().expired, vec![]);

    // Minutes before the cut are gone; the rest and the roll-ups are as
    // their readings make them.
    let stored = all_windows(store, MIN).await;
    let want: BTreeMap<(String, i64), _> = truth
        .iter()
        .filter(|((_, start), _)| *start >= cut)
        .map(|((d, start), r)| ((key(d).to_string(), *start), summary_of(r)))
        .collect();
    assert_eq!(stored, want);
    for width in [HOUR, DAY] {
        let want = rolled_up(truth, width);
        assert_eq!(all_windows(store, width).await, want, "width {width}");
    }
    let widths: Vec<i64> = store
        .widths()
        .await
        .unwrap()
        .iter()
        .map(|w| w.ms())
        .collect();
    assert_eq!(widths, [MIN, HOUR, DAY]);
    let oldest = want.keys().map(|(_, s)| *s).min();
    assert_eq!(store.oldest(minute).await.unwrap(), oldest);

    // The expired row's parked entry went with it.
    let parked = store.parked("s", minute, 0, usize::MAX).await.unwrap();
    let parked: Vec<_> = parked.iter().map(at).collect();
    assert_eq!(parked, [at(live)]);

    // The reader goes on from its mark: each live row the second half
    // wrote, once, and none that expired.
    let later = store.changed_since(minute, mark, usize::MAX).await.unwrap();
    let seen: Vec<(String, i64)> = later
        .iter()
        .map(|c| (c.series.to_string(), c.stored.window.start()))
        .collect();
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), distinct.len(), "no row twice");
    let touched: BTreeSet<(String, i64)> = batches[half..]
        .iter()
        .flat_map(|b| b.partials.iter())
        .filter(|p| p.window.start() >= cut)
        .map(|p| (p.series.to_string(), p.window.start()))
        .collect();
    assert_eq!(distinct, touched);
    // Past its last change nothing is sent again, until a new write.
    let last = later.last().map_or(mark, |c| c.change);
    assert!(store
        .changed_since(minute, last, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    let mut again = batches[0].clone();
    again.seq = 1_000_000;
    again.partials.retain(|p| p.window.start() >= cut);
    assert!(!again.partials.is_empty(), "batch 0 has a live partial");
    store.apply(&[again.clone()]).await.unwrap();
    let next = store.changed_since(minute, last, usize::MAX).await.unwrap();
    let next: BTreeSet<(String, i64)> = next
        .iter()
        .map(|c| (c.series.to_string(), c.stored.window.start()))
        .collect();
    let sent: BTreeSet<(String, i64)> = again
        .partials
        .iter()
        .map(|p| (p.series.to_string(), p.window.start()))
        .collect();
    assert_eq!(next, sent);

    // A write into an expired window (ingest refuses those; the store must
    // still not merge into what it forgot) makes a fresh row of it alone.
    let mut into_expired = batches[0].clone();
    into_expired.seq = 1_000_001;
    into_expired.partials.retain(|p| p.window.start() < cut);
    into_expired.partials.truncate(1);
    let p = into_expired.partials[0].clone();
    store.apply(&[into_expired]).await.unwrap();
    let row = store
        .windows(&p.series, minute, p.window.start(), p.window.end())
        .await
        .unwrap();
    assert_eq!(row.len(), 1);
    assert_eq!(row[0].summary, p.summary);
    assert_eq!(row[0].revision, 0);
}
