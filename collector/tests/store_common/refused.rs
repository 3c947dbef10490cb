//! The refusals contract, shared by the SQLite and PostgreSQL tests: the
//! partials ingest's checks take out of an applied batch (`time_future`,
//! `time_past`, `expired`) are stored per agent incarnation and reason in
//! the batch's transaction — exact against the partials and readings this
//! workload placed out of bounds, counted once however often a batch is
//! redelivered, and (the caller reopens the store) durable. Batches ingest
//! refuses whole after they failed to apply (`unmergeable`,
//! `store_failed`) are recorded the same way, as seen but never merged.

use std::collections::BTreeMap;

use tributary_collector::ingest::{check, drop_expired, Limits};
use tributary_collector::retention::Policy;
use tributary_collector::store::prelude::*;
use tributary_collector::store::{Applied, Refusal, Refusals, WholeBatch};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{topic, Incarnation, Quantum, Summary, Width, Window};

use super::{key, DAY, MIN, T0};

/// The collector's clock in this workload.
pub(crate) const NOW: i64 = T0;

/// What the test expects per (agent, incarnation): reason → counts.
pub(crate) type Expected = BTreeMap<(String, Incarnation), BTreeMap<String, Refusal>>;

/// A checked workload: the batches as ingest would apply them, what the
/// checks took out of each, and the test's own count of what it placed out
/// of bounds.
pub(crate) struct Workload {
    pub(crate) batches: Vec<Batch>,
    pub(crate) refused: Vec<Refusals>,
    pub(crate) expected: Expected,
}

/// Bounds: 10 minutes ahead, 10 days back; minute windows kept 5 days.
const LIMITS: Limits = Limits {
    max_payload_bytes: 1 << 20,
    max_partials: 1000,
    max_future_ms: 10 * MIN,
    max_age_ms: Some(10 * DAY),
};

/// Two agents, two incarnations of the first, 12 batches each. Partial `j`
/// of batch `s` holds `1 + (s + j) % 5` readings and starts (by `j`) in
/// bounds, an hour ahead (`time_future`), 11 days back (`time_past`) or 7
/// days back (past the 5-day retention: `expired`).
pub(crate) fn workload() -> Workload {
    let policy = Policy::new(5 * DAY, vec![]);
    let senders = [("gw-r1", 1u64), ("gw-r1", 2), ("gw-r2", 7)];
    let (mut batches, mut refused, mut expected) = (Vec::new(), Vec::new(), Expected::new());
    for (agent, inc) in senders {
        let inc = Incarnation::new(inc);
        for seq in 1..=12u64 {
            let mut partials = Vec::new();
            for j in 0..6u64 {
                let (start, reason) = match j {
                    0..=2 => (T0 - (j as i64 + 1) * MIN, None),
                    3 => (T0 + 60 * MIN, Some("time_future")),
                    4 => (T0 - 11 * DAY, Some("time_past")),
                    _ => (T0 - 7 * DAY, Some("expired")),
                };
                // Not every batch carries every out-of-bounds partial.
                if reason.is_some() && (seq + j) % 4 == 0 {
                    continue;
                }
                let n = 1 + (seq + j) % 5;
                let mut s = Summary::new(Quantum::new(-3).unwrap());
                for k in 0..n {
                    s.insert(start + k as i64, 20_000 + k as i64).unwrap();
                }
                if let Some(reason) = reason {
                    let e = expected
                        .entry((agent.to_string(), inc))
                        .or_default()
                        .entry(reason.to_string())
                        .or_default();
                    e.partials += 1;
                    e.readings += n;
                }
                partials.push(Partial {
                    series: key(&format!("{agent}-dev-{j}")),
                    window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                    summary: s,
                });
            }
            let b = Batch::new(agent, seq, T0, partials).with_identity(inc, seq);
            let payload = b.encode(Encoding::Binary);
            let c = check(LIMITS, &topic::partials(agent), &payload, NOW).unwrap();
            let c = drop_expired(&policy, c, NOW);
            batches.push(c.batch);
            refused.push(c.refused);
        }
    }
    Workload {
        batches,
        refused,
        expected,
    }
}

