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
//! - **Progress for finality.** Each applied batch records its agent's
//!   watermark and the collector's clock (`seen_ms`), and which agents have
//!   reported each series, so [`crate::finality`] can decide from the store
//!   alone — not from one instance's memory — when a window is final.
//! - **A change feed.** Every result row written gets a new, strictly
//!   increasing change number, assigned so that a reader that has seen change
//!   `n` committed never later finds a committed change `≤ n` it missed.
//!   Sinks follow this feed from a durable cursor kept in the store.
//! - **Leases.** A named lease has one holder at a time until it expires
//!   ([`Store::lease`]), so instances sharing a database can agree which of
//!   them runs a sink.

pub mod postgres;
pub mod sqlite;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Summary, Width, Window};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (the backend's own message).
    #[error("database: {0}")]
    Backend(String),
    /// The database was written by a newer collector.
    #[error("the database schema is version {found}, newer than the {known} this collector knows; upgrade the collector")]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// The database holds summaries whose sketches index tick counts (a
    /// schema older than the real-value sketches of issue #13).
    #[error("the database (schema {found}) holds summaries whose sketches index tick counts; they cannot be converted exactly to this collector's real-value buckets (schema {known}): start it on a new database, or keep the previous collector version on this one")]
    TickIndexed {
        /// The version found in the database.
        found: i64,
        /// The version this build writes.
        known: i64,
    },
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

/// How far one agent that reported a series has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProgress {
    /// The agent id.
    pub agent: String,
    /// The highest watermark (event time, ms) it has sent.
    pub watermark: i64,
    /// When the collector last applied a batch of it (wall clock, ms since
    /// the Unix epoch).
    pub seen_ms: i64,
}

/// One entry of the change feed: a result row as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The change number of the row's last write.
    pub change: u64,
    /// The series.
    pub series: SeriesKey,
    /// The stored window as it is now.
    pub stored: StoredWindow,
}

