//! Keeping the outbox under its byte limit: coarsen first, drop only at the
//! floor (DESIGN §4).
//!
//! # Design
//! Only partials not yet in a batch are touched (a formed batch has a fixed
//! identity and may already be at the collector). While over the limit:
//! take the finest width present below the floor, merge the oldest half of
//! the partials at that width into the next coarser width of the ladder
//! (aligned windows nest, so this is an exact merge per series: counts,
//! sums and sketches stay exact, only time resolution drops); once
//! everything is at the floor width, delete the oldest partials and count
//! every reading they held.

use std::collections::BTreeMap;

use rusqlite::{params, Transaction};
use tributary_core::{Summary, Width, Window};

use super::{decode_summary, encode_summary, StoreError};

/// The outbox limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Byte limit of partials plus formed batches.
    pub max_bytes: u64,
    /// The coarsening ladder, finest first; the last is the floor.
    pub widths: Vec<Width>,
}

/// What [`shrink`] did.
#[derive(Debug, Default)]
pub(crate) struct Shrunk {
    pub(crate) coarsened: u64,
    pub(crate) dropped_readings: u64,
    pub(crate) partial_bytes: u64,
}

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
    let floor = limits.widths.last().map(|w| w.ms());
    loop {
        let all = rows(tx)?;
        let total: u64 = all.iter().map(|r| r.bytes as u64).sum();
        out.partial_bytes = total;
        if total + batch_bytes <= limits.max_bytes {
            return Ok(out);
        }
        // The finest width present that can still be coarsened.
        let fine = all
            .iter()
            .map(|r| r.width)
            .filter(|&w| floor.is_some_and(|f| w < f))
            .min();
        let next = fine.and_then(|f| {
            limits
                .widths
                .iter()
                .find(|w| w.ms() > f && w.ms() % f == 0)
                .copied()
        });
        let (Some(fine), Some(next)) = (fine, next) else {
            // At the floor: drop the oldest until it fits.
            let mut total = total;
            let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            for r in &all {
                if total + batch_bytes <= limits.max_bytes {
                    break;
                }
                del.execute(params![r.id])?;
                total -= r.bytes as u64;
                out.dropped_readings += r.readings as u64;
            }
            out.partial_bytes = total;
            tracing::warn!(
                dropped_readings = out.dropped_readings,
                "outbox full at its floor width: dropped the oldest partials"
            );
            return Ok(out);
        };
        let at_fine: Vec<&Row> = all.iter().filter(|r| r.width == fine).collect();
        let take = at_fine.len().div_ceil(2);
        let mut groups: BTreeMap<(i64, i64), Vec<i64>> = BTreeMap::new();
        for r in &at_fine[..take] {
            let w = Window::containing(r.start, next);
            groups.entry((r.series, w.start())).or_default().push(r.id);
        }
        let mut get = tx.prepare_cached("SELECT summary FROM outbox WHERE id = ?1")?;
        let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
        let mut ins = tx.prepare_cached(
            "INSERT INTO outbox(series, start, width, readings, bytes, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut progressed = false;
        for ((series, start), ids) in groups {
            let mut merged: Option<Summary> = None;
            let mut ok = true;
            for id in &ids {
                let blob: Vec<u8> = get.query_row(params![id], |r| r.get(0))?;
                let s = decode_summary(&blob)?;
                match merged.as_mut() {
                    None => merged = Some(s),
                    Some(m) => {
                        if m.merge(&s).is_err() {
                            ok = false;
                            break;
                        }
                    }
                }
            }
            let Some(m) = merged.filter(|_| ok) else {
                continue;
            };
            for id in &ids {
                del.execute(params![id])?;
            }
            let blob = encode_summary(&m);
            ins.execute(params![
                series,
                start,
                next.ms(),
                m.count() as i64,
                blob.len() as i64,
                blob
            ])?;
            out.coarsened += ids.len() as u64 - 1;
            progressed = true;
        }
        if !progressed {
            // Nothing could be merged (summaries overflow): fall through to
            // dropping by pretending the floor is reached.
            let mut total = total;
            for r in &all {
                if total + batch_bytes <= limits.max_bytes {
                    break;
                }
                del.execute(params![r.id])?;
                total -= r.bytes as u64;
                out.dropped_readings += r.readings as u64;
            }
            out.partial_bytes = total;
            return Ok(out);
        }
        tracing::info!(
            from_ms = fine,
            to_ms = next.ms(),
            coarsened = out.coarsened,
            "outbox over its byte limit: coarsened the oldest partials"
        );
    }
}
