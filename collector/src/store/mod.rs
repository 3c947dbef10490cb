//! The collector's storage contract, split by role, and its two backends.
//!
//! # Design
//! A store is one cheap-to-clone async handle ([`Store`]) that the service
//! hands out by role: ingest applies groups through [`Ingest`], the query
//! API and the dashboard read through [`Query`], and sinks follow the
//! change feed through [`Feed`], and the instances agree which of them
//! runs a sink or retention through [`Leases`].
//! Every method returns a `Send` future, so any task may call it; the
//! backends keep their blocking or pooled details inside:
//! [`sqlite`] runs its one writer connection on the blocking pool and reads
//! through a pool of its own reader connections (WAL), so no query waits
//! for, or holds up, a commit; [`postgres`] is natively async on the
//! caller's runtime, with a connection per call from its pool.
//!
//! What a group of batches does to the results — which batches are new,
//! their partials merged per row with their roll-ups, a delta folded into a
//! stored row — is written once in [`crate::merge`]; the backends only
//! sequence their SQL around it.
//!
//! # Guarantees every backend gives
//! - **Exactly-once application.** A batch is identified by (agent,
//!   incarnation, batch sequence): a re-provisioned agent's new database
//!   numbers from 1 again under a new incarnation and is not taken for a
//!   replay. [`Ingest::apply`] records that key in the same transaction as
//!   the batch's merges and merges only when the key is new, so a
//!   redelivered or resent batch changes nothing — also across restarts and,
//!   for a shared database, across collector instances.
//! - **Bounded de-duplication memory.** Per agent incarnation the store
//!   keeps a mark below which every batch is applied (or was confirmed to
//!   its agent and is never sent again) and only the keys applied above it
//!   (`merge/senders.rs`); replays of keys pruned long ago are still
//!   recognised. The incarnation's batches and dropped readings are counted
//!   in the same transaction as the batches ([`Query::agents`]).
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
//! - **A change feed.** Every result row written gets a new change number,
//!   higher than any the row had, assigned so that a reader that has seen
//!   change `n` committed never later finds a committed change `≤ n` it
//!   missed (SQLite: a counter, as its writers commit one at a time;
//!   PostgreSQL: positions from the writing transaction's id, shown only
//!   once every older transaction has ended — no counter that commits take
//!   in turn). Sinks follow this feed from a durable cursor kept in the
//!   store.
//! - **Leases.** A named lease has one holder at a time until it expires
//!   ([`Leases::lease`]), so instances sharing a database can agree which of
//!   them runs a job that must run on one at a time (a sink, retention:
//!   `crate::lease`).
//! - **Expiry** ([`Expire`], for [`crate::retention`]) deletes result rows
//!   of one width before a window start, at most a given number per
//!   transaction, with their parked entries; it never changes a change
//!   number, so a feed cursor stays valid and no live row is skipped or
//!   sent again.

pub(crate) mod codec;
pub mod config;
pub mod postgres;
mod refused;
pub mod sqlite;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tributary_core::batch::Batch;
use tributary_core::{Incarnation, SeriesKey, Summary, Width, Window};
use tributary_runtime::metrics::prometheus_client::registry::Registry;

pub use config::{StoreConfig, StoreKind, StoreTls};
pub use refused::{Refusal, Refusals, WholeBatch};

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
    /// A blocking store task failed (the runtime stopped).
    #[error("a store task failed: {0}")]
    Task(String),
    /// The store's code panicked on what it was given: a bug, met again
    /// whenever the same batches are applied.
    #[error("the store panicked: {0}")]
    Panicked(String),
    /// A part of a group failed with `error` after other parts of it had
    /// committed on their own (PostgreSQL's lanes): `committed` is what
    /// those applied. Applying the group again answers their batches as
    /// duplicates, so this is how the caller learns that they were new.
    #[error("{error} (other batches of the group committed)")]
    Partly {
        /// The failed part's error.
        error: Box<StoreError>,
        /// What the parts that committed applied.
        committed: Box<Committed>,
    },
}

impl StoreError {
    /// Whether the error comes from a batch applied rather than from the
    /// database, and so why that batch would be refused whole: applying the
    /// same batches again fails the same way, so retrying the group cannot
    /// help, while each batch alone may apply. [`StoreError::Merge`] (a
    /// partial that cannot merge into its stored window) and
    /// [`StoreError::Panicked`] (a bug met on the batch) are; everything
    /// else is retried — a full disk, a database that is down, and corrupt
    /// stored data too (a fault of the store, not of the batches: refusing
    /// them would lose their data at the agents, while a stall keeps it).
    pub fn whole_batch(&self) -> Option<WholeBatch> {
        match self {
            StoreError::Merge { .. } => Some(WholeBatch::Unmergeable),
            StoreError::Panicked(_) => Some(WholeBatch::StoreFailed),
            StoreError::Partly { error, .. } => error.whole_batch(),
            _ => None,
        }
    }

