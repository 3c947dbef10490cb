//! What the collector refused inside applied batches, as the store keeps
//! it: partials and their readings per reason ([`Refusals`]), added to the
//! batch's agent incarnation in the transaction that applies the batch.

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

/// What the collector's checks took out of one accepted batch, by reason
/// (`crate::ingest::PartialRefused`). Stored per agent incarnation and
/// reason in the transaction that applies the batch, and only if the batch
/// is new there, so a redelivered duplicate counts nothing: exactly once.
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
}

impl Refusals {
    /// Each reason with its stored name, those with a refused partial only.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, Refusal)> {
        [
            ("time_future", self.time_future),
            ("time_past", self.time_past),
            ("expired", self.expired),
        ]
        .into_iter()
        .filter(|(_, r)| r.partials > 0)
    }
}
