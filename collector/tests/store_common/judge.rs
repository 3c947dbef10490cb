//! The stores' windows judged by the oracle (`tributary-oracle`, through the
//! simulator's adapter `tributary_sim::judge`): the reference answer of the
//! store tests comes from the raw readings (exact integer sums, sorted
//! values), never from the `Summary` code under test.

use std::future::Future;
use std::panic::Location;

use tributary_collector::store::{self, prelude::*};
use tributary_core::Width;
use tributary_oracle::Readings;
use tributary_sim::judge::{judge_windows, series, Verdict};

use super::{key, Truth};

/// The decimal exponent of the quantum of every reading the store tests
/// write (their summaries are `Summary::new(Quantum::new(-3))`).
const EXPONENT: i8 = -3;

/// `store`'s windows at `width` against the oracle's windows of `truth`'s
/// readings: every window the readings make must be stored and agree with
/// them — count, Σv, Σv², min, max, first and last exactly, quantiles in
/// the bucket of the right-ranked reading — and no other window may be.
pub(crate) async fn judge<S: Store>(store: &S, truth: &Truth, width: i64) -> Verdict {
    let mut readings = Readings::new();
    for ((device, _), rs) in truth {
        let name = series(&key(device));
        for &(time, ticks) in rs {
            readings.add(&name, EXPONENT, time, ticks).unwrap();
        }
    }
    let want = readings.windows(width).unwrap();
    let got = store::all_windows(store, Width::new(width).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, w)| (k, w.summary))
        .collect();
    judge_windows(&got, &want)
}

/// Panics, naming the caller's line and listing every problem, unless
/// [`judge`] finds `store`'s windows at `width` exactly as `truth`'s
/// readings (of which there must be some) make them.
#[track_caller]
pub(crate) fn assert_judged<'a, S: Store>(
    store: &'a S,
    truth: &'a Truth,
    width: i64,
) -> impl Future<Output = ()> + 'a {
    // An `async fn` cannot track its caller: the location is taken here.
    let at = Location::caller();
    async move {
        let v = judge(store, truth, width).await;
        assert!(
            v.checked > 0,
            "{at}: width {width}: no readings to judge by"
        );
        assert!(
            v.ok(),
            "{at}: width {width}: {} of {} windows disagree with the oracle:\n{}",
            v.mismatched,
            v.checked,
            v.problems.join("\n")
        );
    }
}
