//! What the collector refused of the batches it took, as the store keeps
//! it: partials and their readings per reason ([`Refusals`]), added to the
//! batch's agent incarnation in the transaction that applies the batch (or,
//! for a batch refused whole after it failed to apply, the one that records
//! it as seen: [`crate::store::Ingest::record_refused`]).

use tributary_core::batch::Batch;

/// Partials the collector refused and the readings they held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusal {
    /// Partials refused.
    pub partials: u64,
    /// The sum of their readings (saturating).
    pub readings: u64,
}

impl Refusal {
    /// Adds `other`, saturating.
    pub fn add(&mut self, other: Refusal) {
        self.partials = self.partials.saturating_add(other.partials);
        self.readings = self.readings.saturating_add(other.readings);
    }
}

/// What the collector refused of one batch with a trusted identity, by
/// reason: the partials its checks took out (`crate::ingest::PartialRefused`)
/// and, for a batch that could not be applied at all, every partial left
/// (`unmergeable`, `store_failed`). Stored per agent incarnation and reason
/// in the transaction that applies (or records) the batch, and only if the
/// batch is new there, so a redelivered duplicate counts nothing: exactly
/// once.
///
/// Whole-payload refusals (`crate::ingest::Refused`: malformed, oversized,
/// agent mismatch, …) are not stored: such a payload has no identity the
/// collector can trust. They are counted in metrics only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Window later than `[limits] max_future_ms` ahead (`time_future`).
    pub time_future: Refusal,
    /// Window earlier than `[limits] max_age_ms` ago (`time_past`).
    pub time_past: Refusal,
    /// Window expired under `[retention]` (`expired`).
    pub expired: Refusal,
    /// The batch cannot merge into a stored window (another quantum, an
    /// overflow): refused whole (`unmergeable`).
    pub unmergeable: Refusal,
    /// The store failed on this batch alone (its code panicked on it)
    /// while other batches applied: refused whole so it does not hold up
    /// ingest for good (`store_failed`).
    pub store_failed: Refusal,
}

/// Why a batch with a trusted identity was refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeBatch {
    /// See [`Refusals::unmergeable`].
    Unmergeable,
    /// See [`Refusals::store_failed`].
    StoreFailed,
}

impl Refusals {
    /// Each reason with its stored name, those with a refused partial only.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, Refusal)> {
        [
            ("time_future", self.time_future),
            ("time_past", self.time_past),
            ("expired", self.expired),
            ("unmergeable", self.unmergeable),
            ("store_failed", self.store_failed),
        ]
        .into_iter()
        .filter(|(_, r)| r.partials > 0)
    }

    /// Adds every partial of `batch` (and its readings) under `why`: the
    /// batch is refused whole.
    pub fn refuse_whole(&mut self, why: WholeBatch, batch: &Batch) {
        let all = Refusal {
            partials: u64::try_from(batch.partials.len()).unwrap_or(u64::MAX),
            readings: batch
                .partials
                .iter()
                .fold(0u64, |n, p| n.saturating_add(p.summary.count())),
        };
        match why {
            WholeBatch::Unmergeable => self.unmergeable.add(all),
            WholeBatch::StoreFailed => self.store_failed.add(all),
        }
    }
}
