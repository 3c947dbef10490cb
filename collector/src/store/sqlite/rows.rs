//! Step 5–6 of [`super::apply`]: writing one result row — a row seen for
//! the first time is a plain insert of its delta; a row whose committed
//! state the [`Cache`] holds, or that the insert finds stored, has the
//! delta folded into that state and is updated. Every row written takes
//! the next change number, and goes into the change feed's [`Log`] (with
//! the change it replaces, if any). Rows the cache does not hold whose
//! deltas come encoded (most rows at an agent's width) are inserted
//! [`INSERT_ROWS`] to a statement.

use std::ops::Range;

use rusqlite::{params, CachedStatement, Transaction};
use tributary_core::{SeriesKey, Summary, Window};

use super::cache::{Cache, Committed};
use super::feed_log::Log;
use super::schema::span;
use crate::merge::{self, RowKey};
use crate::store::codec::{decode_summary, encode_summary};
use crate::store::StoreError;

/// Rows one multi-row insert takes. A statement per row spent about a
/// sixth of the writer's time outside the B-tree (binding, opening and
/// closing its cursor, the statement's start and end); sixteen at once
/// share that: `store_bench --writers 0 --fan-in 1 --minutes 200 --runs 5`,
/// three alternating pairs, 370–428 k against 319–352 k partials/s (0.82–0.84
/// of the bare loop per CPU-second against 0.64–0.76); fan-in 5 and 20 the
/// same within noise (a run holding a stored row is checked row by row).
const INSERT_ROWS: usize = 16;

/// The columns of an insert, in the order the statements bind them.
const COLUMNS: usize = 7;

/// A row taking change number `change`, not yet written.
struct NewRow<'d> {
    key: RowKey,
    window: Window,
    series: &'d SeriesKey,
    change: i64,
}

/// Writes a transaction's result rows, in the table's order.
pub(super) struct RowWriter<'t, 'd> {
    insert: CachedStatement<'t>,
    insert_many: CachedStatement<'t>,
    select: CachedStatement<'t>,
    update: CachedStatement<'t>,
    cache: &'t mut Cache,
    /// Roll-up widths (ms): a new row at one of them is cached at once.
    rollups: &'t [i64],
    /// The last change number taken.
    change: i64,
    /// The rows written and the changes they replaced, for the feed.
    log: Log,
    /// New rows waiting for a multi-row insert, with where their deltas'
    /// bytes are in `pending_bytes`.
    pending: Vec<(NewRow<'d>, Range<usize>)>,
    pending_bytes: Vec<u8>,
}

impl<'t, 'd> RowWriter<'t, 'd> {
    /// A writer on `tx` whose next row takes change number `change + 1`.
    pub(super) fn new(
        tx: &'t Transaction<'_>,
        cache: &'t mut Cache,
        rollups: &'t [i64],
        change: i64,
    ) -> Result<Self, StoreError> {
        const INSERT: &str = "INSERT OR IGNORE INTO results (series, width, start, revision, summary, changed, span) VALUES ";
        // The `i`th row's parameters: `(?n+1, …, ?n+7)`.
        let row = |i: usize| {
            let params: Vec<String> = (1..=COLUMNS)
                .map(|c| format!("?{}", i * COLUMNS + c))
                .collect();
            format!("({})", params.join(", "))
        };
        let many: Vec<String> = (0..INSERT_ROWS).map(row).collect();
        Ok(RowWriter {
            insert: tx.prepare_cached(&format!("{INSERT}{}", row(0)))?,
            insert_many: tx.prepare_cached(&format!("{INSERT}{}", many.join(", ")))?,
            select: tx.prepare_cached(
                "SELECT revision, summary, changed FROM results WHERE width = ?2 AND span = ?4 AND series = ?1 AND start = ?3",
            )?,
            update: tx.prepare_cached(
                "UPDATE results SET revision = ?4, summary = ?5, changed = ?6 WHERE width = ?2 AND span = ?7 AND series = ?1 AND start = ?3",
            )?,
            cache,
            rollups,
            change,
            log: Log::default(),
            pending: Vec::with_capacity(INSERT_ROWS),
            pending_bytes: Vec::with_capacity(INSERT_ROWS * 64),
        })
    }

    /// Whether the cache holds row `key`'s committed state (then the row
    /// is folded, not inserted, and its delta's bytes are not needed).
    pub(super) fn cached(&self, key: &RowKey) -> bool {
        self.cache.holds(key)
    }