    /// The error of the part that failed, and what the parts of the group
    /// that committed applied, if any did ([`StoreError::Partly`]).
    pub fn committed(self) -> (StoreError, Option<Committed>) {
        match self {
            StoreError::Partly { error, committed } => (*error, Some(*committed)),
            e => (e, None),
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        if e.is_panic() {
            return StoreError::Panicked(e.to_string());
        }
        StoreError::Task(e.to_string())
    }
}

/// What happened to one batch in [`Ingest::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// First time seen: its partials were merged.
    New,
    /// Already applied before: nothing changed.
    Duplicate,
}

/// What [`Ingest::apply_report`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Per batch in order, whether it was new.
    pub applied: Vec<Applied>,
    /// The agent incarnations whose first batch the transaction applied.
    pub incarnations: Vec<NewIncarnation>,
}

/// What committed of a group that failed in part ([`StoreError::Partly`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Per batch of the group in order, whether it was new, for those of
    /// the parts that committed (`None`: its part failed, nothing of it
    /// is applied).
    pub applied: Vec<Option<Applied>>,
    /// The agent incarnations whose first batch those parts applied.
    pub incarnations: Vec<NewIncarnation>,
}

/// An agent incarnation seen for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncarnation {
    /// The agent.
    pub agent: String,
    /// The new incarnation.
    pub incarnation: Incarnation,
    /// Whether the agent had other incarnations before (its database was
    /// replaced, or another gateway runs with its id).
    pub known_agent: bool,
}

/// One agent as the store knows it ([`Query::agents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    /// The agent id.
    pub agent: String,
    /// The highest watermark (event time, ms) it has sent, if any.
    pub watermark: Option<i64>,
    /// Readings it reported dropped, over all its incarnations.
    pub dropped_readings: u64,
    /// Partials of its batches the collector refused, by reason
    /// (`time_future`, `time_past`, `expired`, and for batches refused
    /// whole `unmergeable`, `store_failed`), summed over its incarnations
    /// (saturating).
    pub refused: BTreeMap<String, Refusal>,
    /// Its incarnations, oldest first.
    pub incarnations: Vec<IncarnationState>,
}

/// One agent incarnation as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncarnationState {
    /// The incarnation.
    pub incarnation: Incarnation,
    /// Every batch sequence below it is applied (or was confirmed to the
    /// agent and is never sent again).
    pub applied_below: u64,
    /// Batch keys remembered at or above that mark.
    pub remembered: u64,
    /// Batches applied.
    pub batches: u64,
    /// Readings the agent reported dropped in them.
    pub dropped_readings: u64,
    /// Partials of its applied batches the collector refused, by reason
    /// (see [`Refusals`]); a reason never met is absent.
    pub refused: BTreeMap<String, Refusal>,
    /// When its first batch was applied (collector clock, ms since the
    /// Unix epoch).
    pub first_seen_ms: i64,
    /// When its last batch was applied.
    pub last_seen_ms: i64,
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

/// Who holds a lease after [`Leases::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The asking holder: it was taken or renewed.
    Ours,
    /// Another holder, whose lease has not expired.
    Theirs(String),
}

/// The answer of a store call.
pub type Answer<T> = Result<T, StoreError>;

/// Applying agents' batches (ingest's role).
pub trait Ingest: Send + Sync {
    /// Applies `batches` in one transaction; the report lists, per batch in
    /// order, whether it was new, and the agent incarnations seen for the
    /// first time. On error nothing is applied, except what a
    /// [`StoreError::Partly`] names as committed.
    fn apply_report(&self, batches: &[Batch]) -> impl Future<Output = Answer<Report>> + Send {
        self.apply_refused(batches, &[])
    }