/// Applies the first half of the workload, then all of it (the first half
/// redelivered beside the new half), then all of it again: each batch new
/// once, its refusals counted once.
pub(crate) async fn apply_with_redelivery<S: Store>(store: &S, w: &Workload) {
    let half = w.batches.len() / 2;
    let r = store
        .apply_refused(&w.batches[..half], &w.refused[..half])
        .await
        .unwrap();
    assert!(r.applied.iter().all(|a| *a == Applied::New));
    let r = store.apply_refused(&w.batches, &w.refused).await.unwrap();
    let new = r.applied.iter().filter(|a| **a == Applied::New).count();
    assert_eq!(new, w.batches.len() - half, "{:?}", r.applied);
    check_stored(store, w).await;
    let r = store.apply_refused(&w.batches, &w.refused).await.unwrap();
    assert!(r.applied.iter().all(|a| *a == Applied::Duplicate));
    check_stored(store, w).await;
}

/// The refusals at `/api/v1/agents`'s source equal the workload's own count,
/// per incarnation and summed per agent.
pub(crate) async fn check_stored<S: Store>(store: &S, w: &Workload) {
    let agents = store.agents().await.unwrap();
    let mut stored = Expected::new();
    for a in &agents {
        let mut sum: BTreeMap<String, Refusal> = BTreeMap::new();
        for i in &a.incarnations {
            for (reason, r) in &i.refused {
                sum.entry(reason.clone()).or_default().add(*r);
            }
            stored.insert((a.agent.clone(), i.incarnation), i.refused.clone());
        }
        assert_eq!(a.refused, sum, "{}: the agent's sum", a.agent);
    }
    assert_eq!(stored, w.expected);
    let partials: u64 = w
        .expected
        .values()
        .flat_map(|m| m.values())
        .map(|r| r.partials)
        .sum();
    assert!(
        partials > 30,
        "the workload refuses partials of every reason: {partials}"
    );
    assert!(w.expected.values().all(|m| {
        ["time_future", "time_past", "expired"]
            .iter()
            .all(|r| m.contains_key(*r))
    }));
}

/// Records two further batches of `gw-r2` as refused whole — one because
/// the store failed on it, one as unmergeable — and adds the test's own
/// count of their partials and readings to `w.expected`: each is counted
/// once however often it is recorded, is a duplicate to a later apply,
/// and none of its partials reaches the results.
pub(crate) async fn record_whole<S: Store>(store: &S, w: &mut Workload) {
    let inc = Incarnation::new(7);
    let series = key("gw-r2-refused-whole");
    for (seq, why, reason) in [
        (13u64, WholeBatch::StoreFailed, "store_failed"),
        (14, WholeBatch::Unmergeable, "unmergeable"),
    ] {
        let mut partials = Vec::new();
        let mut want = Refusal::default();
        for j in 0..3u64 {
            let start = T0 - (j as i64 + 1) * MIN;
            let n = 2 + j + seq % 3;
            let mut s = Summary::new(Quantum::new(-3).unwrap());
            for k in 0..n {
                s.insert(start + k as i64, 7 + k as i64).unwrap();
            }
            partials.push(Partial {
                series: series.clone(),
                window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                summary: s,
            });
            want.partials += 1;
            want.readings += n;
        }
        let b = Batch::new("gw-r2", seq, T0, partials).with_identity(inc, seq);
        let mut r = Refusals::default();
        r.refuse_whole(why, &b);
        let got = store
            .record_refused(std::slice::from_ref(&b), &[r])
            .await
            .unwrap();
        assert_eq!(got.applied, [Applied::New], "{reason}: recorded");
        let again = store
            .record_refused(std::slice::from_ref(&b), &[r])
            .await
            .unwrap();
        assert_eq!(
            again.applied,
            [Applied::Duplicate],
            "{reason}: recorded twice"
        );
        let later = store.apply(std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(later, [Applied::Duplicate], "{reason}: applied after");
        w.expected
            .entry(("gw-r2".to_string(), inc))
            .or_default()
            .insert(reason.to_string(), want);
    }
    let stored = store
        .windows(&series, Width::new(MIN).unwrap(), i64::MIN, i64::MAX)
        .await
        .unwrap();
    assert!(
        stored.is_empty(),
        "nothing of a refused batch is merged: {stored:?}"
    );
    check_stored(store, w).await;
}
