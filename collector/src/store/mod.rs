//! The collector's storage contract.
//!
//! # Guarantees every backend gives
//! - **Exactly-once application.** A batch is identified by (agent, batch
//!   sequence). [`Store::apply`] records that key in the same transaction as
//!   the batch's merges and merges only when the key is new, so a redelivered
//!   or resent batch changes nothing — also across restarts and, for a shared
//!   database, across collector instances.
//! - **Order independence.** Results are merged with [`Summary::merge`],
//!   which is commutative and associative with exact integer moments, so the
//!   stored result of a (series, window) does not depend on the order batches
//!   arrive or commit in.
//! - **Exact roll-ups.** Every partial is also merged into the windows of each
//!   configured coarser width containing it, in the same transaction.
//! - **Revisions.** The first merge into a (series, width, window) stores
//!   revision 0; each later merge into it (late data, another agent) bumps it.

pub mod sqlite;

use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Summary, Width, Window};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Stored data could not be decoded (corruption or a newer schema).
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A partial could not be merged into its stored window.
    #[error("cannot merge a partial of {series} into {window}: {source}")]
    Merge {
        /// The series.
        series: String,
        /// The window.
        window: Window,
        /// Why.
        source: tributary_core::SummaryError,
    },
    /// The configured roll-up widths are not usable.
    #[error("roll-up width {0} ms is invalid")]
    BadRollup(i64),
}

/// What happened to one batch in [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// First time seen: its partials were merged.
    New,
    /// Already applied before: nothing changed.
    Duplicate,
}

/// A stored result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWindow {
    /// The window.
    pub window: Window,
    /// The merged summary.
    pub summary: Summary,
    /// 0 for the first merge, +1 for each later one.
    pub revision: u32,
}

/// A collector store.
pub trait Store {
    /// Applies `batches` in one transaction; the answer lists, per batch in
    /// order, whether it was new. On error nothing is applied.
    fn apply(&mut self, batches: &[Batch]) -> Result<Vec<Applied>, StoreError>;

    /// Every series with at least one stored window.
    fn series(&self) -> Result<Vec<SeriesKey>, StoreError>;

    /// The stored windows of `series` at `width` starting in `[from, to)`,
    /// ordered by start.
    fn windows(
        &self,
        series: &SeriesKey,
        width: Width,
        from: i64,
        to: i64,
    ) -> Result<Vec<StoredWindow>, StoreError>;

    /// The latest watermark each agent has reported.
    fn watermarks(&self) -> Result<Vec<(String, i64)>, StoreError>;
}