    /// [`Ingest::apply_report`], also storing what the checks took out of
    /// each batch (`refused[i]` of `batches[i]`; missing entries: none) in
    /// the same transaction, for the batches that are new.
    fn apply_refused(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> impl Future<Output = Answer<Report>> + Send;

    /// Records `batches` as seen — de-duplicated and confirmed like applied
    /// ones — without merging any of their partials, storing `refused` with
    /// each new one as [`Ingest::apply_refused`] does: for batches refused
    /// whole after they failed to apply ([`Refusals::refuse_whole`]), so the
    /// refusal is counted once, durably, and a redelivery is a duplicate.
    /// Marks the batches' senders like an apply; moves no watermark (their
    /// data is not in the results).
    fn record_refused(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> impl Future<Output = Answer<Report>> + Send;

    /// [`Ingest::apply_report`], answering only whether each batch was new.
    fn apply(&self, batches: &[Batch]) -> impl Future<Output = Answer<Vec<Applied>>> + Send {
        async move { Ok(self.apply_report(batches).await?.applied) }
    }

    /// Whether the store takes writes now: one small write transaction
    /// (a row of `meta`) committed the way ingest commits, for readiness.
    fn probe(&self) -> impl Future<Output = Answer<()>> + Send;

    /// Registers the store's own metrics, if it has any, in the
    /// collector's registry (PostgreSQL: commits whose reply was lost).
    fn register_metrics(&self, _r: &mut Registry) {}
}

/// Reading results and progress (the query API's and dashboard's role).
pub trait Query: Send + Sync {
    /// Every series with at least one stored window, ordered by key text.
    fn series(&self) -> impl Future<Output = Answer<Vec<SeriesKey>>> + Send;

    /// The stored windows of `series` at `width` starting in `[from, to)`,
    /// ordered by start.
    fn windows(
        &self,
        series: &SeriesKey,
        width: Width,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Answer<Vec<StoredWindow>>> + Send;

    /// [`Query::windows`] of each of `series`, in order, in one query (the
    /// query API reads a whole selector).
    fn windows_of(
        &self,
        series: &[SeriesKey],
        width: Width,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Answer<Vec<Vec<StoredWindow>>>> + Send;

    /// The latest watermark each agent has reported, by agent.
    fn watermarks(&self) -> impl Future<Output = Answer<Vec<(String, i64)>>> + Send;

    /// Every agent with an applied batch, by agent id: its incarnations,
    /// de-duplication marks, watermark and dropped readings.
    fn agents(&self) -> impl Future<Output = Answer<Vec<AgentState>>> + Send;

    /// The progress of every agent that has reported `series`, by agent.
    fn progress(
        &self,
        series: &SeriesKey,
    ) -> impl Future<Output = Answer<Vec<AgentProgress>>> + Send;

    /// [`Query::progress`] of each of `series`, in order, in one query.
    fn progress_of(
        &self,
        series: &[SeriesKey],
    ) -> impl Future<Output = Answer<Vec<Vec<AgentProgress>>>> + Send;

    /// Those of `widths` at which at least one result is stored, in order
    /// (one indexed row looked at per width).
    fn stored_widths(&self, widths: &[Width]) -> impl Future<Output = Answer<Vec<Width>>> + Send;
}

/// Following the change feed (the sinks' role).
pub trait Feed: Send + Sync {
    /// Result rows at `width` whose last change number is greater than
    /// `after`, in change order, at most `limit`.
    fn changed_since(
        &self,
        width: Width,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Answer<Vec<Changed>>> + Send;

    /// Parks rows for the feed reader `name` (a sink): remembers the rows
    /// of `keys` (series, window start) at `width` until [`Feed::unpark`],
    /// so the reader's cursor can pass rows it cannot use yet (not final)
    /// without losing them. Parking a parked row changes nothing; keys of
    /// series never stored are ignored.
    fn park(
        &self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> impl Future<Output = Answer<()>> + Send;

    /// The rows `name` has parked at `width`, as stored now, whose change
    /// number is greater than `after`, in change order, at most `limit`.
    fn parked(
        &self,
        name: &str,
        width: Width,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Answer<Vec<Changed>>> + Send;

    /// Forgets parked rows of `name` (used or skipped); keys that are not
    /// parked are ignored.
    fn unpark(
        &self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> impl Future<Output = Answer<()>> + Send;

    /// The durable cursor called `name` (0 when never set).
    fn cursor(&self, name: &str) -> impl Future<Output = Answer<u64>> + Send;

    /// Stores the durable cursor called `name`. A cursor never moves back:
    /// a lower value than the stored one is ignored (an instance that lost
    /// a sink's lease while saving cannot undo its successor's progress).
    fn set_cursor(&self, name: &str, value: u64) -> impl Future<Output = Answer<()>> + Send;
}

/// Named leases: which instance runs a job that must run on one instance
/// at a time — a sink (`sink:<name>`), retention (`retention`); see
/// `crate::lease`.
pub trait Leases: Send + Sync {
    /// Takes the lease called `name` for `holder`, or renews it, until
    /// `ttl` from now by the store's clock (the database server's, so the
    /// instances' clocks need not agree). A lease another holder holds and
    /// that has not expired is left alone and its holder named.
    fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Answer<Lease>> + Send;

    /// Gives up the lease called `name` if `holder` holds it, so another
    /// instance can take it at once instead of after its expiry.
    fn release(&self, name: &str, holder: &str) -> impl Future<Output = Answer<()>> + Send;
}

/// Deleting expired results (the retention task's role,
/// [`crate::retention`]).
pub trait Expire: Send + Sync {
    /// The widths at which results are stored, ascending (one indexed
    /// look-up per width).
    fn widths(&self) -> impl Future<Output = Answer<Vec<Width>>> + Send;

    /// Makes ready what rows of `width` written around `now` (collector
    /// clock) will need, so that they expire cheaply (PostgreSQL: the time
    /// partitions of the current and next spans, and the BRIN summaries of
    /// the ended ones; SQLite: nothing).
    fn prepare(&self, width: Width, now: i64) -> impl Future<Output = Answer<()>> + Send;

    /// Deletes in one transaction at most `limit` result rows at `width`
    /// whose window starts before `before`, and the sinks' parked entries
    /// of those rows; answers how many rows it deleted (PostgreSQL: first
    /// drops every time partition wholly before `before`, counting its rows
    /// by the planner's estimate). Change numbers are untouched: a feed
    /// reader's cursor stays valid.
    fn expire(
        &self,
        width: Width,
        before: i64,
        limit: usize,
    ) -> impl Future<Output = Answer<usize>> + Send;

    /// Gives space freed by deletes back to the file system: one bounded
    /// step of at most `pages` pages (SQLite's incremental vacuum; nothing
    /// to do where deletes give space back themselves); answers the bytes
    /// given back, 0 when there is nothing left to give.
    fn reclaim(&self, pages: u32) -> impl Future<Output = Answer<u64>> + Send;

    /// The earliest window start stored at `width`, if any.
    fn oldest(&self, width: Width) -> impl Future<Output = Answer<Option<i64>>> + Send;
}

/// The role traits, to bring their methods into scope at once
/// (`use tributary_collector::store::prelude::*`).
pub mod prelude {
    pub use super::{Expire, Feed, Ingest, Leases, Query, Store};
}

/// A whole store: every role, as one cheap-to-clone handle the service
/// hands to ingest, the HTTP server and the sinks.
pub trait Store: Ingest + Query + Feed + Leases + Expire + Clone + 'static {}

impl<T: Ingest + Query + Feed + Leases + Expire + Clone + 'static> Store for T {}

/// Every stored window of every series at `width`, by (series, window start)
/// — the whole result set, for checks, exports and tests.
pub async fn all_windows<S: Query + ?Sized>(
    store: &S,
    width: Width,
) -> Answer<BTreeMap<(SeriesKey, i64), StoredWindow>> {
    let keys = store.series().await?;
    let rows = store.windows_of(&keys, width, i64::MIN, i64::MAX).await?;
    let mut out = BTreeMap::new();
    for (key, windows) in keys.into_iter().zip(rows) {
        for w in windows {
            out.insert((key.clone(), w.window.start()), w);
        }
    }
    Ok(out)
}

/// The roll-up widths of `rollups_ms`, checked.
pub(crate) fn rollup_widths(rollups_ms: &[i64]) -> Answer<Vec<Width>> {
    rollups_ms
        .iter()
        .map(|&w| Width::new(w).map_err(|_| StoreError::BadRollup(w)))
        .collect()
}

/// The agents of incarnation rows `rows` — (agent, incarnation, mark,
/// remembered keys, batches, dropped readings, first and last seen), by
/// agent then first seen — with their watermarks `watermarks` (by agent).
pub(crate) fn agents_of(
    rows: Vec<(String, IncarnationState)>,
    watermarks: &BTreeMap<String, i64>,
) -> Vec<AgentState> {
    let mut out: Vec<AgentState> = Vec::new();
    for (agent, inc) in rows {
        match out.last_mut() {
            Some(a) if a.agent == agent => {
                a.dropped_readings = a.dropped_readings.saturating_add(inc.dropped_readings);
                for (reason, r) in &inc.refused {
                    a.refused.entry(reason.clone()).or_default().add(*r);
                }
                a.incarnations.push(inc);
            }
            _ => out.push(AgentState {
                watermark: watermarks.get(&agent).copied(),
                agent,
                dropped_readings: inc.dropped_readings,
                refused: inc.refused.clone(),
                incarnations: vec![inc],
            }),
        }
    }
    out
}
