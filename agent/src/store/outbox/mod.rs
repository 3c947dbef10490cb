//! The outbox: closed partials waiting to be put in a batch, kept under a
//! byte limit by coarsening first and dropping only at the floor (DESIGN §4).
//! Every statement on the `outbox` table is in this module and [`shrink`].
//!
//! # Design
//! **Rows.** A row is a partial not yet in a batch: (series, window start,
//! width, readings, bytes, summary). Partials enter at a group commit
//! (`insert`) at the agent's window width, and leave when a batch is
//! formed (`oldest`, `remove`), oldest window first. A formed batch has a
//! fixed identity and may already be at the collector, so only rows — never
//! batches — are coarsened or dropped.
//!
//! **Levels.** The ladder `outbox.coarsen_widths_ms` (default 5 min, 1 h)
//! gives the levels above the agent's width; its last width is the floor.
//! Each level holds **at most one row per (series, window)**: coarsening
//! merges a partial into the row already at the coarser level (an `UPDATE`),
//! never adds a fragment beside it. Aligned windows nest, so the merge is
//! exact (counts, integer sums, sketches); only time resolution drops. The
//! rows' bytes are therefore bounded by series × coarse windows, not by
//! readings.
//!
//! **Budget.** `outbox.max_bytes` covers rows plus formed batches. Formed
//! batches may take at most a quarter of it ([`Limits::batch_share`]; the
//! store forms no batch past it, except one when none is in flight), so
//! batches formed after an outage never crowd out the partials that keep
//! arriving: rows always have at least three quarters.
//!
//! **Shrinking** ([`shrink`], inside the commit's transaction, when rows
//! exceed `max_bytes` minus the batches' bytes): the oldest half of the
//! rows at the finest level below the floor merge into the next level, level
//! by level, until they fit; the floor's rows are merged into too. Only
//! when every row is at the floor and they still do not fit are rows
//! dropped, oldest window first, every reading counted durably in the same
//! transaction (`meta.dropped`: not yet reported, carried by the next batch
//! as its delta and reset there; `meta.dropped_total`: never reset, the
//! `tributary_agent_readings_dropped_total` of every start).

pub(crate) mod shrink;

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};
use tributary_core::batch::Partial;
use tributary_core::{Width, Window};

use super::codec;
use super::config::OutboxConfig;
use super::error::{corrupt, StoreError};
use crate::window::Emitted;

pub(crate) use shrink::shrink;

/// Formed batches may take at most `max_bytes / BATCH_SHARE` bytes.
pub const BATCH_SHARE: u64 = 4;
/// A batch is cut to at most a quarter of the batches' share, so several
/// can be in flight at once.
const BATCHES_PER_SHARE: u64 = 4;

/// The outbox limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Byte limit of rows plus formed batches.
    pub max_bytes: u64,
    /// The coarsening ladder, finest first; the last is the floor.
    pub widths: Vec<Width>,
}

impl Limits {
    /// The limits `[outbox]` sets (widths that are not valid, which the
    /// config check reports, are left out).
    pub fn new(cfg: &OutboxConfig) -> Self {
        Limits {
            max_bytes: cfg.max_bytes,
            widths: cfg
                .coarsen_widths_ms
                .iter()
                .filter_map(|&w| Width::new(w).ok())
                .collect(),
        }
    }

    /// The bytes formed batches may take: a quarter of `max_bytes`.
    pub fn batch_share(&self) -> u64 {
        self.max_bytes / BATCH_SHARE
    }

    /// The bytes one batch may take (a batch of one partial may take more).
    pub fn batch_max_bytes(&self) -> u64 {
        (self.batch_share() / BATCHES_PER_SHARE).max(1)
    }

    /// The bytes rows may take while formed batches take `batch_bytes`.
    pub fn row_budget(&self, batch_bytes: u64) -> u64 {
        self.max_bytes.saturating_sub(batch_bytes)
    }

    /// The floor width (ms), if there is a ladder.
    pub fn floor(&self) -> Option<i64> {
        self.widths.last().map(|w| w.ms())
    }
}

/// Bytes of the outbox's rows per window width (ms). A width once seen
/// stays listed (at 0 when it empties), so its gauge shows the drop to 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WidthBytes(BTreeMap<i64, u64>);

