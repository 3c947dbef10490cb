//! Holding the outbox's rows under their budget: coarsening level by level
//! into the row already at the coarser level, and dropping — oldest window
//! first, every reading counted — only when every row is at the floor (see
//! the [outbox](super) design).

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Transaction};
use tributary_core::{Summary, Width, Window};

use super::{codec, count_col, put, remove, Limits, WidthBytes};
use crate::store::error::StoreError;

/// What [`shrink`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shrunk {
    /// Rows merged away by coarsening.
    pub(crate) coarsened: u64,
    /// Readings dropped at the floor.
    pub(crate) dropped_readings: u64,
}

/// Coarsens and, at the floor, drops rows until their bytes (`bytes`, kept
/// up to date) fit `budget`.
pub(crate) fn shrink(
    tx: &Transaction<'_>,
    limits: &Limits,
    budget: u64,
    bytes: &mut WidthBytes,
) -> Result<Shrunk, StoreError> {
    let mut out = Shrunk::default();
    while bytes.total() > budget {
        let moved = match next_step(bytes, limits) {
            Some((fine, next)) => coarsen(tx, fine, next, bytes, &mut out)?,
            None => false,
        };
        // At the floor — or when nothing could move (summaries overflow): drop.
        if !moved {
            drop_oldest(tx, budget, bytes, &mut out)?;
            break;
        }
    }
    if out.coarsened > 0 {
        tracing::info!(
            coarsened = out.coarsened,
            outbox_row_bytes = bytes.total(),
            "outbox over its byte limit: merged the oldest partials into coarser windows"
        );
    }
    Ok(out)
}

/// The finest width holding rows below the floor that the ladder can
/// coarsen, and the ladder width it merges into.
fn next_step(bytes: &WidthBytes, limits: &Limits) -> Option<(i64, Width)> {
    let floor = limits.floor()?;
    bytes.finest_below(floor).find_map(|fine| {
        limits
            .widths
            .iter()
            .find(|w| w.ms() > fine && w.ms() % fine == 0)
            .map(|&next| (fine, next))
    })
}

/// A row to move: (id, bytes, summary).
type Moving = (i64, u64, Summary);

/// Merges the oldest half of the rows at width `fine` (by window start)
/// into the rows at width `next`, one per (series, window): into the row
/// already there, or a new one. Returns whether any row moved (a group whose
/// summaries cannot merge — an overflow — stays where it is).
fn coarsen(
    tx: &Transaction<'_>,
    fine: i64,
    next: Width,
    bytes: &mut WidthBytes,
    out: &mut Shrunk,
) -> Result<bool, StoreError> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM outbox WHERE width = ?1",
        [fine],
        |r| r.get(0),
    )?;
    let take = (n + 1) / 2;
    let mut groups: BTreeMap<(i64, i64), Vec<Moving>> = BTreeMap::new();
    {
        let mut st = tx.prepare_cached(
            "SELECT id, series, start, bytes, summary FROM outbox WHERE width = ?1
             ORDER BY start, id LIMIT ?2",
        )?;
        let rows = st.query_map(params![fine, take], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        for row in rows {
            let (id, series, start, b, blob) = row?;
            let coarse = Window::containing(start, next).start();
            let s = codec::to_summary(&blob)?;
            groups.entry((series, coarse)).or_default().push((
                id,
                u64::try_from(b).unwrap_or(0),
                s,
            ));
        }
    }
    let mut moved = false;
    for ((series, start), rows) in groups {
        moved |= merge_into_level(tx, (series, start, next), rows, fine, bytes, out)?;
    }
    Ok(moved)
}

/// Merges `rows` (at width `fine`) into the row of `(series, start, width)`,
/// creating it if there is none; false if the summaries do not merge.
fn merge_into_level(
    tx: &Transaction<'_>,
    (series, start, width): (i64, i64, Width),
    rows: Vec<Moving>,
    fine: i64,
    bytes: &mut WidthBytes,
    out: &mut Shrunk,
) -> Result<bool, StoreError> {
    let existing: Option<(i64, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT id, bytes, summary FROM outbox WHERE series = ?1 AND start = ?2 AND width = ?3",
        )?
        .query_row(params![series, start, width.ms()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let mut merged = match &existing {
        Some((_, _, blob)) => codec::to_summary(blob)?,
        None => Summary::new(rows[0].2.quantum()),
    };
    for (_, _, s) in &rows {
        if merged.merge(s).is_err() {
            return Ok(false);
        }
    }
    let new_bytes = match &existing {
        Some((id, old, _)) => {
            let blob = codec::summary(&merged);
            tx.prepare_cached(
                "UPDATE outbox SET readings = ?2, bytes = ?3, summary = ?4 WHERE id = ?1",
            )?
            .execute(params![
                id,
                count_col(merged.count()),
                blob.len() as i64,
                blob
            ])?;
            bytes.sub(width.ms(), u64::try_from(*old).unwrap_or(0));
            out.coarsened += rows.len() as u64;
            blob.len() as u64
        }
        None => {
            let window =
                Window::new(start, width).map_err(|e| super::corrupt("outbox window", e))?;
            out.coarsened += rows.len() as u64 - 1;
            put(tx, series, window, &merged)?
        }
    };
    bytes.add(width.ms(), new_bytes);
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    remove(tx, &ids)?;
    for (_, b, _) in &rows {
        bytes.sub(fine, *b);
    }
    Ok(true)
}

/// Deletes rows, oldest window first, until their bytes fit `budget`,
/// counting their readings durably: `meta.dropped` (reported in the next
/// batch) and `meta.dropped_total`.
fn drop_oldest(
    tx: &Transaction<'_>,
    budget: u64,
    bytes: &mut WidthBytes,
    out: &mut Shrunk,
) -> Result<(), StoreError> {
    let mut gone = Vec::new();
    let mut dropped = 0u64;
    {
        let mut st =
            tx.prepare_cached("SELECT id, width, readings, bytes FROM outbox ORDER BY start, id")?;
        let mut rows = st.query([])?;
        while bytes.total() > budget {
            let Some(r) = rows.next()? else { break };
            let (id, width, readings, b): (i64, i64, i64, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            gone.push(id);
            bytes.sub(width, u64::try_from(b).unwrap_or(0));
            dropped += u64::try_from(readings).unwrap_or(0);
        }
    }
    remove(tx, &gone)?;
    if dropped > 0 {
        tx.execute(
            "UPDATE meta SET value = value + ?1 WHERE key IN ('dropped', 'dropped_total')",
            params![count_col(dropped)],
        )?;
    }
    out.dropped_readings += dropped;
    tracing::warn!(
        dropped_readings = dropped,
        partials = gone.len(),
        "outbox full with every partial at its floor width: dropped the oldest"
    );
    Ok(())
}
