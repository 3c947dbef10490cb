//! The SQLite store's retention SQL: expired result rows deleted in bounded
//! batches by the writer (one `IMMEDIATE` transaction each, found as a range
//! of the primary key's `(width, span)` prefix: the table is clustered time
//! first, see `schema.rs`), the writer's cache told, and
//! freed pages given back by `PRAGMA incremental_vacuum` in bounded steps.
//!
//! `auto_vacuum = INCREMENTAL` is set on a new database before its first
//! table ([`super::schema`]); an existing database is switched over by one
//! `VACUUM` at migration when it is small, otherwise deletes free pages for
//! reuse and the file keeps its size until an operator runs
//! `PRAGMA auto_vacuum = INCREMENTAL; VACUUM;` (see `config/collector.toml`).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tributary_core::Width;

use super::apply::Writer;
use super::schema::span;
use crate::store::codec::corrupt;
use crate::store::StoreError;

/// The widths at which results are stored, ascending: a skip-scan of the
/// primary key's first column, one look-up per width.
pub(super) fn widths(c: &Connection) -> Result<Vec<Width>, StoreError> {
    let mut stmt = c.prepare_cached(
        "WITH RECURSIVE w(x) AS (
             SELECT MIN(width) FROM results
             UNION ALL
             SELECT (SELECT MIN(width) FROM results WHERE width > x) FROM w WHERE x IS NOT NULL)
         SELECT x FROM w WHERE x IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    let mut out = Vec::new();
    for ms in rows {
        let ms = ms?;
        out.push(Width::new(ms).map_err(|e| corrupt("result width", e))?);
    }
    Ok(out)
}

/// The earliest window start stored at `width`.
pub(super) fn oldest(c: &Connection, width: Width) -> Result<Option<i64>, StoreError> {
    // The oldest span first (one seek), then the least start within it.
    Ok(c.query_row(
        "SELECT MIN(start) FROM results WHERE width = ?1
           AND span = (SELECT MIN(span) FROM results WHERE width = ?1)",
        [width.ms()],
        |r| r.get::<_, Option<i64>>(0),
    )
    .optional()?
    .flatten())
}

/// Deletes at most `limit` rows at `width` starting before `before`, and
/// every parked entry of an expired row at `width`, in one transaction.
pub(super) fn expire(
    w: &mut Writer,
    width: Width,
    before: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let tx = w
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Oldest spans first, in the key's order (no sort); the last span may
    // hold windows on both sides of the cut.
    // Each deleted row's change number leaves the feed's log with it.
    let gone = tx
        .prepare(
            "DELETE FROM results WHERE (width, span, series, start) IN (
                 SELECT width, span, series, start FROM results
                 WHERE width = ?1 AND span <= ?4 AND start < ?2 ORDER BY span LIMIT ?3)
             RETURNING width, changed",
        )?
        .query_map(
            params![width.ms(), before, limit, span(width.ms(), before)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<Vec<(i64, i64)>, _>>()?;
    let n = gone.len();
    super::feed_log::supersede(&tx, gone)?;
    if n > 0 {
        tx.execute(
            "DELETE FROM parked WHERE width = ?1 AND start < ?2",
            params![width.ms(), before],
        )?;
    }
    tx.commit()?;
    // Only after the commit: the cache is a copy of committed rows.
    w.cache.forget_before(width.ms(), before);
    Ok(n)
}

/// Gives at most `pages` free pages back (one step, one transaction);
/// answers the bytes given back.
pub(super) fn reclaim(w: &mut Writer, pages: u32) -> Result<u64, StoreError> {
    let c = &w.conn;
    let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    // 2: INCREMENTAL; in other modes incremental_vacuum does nothing.
    if mode != 2 {
        return Ok(0);
    }
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let free = |c: &Connection| c.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0));
    let before = free(c)?;
    if before == 0 {
        return Ok(0);
    }
    // The pragma answers a row per page freed: drain them all.
    let mut stmt = c.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    drop(rows);
    let after = free(c)?;
    Ok(u64::try_from(before.saturating_sub(after).saturating_mul(size)).unwrap_or(0))
}