impl WidthBytes {
    /// Adds `bytes` at `width`.
    pub(crate) fn add(&mut self, width: i64, bytes: u64) {
        *self.0.entry(width).or_default() += bytes;
    }

    /// Takes `bytes` away at `width`.
    pub(crate) fn sub(&mut self, width: i64, bytes: u64) {
        let e = self.0.entry(width).or_default();
        *e = e.saturating_sub(bytes);
    }

    /// Adds every width of `other`.
    pub(crate) fn add_all(&mut self, other: &WidthBytes) {
        for (&w, &b) in &other.0 {
            self.add(w, b);
        }
    }

    /// All bytes.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// (width ms, bytes), finest first.
    pub fn iter(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.0.iter().map(|(&w, &b)| (w, b))
    }

    /// The finest width holding bytes below `below` (ms).
    fn finest_below(&self, below: i64) -> impl Iterator<Item = i64> + '_ {
        self.0
            .iter()
            .filter(move |&(&w, &b)| b > 0 && w < below)
            .map(|(&w, _)| w)
    }
}

/// Bytes of the rows per width.
pub(crate) fn width_bytes(conn: &Connection) -> Result<WidthBytes, StoreError> {
    let mut st = conn.prepare("SELECT width, SUM(bytes) FROM outbox GROUP BY width")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = WidthBytes::default();
    for row in rows {
        let (w, b) = row?;
        out.add(w, u64::try_from(b).unwrap_or(0));
    }
    Ok(out)
}

/// Rows in the outbox.
pub(crate) fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Adds emitted partials; returns their bytes per width.
pub(crate) fn insert(tx: &Transaction<'_>, emitted: &[Emitted]) -> Result<WidthBytes, StoreError> {
    let mut added = WidthBytes::default();
    for e in emitted {
        let b = put(tx, i64::from(e.series), e.window, &e.summary)?;
        added.add(e.window.width().ms(), b);
    }
    Ok(added)
}

/// Inserts one row; returns its bytes.
fn put(
    tx: &Transaction<'_>,
    series: i64,
    window: Window,
    summary: &tributary_core::Summary,
) -> Result<u64, StoreError> {
    let blob = codec::summary(summary);
    let mut st = tx.prepare_cached(
        "INSERT INTO outbox(series, start, width, readings, bytes, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    st.execute(params![
        series,
        window.start(),
        window.width().ms(),
        count_col(summary.count()),
        blob.len() as i64,
        blob
    ])?;
    Ok(blob.len() as u64)
}

/// A count as stored in an INTEGER column.
fn count_col(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row taken for a batch.
#[derive(Debug)]
pub(crate) struct Taken {
    /// Row id.
    pub(crate) id: i64,
    /// Its bytes.
    pub(crate) bytes: u64,
    /// The partial, with its series key.
    pub(crate) partial: Partial,
}

/// The oldest rows (by window start), with their series keys: at most
/// `max` of them, and no more than needed to reach `max_bytes` of stored
/// summaries (a batch encodes each at least as large as it is stored, so
/// these are all the rows a batch of `max_bytes` could hold; at least one).
pub(crate) fn oldest(
    tx: &Transaction<'_>,
    max: usize,
    max_bytes: u64,
) -> Result<Vec<Taken>, StoreError> {
    let mut st = tx.prepare_cached(
        "SELECT o.id, s.key, o.start, o.width, o.bytes, o.summary FROM outbox o
         JOIN series s ON s.id = o.series ORDER BY o.start, o.id LIMIT ?1",
    )?;
    let mut rows = st.query(params![i64::try_from(max).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    let mut total = 0u64;
    while total < max_bytes {
        let Some(r) = rows.next()? else { break };
        let (id, key, start, width, bytes, blob): (i64, String, i64, i64, i64, Vec<u8>) = (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        );
        let series = codec::to_key(&key)?;
        let width = Width::new(width).map_err(|e| corrupt("outbox width", e))?;
        let window = Window::new(start, width).map_err(|e| corrupt("outbox window", e))?;
        let partial = Partial {
            series,
            window,
            summary: codec::to_summary(&blob)?,
        };
        let bytes = u64::try_from(bytes).unwrap_or(0);
        total += bytes.max(1);
        out.push(Taken { id, bytes, partial });
    }
    Ok(out)
}

/// Deletes rows by id.
pub(crate) fn remove(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
    for id in ids {
        del.execute(params![id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
