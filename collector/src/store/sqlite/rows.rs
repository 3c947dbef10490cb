//! Step 5–6 of [`super::apply`]: writing one result row — a row seen for
//! the first time is a plain insert of its delta; a row whose committed
//! state the [`Cache`] holds, or that the insert finds stored, has the
//! delta folded into that state and is updated. Every row written takes
//! the next change number, and goes into the change feed's [`Log`] (with
//! the change it replaces, if any).

use rusqlite::{params, CachedStatement, Transaction};
use tributary_core::{SeriesKey, Summary, Window};

use super::cache::{Cache, Committed};
use super::feed_log::Log;
use super::schema::span;
use crate::merge::{self, RowKey};
use crate::store::codec::{decode_summary, encode_summary};
use crate::store::StoreError;

/// Writes a transaction's result rows, in the table's order.
pub(super) struct RowWriter<'t> {
    insert: CachedStatement<'t>,
    select: CachedStatement<'t>,
    update: CachedStatement<'t>,
    cache: &'t mut Cache,
    /// Roll-up widths (ms): a new row at one of them is cached at once.
    rollups: &'t [i64],
    /// The last change number taken.
    pub(super) change: i64,
    /// The rows written and the changes they replaced, for the feed.
    pub(super) log: Log,
}

impl<'t> RowWriter<'t> {
    /// A writer on `tx` whose next row takes change number `change + 1`.
    pub(super) fn new(
        tx: &'t Transaction<'_>,
        cache: &'t mut Cache,
        rollups: &'t [i64],
        change: i64,
    ) -> Result<Self, StoreError> {
        Ok(RowWriter {
            insert: tx.prepare_cached(
                "INSERT OR IGNORE INTO results (series, width, start, revision, summary, changed, span) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
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
        })
    }

    /// Whether the cache holds row `key`'s committed state (then the row
    /// is folded, not inserted, and its delta's bytes are not needed).
    pub(super) fn cached(&self, key: &RowKey) -> bool {
        self.cache.holds(key)
    }

    /// Writes row `key` (of `series` in `window`) with `delta` merged in;
    /// `bytes` are `delta` encoded, if already done. What it committed
    /// goes to `done` for the cache.
    pub(super) fn write(
        &mut self,
        (key, window, series): (RowKey, Window, &SeriesKey),
        delta: &Summary,
        bytes: Option<Vec<u8>>,
        done: &mut Committed,
    ) -> Result<(), StoreError> {
        self.change += 1;
        let (id, width, start) = key;
        let span = span(width, start);
        self.log.written(width, (self.change, id, start));
        let (stored, replaced) = match self.cache.take(&key) {
            Some(row) => ((row.revision, row.summary), row.changed),
            None => {
                // A row seen for the first time: a plain insert of the
                // delta at the first revision.
                let bytes = match bytes {
                    Some(b) => b,
                    None => encode_summary(delta)?,
                };
                let first = params![
                    id,
                    width,
                    start,
                    merge::FIRST_REVISION,
                    bytes,
                    self.change,
                    span
                ];
                if self.insert.execute(first)? == 1 {
                    // Cached on its second write: a roll-up row is merged
                    // into by every group that reaches its window, but most
                    // rows at an agent's width are written once (fan-in 1),
                    // and caching them cost a tenth of the transaction in
                    // churn.
                    if self.rollups.contains(&width) {
                        done.rows
                            .push((key, (merge::FIRST_REVISION, delta.clone(), self.change)));
                    }
                    return Ok(());
                }
                let (revision, bytes, changed): (u32, Vec<u8>, i64) = self
                    .select
                    .query_row(params![id, width, start, span], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                ((revision, decode_summary(&bytes)?), changed)
            }
        };
        self.log.superseded(width, replaced);
        let (revision, summary) = merge::fold_into(stored, delta, series, window)?;
        let row = params![
            id,
            width,
            start,
            revision,
            encode_summary(&summary)?,
            self.change,
            span
        ];
        if self.update.execute(row)? != 1 {
            // Only possible if the file changed behind SQLite's back.
            self.cache.check_version(i64::MIN);
            return Err(StoreError::Backend(
                "a cached result row is missing from the database; cache cleared".into(),
            ));
        }
        done.rows.push((key, (revision, summary, self.change)));
        Ok(())
    }
}