    /// Writes row `key` (of `series` in `window`) with `delta` merged in;
    /// `bytes` are `delta` encoded, given only for a row the cache does not
    /// hold (see [`RowWriter::cached`]). What it committed goes to `done`
    /// for the cache.
    pub(super) fn write(
        &mut self,
        (key, window, series): (RowKey, Window, &'d SeriesKey),
        delta: &Summary,
        bytes: Option<&[u8]>,
        done: &mut Committed,
    ) -> Result<(), StoreError> {
        self.change += 1;
        let (id, width, start) = key;
        self.log.written(width, (self.change, id, start));
        let new = NewRow {
            key,
            window,
            series,
            change: self.change,
        };
        if let Some(bytes) = bytes {
            debug_assert!(!self.cache.holds(&key), "bytes for a cached row");
            let at = self.pending_bytes.len();
            self.pending_bytes.extend_from_slice(bytes);
            self.pending.push((new, at..self.pending_bytes.len()));
            if self.pending.len() == INSERT_ROWS {
                self.flush(done)?;
            }
            return Ok(());
        }
        // Written in the table's order: the rows waiting go first.
        self.flush(done)?;
        match self.cache.take(&key) {
            Some(row) => {
                self.log.superseded(width, row.changed);
                self.fold(&new, (row.revision, row.summary), delta, done)
            }
            None => {
                if self.insert_one(&new, &encode_summary(delta)?)? {
                    self.inserted(&new, || Ok(delta.clone()), done)
                } else {
                    self.fold_stored(&new, delta, done)
                }
            }
        }
    }

    /// Writes the rows waiting, and hands back the last change number
    /// taken and the feed's log of the rows written.
    pub(super) fn finish(mut self, done: &mut Committed) -> Result<(i64, Log), StoreError> {
        self.flush(done)?;
        Ok((self.change, std::mem::take(&mut self.log)))
    }

    /// Inserts the rows waiting: [`INSERT_ROWS`] of them by one statement
    /// (checking afterwards, by its change number, which row a stored one
    /// kept out), fewer one by one.
    fn flush(&mut self, done: &mut Committed) -> Result<(), StoreError> {
        let mut pending = std::mem::take(&mut self.pending);
        let buffer = std::mem::take(&mut self.pending_bytes);
        let bytes_of = |at: &Range<usize>| &buffer[at.clone()];
        if pending.len() == INSERT_ROWS {
            for (i, (row, at)) in pending.iter().enumerate() {
                let (id, width, start) = row.key;
                let n = i * COLUMNS;
                let s = &mut self.insert_many;
                s.raw_bind_parameter(n + 1, id)?;
                s.raw_bind_parameter(n + 2, width)?;
                s.raw_bind_parameter(n + 3, start)?;
                s.raw_bind_parameter(n + 4, merge::FIRST_REVISION)?;
                s.raw_bind_parameter(n + 5, bytes_of(at))?;
                s.raw_bind_parameter(n + 6, row.change)?;
                s.raw_bind_parameter(n + 7, span(width, start))?;
            }
            let all = self.insert_many.raw_execute()? == INSERT_ROWS;
            for (row, at) in pending.drain(..) {
                let delta = || decode_summary(bytes_of(&at));
                if all {
                    self.inserted(&row, delta, done)?;
                    continue;
                }
                let stored = self.stored(&row)?;
                if stored.2 == row.change {
                    self.inserted(&row, delta, done)?;
                } else {
                    self.fold_read(&row, stored, &delta()?, done)?;
                }
            }
        } else {
            for (row, at) in pending.drain(..) {
                let delta = || decode_summary(bytes_of(&at));
                if self.insert_one(&row, bytes_of(&at))? {
                    self.inserted(&row, delta, done)?;
                } else {
                    self.fold_stored(&row, &delta()?, done)?;
                }
            }
        }
        self.pending = pending;
        self.pending_bytes = buffer;
        self.pending_bytes.clear();
        Ok(())
    }

    /// Inserts `row` with its delta's `bytes` at the first revision, unless
    /// it is stored: whether it was inserted.
    fn insert_one(&mut self, row: &NewRow<'_>, bytes: &[u8]) -> Result<bool, StoreError> {
        let (id, width, start) = row.key;
        let first = params![
            id,
            width,
            start,
            merge::FIRST_REVISION,
            bytes,
            row.change,
            span(width, start)
        ];
        Ok(self.insert.execute(first)? == 1)
    }

    /// `row` was inserted with `delta`. A roll-up row is cached at once: it
    /// is merged into by every group that reaches its window, but most rows
    /// at an agent's width are written once (fan-in 1), and caching them
    /// cost a tenth of the transaction in churn (they are cached on their
    /// second write).
    fn inserted(
        &self,
        row: &NewRow<'_>,
        delta: impl FnOnce() -> Result<Summary, StoreError>,
        done: &mut Committed,
    ) -> Result<(), StoreError> {
        if self.rollups.contains(&row.key.1) {
            done.rows
                .push((row.key, (merge::FIRST_REVISION, delta()?, row.change)));
        }
        Ok(())
    }

    /// The stored (revision, summary bytes, change) of `row`.
    fn stored(&mut self, row: &NewRow<'_>) -> Result<(u32, Vec<u8>, i64), StoreError> {
        let (id, width, start) = row.key;
        Ok(self
            .select
            .query_row(params![id, width, start, span(width, start)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?)
    }

    /// Folds `delta` into the stored state of `row`, which an insert found.
    fn fold_stored(
        &mut self,
        row: &NewRow<'_>,
        delta: &Summary,
        done: &mut Committed,
    ) -> Result<(), StoreError> {
        let stored = self.stored(row)?;
        self.fold_read(row, stored, delta, done)
    }

    /// Folds `delta` into `row`'s stored (revision, summary bytes, change),
    /// as read back, taking that change off the feed's log.
    fn fold_read(
        &mut self,
        row: &NewRow<'_>,
        (revision, bytes, changed): (u32, Vec<u8>, i64),
        delta: &Summary,
        done: &mut Committed,
    ) -> Result<(), StoreError> {
        self.log.superseded(row.key.1, changed);
        self.fold(row, (revision, decode_summary(&bytes)?), delta, done)
    }

    /// Updates `row` to its committed state `stored` with `delta` merged in.
    fn fold(
        &mut self,
        row: &NewRow<'_>,
        stored: (u32, Summary),
        delta: &Summary,
        done: &mut Committed,
    ) -> Result<(), StoreError> {
        let (id, width, start) = row.key;
        let (revision, summary) = merge::fold_into(stored, delta, row.series, row.window)?;
        let update = params![
            id,
            width,
            start,
            revision,
            encode_summary(&summary)?,
            row.change,
            span(width, start)
        ];
        if self.update.execute(update)? != 1 {
            // Only possible if the file changed behind SQLite's back.
            self.cache.check_version(i64::MIN);
            return Err(StoreError::Backend(
                "a cached result row is missing from the database; cache cleared".into(),
            ));
        }
        done.rows.push((row.key, (revision, summary, row.change)));
        Ok(())
    }
}
