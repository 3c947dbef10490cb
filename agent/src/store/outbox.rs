//! The outbox: closed partials waiting to be put in a batch, kept under a
//! byte limit by coarsening first and dropping only at the floor (DESIGN §4).
//! Every statement on the `outbox` table is in this module.
//!
//! # Design
//! Partials enter at a group commit (`insert`) and leave, oldest first,
//! when a batch is formed (`oldest`, `remove`). Only partials not yet in
//! a batch are touched by the limit (a formed batch has a fixed identity and
//! may already be at the collector). While partials plus formed batches are
//! over `outbox.max_bytes` (`shrink`): take the finest width present below
//! the floor, merge the oldest half of the partials at that width into the
//! next coarser width of the ladder (aligned windows nest, so this is an
//! exact merge per series: counts, sums and sketches stay exact, only time
//! resolution drops); once everything is at the floor width, delete the
//! oldest partials and count every reading they held, durably (`meta`
//! `dropped`, reported upstream in the next batch).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};
use tributary_core::batch::Partial;
use tributary_core::{Summary, Width, Window};

use super::codec;
use super::config::OutboxConfig;
use super::error::{corrupt, StoreError};
use crate::window::Emitted;

/// The outbox limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Byte limit of partials plus formed batches.
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
}

/// Bytes of the partials in the outbox.
pub(crate) fn bytes(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM outbox", [], |r| {
        r.get(0)
    })?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Partials in the outbox.
pub(crate) fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Adds emitted partials; returns their bytes.
pub(crate) fn insert(tx: &Transaction<'_>, emitted: &[Emitted]) -> Result<u64, StoreError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO outbox(series, start, width, readings, bytes, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut added = 0u64;
    for e in emitted {
        let blob = codec::summary(&e.summary);
        added += blob.len() as u64;
        st.execute(params![
            i64::from(e.series),
            e.window.start(),
            e.window.width().ms(),
            e.summary.count() as i64,
            blob.len() as i64,
            blob
        ])?;
    }
    Ok(added)
}

/// The oldest `max` partials, with their series keys: (row id, bytes, partial).
pub(crate) fn oldest(
    tx: &Transaction<'_>,
    max: usize,
) -> Result<Vec<(i64, u64, Partial)>, StoreError> {
    let mut st = tx.prepare_cached(
        "SELECT o.id, s.key, o.start, o.width, o.bytes, o.summary FROM outbox o
         JOIN series s ON s.id = o.series ORDER BY o.id LIMIT ?1",
    )?;
    let rows = st.query_map(params![i64::try_from(max).unwrap_or(i64::MAX)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Vec<u8>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key, start, width, bytes, blob) = row?;
        let series = codec::to_key(&key)?;
        let width = Width::new(width).map_err(|e| corrupt("outbox width", e))?;
        let window = Window::new(start, width).map_err(|e| corrupt("outbox window", e))?;
        let partial = Partial {
            series,
            window,
            summary: codec::to_summary(&blob)?,
        };
        out.push((id, u64::try_from(bytes).unwrap_or(0), partial));
    }
    Ok(out)
}

/// Deletes partials by row id.
pub(crate) fn remove(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
    for id in ids {
        del.execute(params![id])?;
    }
    Ok(())
}

/// What [`shrink`] did.
#[derive(Debug, Default)]
pub(crate) struct Shrunk {
    pub(crate) coarsened: u64,
    pub(crate) dropped_readings: u64,
    pub(crate) partial_bytes: u64,
}

/// The size-relevant columns of an outbox row.
struct Row {
    id: i64,
    series: i64,
    start: i64,
    width: i64,
    readings: i64,
    bytes: i64,
}

