//! The collector store's windows of one width as the agent tests' `Totals`
//! ((series text, window start, width) → (count, Σticks)), for the system
//! tests that run the real agent against the collector's ingest.

use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::Width;

use super::common::Totals;

/// Every stored window of `width_ms`, as totals.
pub(crate) async fn stored(store: &SqliteStore, width_ms: i64) -> Totals {
    all_windows(store, Width::new(width_ms).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|((key, start), w)| {
            (
                (key.to_string(), start, width_ms),
                (w.summary.count(), w.summary.sum_ticks()),
            )
        })
        .collect()
}