/// Who holds a lease after [`Store::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The asking holder: it was taken or renewed.
    Ours,
    /// Another holder, whose lease has not expired.
    Theirs(String),
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

    /// [`Store::windows`] of each of `series`, in order, in one query (the
    /// query API reads a whole selector).
    fn windows_of(
        &self,
        series: &[SeriesKey],
        width: Width,
        from: i64,
        to: i64,
    ) -> Result<Vec<Vec<StoredWindow>>, StoreError> {
        series
            .iter()
            .map(|s| self.windows(s, width, from, to))
            .collect()
    }

    /// The latest watermark each agent has reported.
    fn watermarks(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// The progress of every agent that has reported `series`.
    fn progress(&self, series: &SeriesKey) -> Result<Vec<AgentProgress>, StoreError>;

    /// [`Store::progress`] of each of `series`, in order, in one query (the
    /// query API asks it for a whole selector).
    fn progress_of(&self, series: &[SeriesKey]) -> Result<Vec<Vec<AgentProgress>>, StoreError> {
        series.iter().map(|s| self.progress(s)).collect()
    }

    /// Result rows at `width` whose last change number is greater than
    /// `after`, in change order, at most `limit`.
    fn changed_since(
        &self,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changed>, StoreError>;

    /// Parks rows for the feed reader `name` (a sink): remembers the rows
    /// of `keys` (series, window start) at `width` until [`Store::unpark`],
    /// so the reader's cursor can pass rows it cannot use yet (not final)
    /// without losing them. Parking a parked row changes nothing.
    fn park(
        &mut self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError>;

    /// The rows `name` has parked at `width`, as stored now, whose change
    /// number is greater than `after`, in change order, at most `limit`.
    fn parked(
        &self,
        name: &str,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changed>, StoreError>;

    /// Forgets parked rows of `name` (used or skipped); keys that are not
    /// parked are ignored.
    fn unpark(
        &mut self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError>;

    /// The durable cursor called `name` (0 when never set).
    fn cursor(&self, name: &str) -> Result<u64, StoreError>;

    /// Stores the durable cursor called `name`. A cursor never moves back:
    /// a lower value than the stored one is ignored (an instance that lost
    /// a sink's lease while saving cannot undo its successor's progress).
    fn set_cursor(&mut self, name: &str, value: u64) -> Result<(), StoreError>;

    /// Takes the lease called `name` for `holder`, or renews it, until
    /// `ttl` from now by the store's clock (the database server's, so the
    /// instances' clocks need not agree). A lease another holder holds and
    /// that has not expired is left alone and its holder named. Several
    /// instances on one database use it to run a job on one of them at a
    /// time (a sink pushes only while it holds the lease of its name).
    fn lease(&mut self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError>;

    /// Gives up the lease called `name` if `holder` holds it, so another
    /// instance can take it at once instead of after its expiry.
    fn release(&mut self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Another handle on the same data, for queries: the HTTP API reads
    /// through it, so a long query neither waits for nor holds up ingest's
    /// transactions. Use it only to read.
    fn reader(&self) -> Result<Self, StoreError>
    where
        Self: Sized;
}

/// Every stored window of every series at `width`, by (series, window start)
/// — the whole result set, for checks, exports and tests.
pub fn all_windows<S: Store + ?Sized>(
    store: &S,
    width: Width,
) -> Result<BTreeMap<(SeriesKey, i64), StoredWindow>, StoreError> {
    let mut out = BTreeMap::new();
    for key in store.series()? {
        for w in store.windows(&key, width, i64::MIN, i64::MAX)? {
            out.insert((key.clone(), w.window.start()), w);
        }
    }
    Ok(out)
}

/// Partials merged per result row before a store writes them: by row key,
/// the merged summary with the series and window it belongs to.
pub(crate) type Pending<'a, K> =
    std::collections::HashMap<K, (Summary, &'a SeriesKey, Window), foldhash::fast::RandomState>;

/// The error for a stored value that does not read back.
pub(crate) fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// A series key as both backends store it: canonical JSON text.
pub(crate) fn key_text(key: &SeriesKey) -> Result<String, StoreError> {
    serde_json::to_string(key).map_err(|e| corrupt("series key", e))
}

/// A summary as both backends store it: postcard bytes.
pub(crate) fn encode_summary(summary: &Summary) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(summary).map_err(|e| corrupt("summary", e))
}

/// A stored summary (postcard bytes) read back.
pub(crate) fn decode_summary(bytes: &[u8]) -> Result<Summary, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("summary", e))
}

/// A change-feed read's `after` and `limit` as SQL integers (beyond
/// `i64::MAX` means "no bound").
pub(crate) fn feed_bounds(after: u64, limit: usize) -> (i64, i64) {
    (
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// A result row read back: its window start, revision and summary bytes
/// (postcard), at `width`. Both backends store rows this way.
pub(crate) fn stored(
    start: i64,
    width: Width,
    revision: i64,
    bytes: &[u8],
) -> Result<StoredWindow, StoreError> {
    Ok(StoredWindow {
        window: Window::new(start, width).map_err(|e| corrupt("window", e))?,
        summary: decode_summary(bytes)?,
        revision: u32::try_from(revision).map_err(|e| corrupt("revision", e))?,
    })
}

/// Lays out rows found by series-key text (`by_key`) in the order of
/// `keys`, the answer of a one-query `…_of` read; a key given more than
/// once gets its rows each time, one absent gets none.
pub(crate) fn in_order<T: Clone, H: std::hash::BuildHasher>(
    keys: &[String],
    mut by_key: HashMap<String, Vec<T>, H>,
) -> Vec<Vec<T>> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for k in keys {
        *left.entry(k.as_str()).or_default() += 1;
    }
    keys.iter()
        .map(|k| {
            let n = left.entry(k.as_str()).or_default();
            *n = n.saturating_sub(1);
            let rows = if *n == 0 {
                by_key.remove(k)
            } else {
                by_key.get(k).cloned()
            };
            rows.unwrap_or_default()
        })
        .collect()
}

/// Merges `summary` (of `series` in `window`) into row `key` of `rows`.
pub(crate) fn merge_into<'a, K: Hash + Eq>(
    rows: &mut Pending<'a, K>,
    key: K,
    summary: &Summary,
    series: &'a SeriesKey,
    window: Window,
) -> Result<(), StoreError> {
    match rows.entry(key) {
        Entry::Occupied(mut e) => {
            e.get_mut()
                .0
                .merge(summary)
                .map_err(|source| StoreError::Merge {
                    series: series.to_string(),
                    window,
                    source,
                })
        }
        Entry::Vacant(e) => {
            e.insert((summary.clone(), series, window));
            Ok(())
        }
    }
}

/// Adds to `rows` their roll-ups: every row merged into the window of each
/// width in `rollups` coarser than its own — one merge per row and width,
/// not per partial. `key_of` gives the key of a series' row in a window.
pub(crate) fn add_rollups<'a, K: Hash + Eq>(
    rows: &mut Pending<'a, K>,
    rollups: &[Width],
    key_of: impl Fn(&K, Window) -> K,
) -> Result<(), StoreError> {
    let mut rolled: Pending<'a, K> = Pending::default();
    for (key, (summary, series, window)) in rows.iter() {
        for &width in rollups.iter().filter(|w| w.ms() > window.width().ms()) {
            if let Ok(coarse) = window.coarsen(width) {
                merge_into(&mut rolled, key_of(key, coarse), summary, series, coarse)?;
            }
        }
    }
    for (key, (summary, series, window)) in rolled {
        merge_into(rows, key, &summary, series, window)?;
    }
    Ok(())
}