fn rows(tx: &Transaction<'_>) -> Result<Vec<Row>, StoreError> {
    let mut st = tx.prepare_cached(
        "SELECT id, series, start, width, readings, bytes FROM outbox ORDER BY start, id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(Row {
            id: r.get(0)?,
            series: r.get(1)?,
            start: r.get(2)?,
            width: r.get(3)?,
            readings: r.get(4)?,
            bytes: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Coarsens and, at the floor, drops unbatched partials until partials plus
/// `batch_bytes` fit `limits.max_bytes`.
pub(crate) fn shrink(
    tx: &Transaction<'_>,
    limits: &Limits,
    batch_bytes: u64,
) -> Result<Shrunk, StoreError> {
    let mut out = Shrunk::default();
    loop {
        let all = rows(tx)?;
        out.partial_bytes = all.iter().map(|r| r.bytes as u64).sum();
        if out.partial_bytes + batch_bytes <= limits.max_bytes {
            return Ok(out);
        }
        // Coarsen the finest width that can still be coarsened; at the floor
        // — or when nothing could be merged (summaries overflow) — drop.
        let coarsened = match next_step(&all, limits) {
            Some((fine, next)) => coarsen(tx, &all, fine, next)?.map(|n| (fine, next, n)),
            None => None,
        };
        let Some((fine, next, merged_away)) = coarsened else {
            drop_oldest(tx, &all, limits.max_bytes, batch_bytes, &mut out)?;
            return Ok(out);
        };
        out.coarsened += merged_away;
        tracing::info!(
            from_ms = fine,
            to_ms = next.ms(),
            coarsened = out.coarsened,
            "outbox over its byte limit: coarsened the oldest partials"
        );
    }
}

/// The finest width present below the floor and the ladder width it merges
/// into, if any.
fn next_step(all: &[Row], limits: &Limits) -> Option<(i64, Width)> {
    let floor = limits.widths.last()?.ms();
    let fine = all.iter().map(|r| r.width).filter(|&w| w < floor).min()?;
    let next = limits
        .widths
        .iter()
        .find(|w| w.ms() > fine && w.ms() % fine == 0)?;
    Some((fine, *next))
}

/// Merges the oldest half of the partials at width `fine` into windows of
/// `next`, per series (a lone partial just moves to the wider window);
/// returns how many partials were merged away, or `None` if no group could
/// be merged (their summaries overflow).
fn coarsen(
    tx: &Transaction<'_>,
    all: &[Row],
    fine: i64,
    next: Width,
) -> Result<Option<u64>, StoreError> {
    let at_fine: Vec<&Row> = all.iter().filter(|r| r.width == fine).collect();
    let take = at_fine.len().div_ceil(2);
    let mut groups: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
    for r in &at_fine[..take] {
        let w = Window::containing(r.start, next);
        groups.entry((r.series, w.start())).or_default().push(r.id);
    }
    let mut get = tx.prepare_cached("SELECT summary FROM outbox WHERE id = ?1")?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO outbox(series, start, width, readings, bytes, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut merged_away = None;
    'groups: for ((series, start), ids) in groups {
        let mut merged: Option<Summary> = None;
        for id in &ids {
            let blob: Vec<u8> = get.query_row(params![id], |r| r.get(0))?;
            let s = codec::to_summary(&blob)?;
            match merged.as_mut() {
                None => merged = Some(s),
                // A group that cannot merge (overflow) stays as it is.
                Some(m) => {
                    if m.merge(&s).is_err() {
                        continue 'groups;
                    }
                }
            }
        }
        let Some(m) = merged else { continue };
        remove(tx, &ids)?;
        let blob = codec::summary(&m);
        ins.execute(params![
            series,
            start,
            next.ms(),
            m.count() as i64,
            blob.len() as i64,
            blob
        ])?;
        *merged_away.get_or_insert(0) += ids.len() as u64 - 1;
    }
    Ok(merged_away)
}

/// Deletes the oldest partials until the outbox fits, counting their
/// readings durably (`meta.dropped`, reported in the next batch).
fn drop_oldest(
    tx: &Transaction<'_>,
    all: &[Row],
    max_bytes: u64,
    batch_bytes: u64,
    out: &mut Shrunk,
) -> Result<(), StoreError> {
    let mut gone = Vec::new();
    let mut dropped = 0u64;
    for r in all {
        if out.partial_bytes + batch_bytes <= max_bytes {
            break;
        }
        gone.push(r.id);
        out.partial_bytes -= r.bytes as u64;
        dropped += r.readings as u64;
    }
    remove(tx, &gone)?;
    if dropped > 0 {
        tx.execute(
            "UPDATE meta SET value = value + ?1 WHERE key = 'dropped'",
            params![i64::try_from(dropped).unwrap_or(i64::MAX)],
        )?;
    }
    out.dropped_readings += dropped;
    tracing::warn!(
        dropped_readings = out.dropped_readings,
        "outbox full at its floor width: dropped the oldest partials"
    );
    Ok(())
}
