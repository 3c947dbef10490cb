//! The SQLite change feed's log: which result rows each transaction wrote,
//! in entries per (transaction, width), instead of an index entry per row.
//!
//! # Design
//! A sink reads the rows at a width whose change number is above its
//! cursor, in change order. Up to schema version 9 an index on
//! `results (width, changed)` answered that, at the price of a second
//! B-tree insert for every row written (and a delete for every rewrite):
//! on `store_bench --fan-in 1` a fifth of the database's bytes and a
//! quarter of the write time. From version 10 the writer records, per
//! width, the keys of the rows it wrote in one transaction as one entry:
//! `feed (width, first, last, keys, live)` — the range of change numbers
//! the transaction took at that width (several entries when it wrote more
//! than [`ENTRY_KEYS`] rows there), how many keys the entry lists and
//! how many of them still name their row's latest change — and
//! `feed_keys (width, first, list)`, the keys as varint deltas
//! ([`encode`]). Change numbers of one width never overlap between
//! transactions (SQLite serialises writers), so entries are disjoint and
//! the feed is the entries after a cursor, in order, each key looked up by
//! the primary key and kept if the row still carries that change.
//!
//! # Keeping the log small
//! A key dies when its row is rewritten (a roll-up merged into again, a
//! late partial) or deleted (retention). The writer knows the old change
//! number of every row it rewrites and retention gets those of the rows it
//! deletes (`RETURNING`), so each death takes one from its entry's `live`
//! ([`supersede`]): an entry with none left is deleted, and one with at
//! most a quarter of its keys alive is rewritten with only those
//! ([`COMPACT_AT`]). The log therefore holds at most about four keys per
//! live row, a few bytes each, and reading it never walks dead entries.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::schema::span;
use crate::store::codec::{change_number, corrupt, feed_bounds, parse_key, stored};
use crate::store::{Changed, StoreError};
use tributary_core::Width;

/// An entry is rewritten with its live keys once at most one in this many
/// of its keys is alive (and it lists at least [`COMPACT_MIN`]).
const COMPACT_AT: i64 = 4;

/// Entries listing fewer keys are left as they are until they die: the
/// look-ups of a rewrite would cost more than the bytes it saves.
const COMPACT_MIN: i64 = 32;

/// Keys an entry lists at most: a transaction writing more rows at one
/// width gets several entries. It bounds what a feed read decodes to
/// answer one page, and what a compaction looks up in the writer's
/// transaction.
const ENTRY_KEYS: usize = 4_096;

/// A result row as the log names it: its change number, series id and
/// window start (its width is the entry's).
pub(super) type Key = (i64, i64, i64);

/// What one transaction wrote and overwrote, per width, for [`Log::commit`].
#[derive(Debug, Default)]
pub(super) struct Log {
    /// (width, key) of every row written.
    written: Vec<(i64, Key)>,
    /// (width, old change number) of every row rewritten.
    superseded: Vec<(i64, i64)>,
}

impl Log {
    /// Row `key` at `width` was written.
    pub(super) fn written(&mut self, width: i64, key: Key) {
        self.written.push((width, key));
    }

    /// The row at `width` that carried change number `change` was
    /// rewritten.
    pub(super) fn superseded(&mut self, width: i64, change: i64) {
        self.superseded.push((width, change));
    }

    /// Takes the superseded keys off their entries and adds one entry per
    /// width written, in `tx`.
    pub(super) fn commit(mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        supersede(tx, std::mem::take(&mut self.superseded))?;
        self.written.sort_unstable();
        for run in self.written.chunk_by(|a, b| a.0 == b.0) {
            let width = run[0].0;
            for part in run.chunks(ENTRY_KEYS) {
                add_entry(tx, width, part.iter().map(|(_, k)| *k))?;
            }
        }
        Ok(())
    }
}

/// Adds the entry of `keys` (in change order) at `width`.
fn add_entry(
    tx: &Connection,
    width: i64,
    keys: impl Iterator<Item = Key>,
) -> Result<(), StoreError> {
    let keys: Vec<Key> = keys.collect();
    let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
        return Ok(());
    };
    let n = i64::try_from(keys.len()).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT INTO feed (width, first, last, keys, live) VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![width, first.0, last.0, n])?;
    tx.prepare_cached("INSERT INTO feed_keys (width, first, list) VALUES (?1, ?2, ?3)")?
        .execute(params![width, first.0, encode(width, &keys)?])?;
    Ok(())
}

/// Takes each (width, change) of `gone` — a row that carried that change
/// and no longer does — off the live count of its entry; deletes entries
/// left with none and compacts those left sparse. A change no entry holds
/// is passed over (none should be: migration 10 logged every stored row).
pub(super) fn supersede(tx: &Connection, mut gone: Vec<(i64, i64)>) -> Result<(), StoreError> {
    if gone.is_empty() {
        return Ok(());
    }
    gone.sort_unstable();
    let mut find = tx.prepare_cached(
        "SELECT first, last FROM feed WHERE width = ?1 AND first <= ?2 ORDER BY first DESC LIMIT 1",
    )?;
    // (width, first, last, deaths) per entry touched, in order.
    let mut hit: Vec<(i64, i64, i64, i64)> = Vec::new();
    for (width, change) in gone {
        match hit.last_mut() {
            Some((w, first, last, n)) if *w == width && (*first..=*last).contains(&change) => {
                *n += 1;
                continue;
            }
            _ => {}
        }
        let entry: Option<(i64, i64)> = find
            .query_row(params![width, change], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((first, last)) = entry.filter(|&(_, last)| change <= last) {
            hit.push((width, first, last, 1));
        }
    }
    let mut take = tx.prepare_cached(
        "UPDATE feed SET live = live - ?3 WHERE width = ?1 AND first = ?2 RETURNING live, keys",
    )?;
    for (width, first, _, n) in hit {
        let (live, keys): (i64, i64) =
            take.query_row(params![width, first, n], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if live <= 0 {
            drop_entry(tx, width, first)?;
        } else if keys >= COMPACT_MIN && live.saturating_mul(COMPACT_AT) <= keys {
            compact(tx, width, first)?;
        }
    }
    Ok(())
}

/// Deletes the entry at (`width`, `first`).
fn drop_entry(tx: &Connection, width: i64, first: i64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM feed WHERE width = ?1 AND first = ?2")?
        .execute(params![width, first])?;
    tx.prepare_cached("DELETE FROM feed_keys WHERE width = ?1 AND first = ?2")?
        .execute(params![width, first])?;
    Ok(())
}

/// Rewrites the entry at (`width`, `first`) with only the keys whose row
/// still carries their change (its counts set from what it finds), or
/// deletes it if none does.
fn compact(tx: &Connection, width: i64, first: i64) -> Result<(), StoreError> {
    let list: Vec<u8> = tx
        .prepare_cached("SELECT list FROM feed_keys WHERE width = ?1 AND first = ?2")?
        .query_row(params![width, first], |r| r.get(0))?;
    let mut current = tx.prepare_cached(
        "SELECT changed FROM results WHERE width = ?1 AND span = ?2 AND series = ?3 AND start = ?4",
    )?;
    let mut live = Vec::new();
    for key @ (change, series, start) in decode(width, first, &list)? {
        let now: Option<i64> = current
            .query_row(params![width, span(width, start), series, start], |r| {
                r.get(0)
            })
            .optional()?;
        if now == Some(change) {
            live.push(key);
        }
    }
    drop_entry(tx, width, first)?;
    // The entry keeps its place: its live keys' changes are within the old
    // range, so entries stay disjoint and in order.
    add_entry(tx, width, live.into_iter())
}

/// Rows at `width` whose change number is above `after`, in change order,
/// at most `limit`, as stored now (one read transaction).
pub(super) fn read(
    conn: &Connection,
    width: Width,
    after: u64,
    limit: usize,
) -> Result<Vec<Changed>, StoreError> {
    let (after, _) = feed_bounds(after, limit);
    let w = width.ms();
    let snapshot = conn.unchecked_transaction()?;
    // The entry holding `after` (if any) and every later one.
    let mut entries = snapshot.prepare_cached(
        "SELECT f.first, k.list FROM feed f
         JOIN feed_keys k ON k.width = f.width AND k.first = f.first
         WHERE f.width = ?1 AND f.last > ?2 AND f.first >= coalesce(
             (SELECT max(first) FROM feed WHERE width = ?1 AND first <= ?2), ?2)
         ORDER BY f.first",
    )?;
    let mut row = snapshot.prepare_cached(
        "SELECT s.key, r.revision, r.summary FROM results r JOIN series s ON s.id = r.series
         WHERE r.width = ?1 AND r.span = ?2 AND r.series = ?3 AND r.start = ?4 AND r.changed = ?5",
    )?;
    let mut out = Vec::new();
    let mut found = entries.query(params![w, after])?;
    while let Some(entry) = found.next()? {
        if out.len() >= limit {
            break;
        }
        let first: i64 = entry.get(0)?;
        let list: Vec<u8> = entry.get(1)?;
        for (change, series, start) in decode(w, first, &list)? {
            if change <= after {
                continue;
            }
            let hit = row
                .query_row(params![w, span(w, start), series, start, change], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()?;
            if let Some((key, revision, summary)) = hit {
                out.push(Changed {
                    change: change_number(change)?,
                    series: parse_key(&key)?,
                    stored: stored(start, width, revision, &summary)?,
                });
                if out.len() >= limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Builds the log from the rows stored, in change order (the schema
/// migration to version 10, before the `(width, changed)` index goes):
/// entries of at most [`ENTRY_KEYS`] keys, a run of equal change numbers
/// (rows written before change numbers existed carry 0) never split.
pub(super) fn rebuild(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT width, changed, series, start FROM results INDEXED BY results_changed
         ORDER BY width, changed",
    )?;
    let mut rows = stmt.query([])?;
    let mut width = None;
    let mut keys: Vec<Key> = Vec::new();
    while let Some(r) = rows.next()? {
        let w: i64 = r.get(0)?;
        let key: Key = (r.get(1)?, r.get(2)?, r.get(3)?);
        let full = keys.len() >= ENTRY_KEYS && keys.last().is_some_and(|k| k.0 != key.0);
        if width != Some(w) || full {
            if let Some(w) = width {
                add_entry(conn, w, keys.drain(..))?;
            }
            width = Some(w);
        }
        keys.push(key);
    }
    if let Some(w) = width {
        add_entry(conn, w, keys.drain(..))?;
    }
    Ok(())
}

/// The keys of an entry as stored: a postcard sequence of (change step,
/// series step, window step), each from the key before — the first from
/// (the entry's first change, series 0, window 0) — in windows of `width`.
/// A few bytes a key: changes step by 1, windows by 0 or ±1.
fn encode(width: i64, keys: &[Key]) -> Result<Vec<u8>, StoreError> {
    let (mut change, mut series, mut window) = (keys.first().map_or(0, |k| k.0), 0i64, 0i64);
    let mut steps: Vec<(u64, i64, i64)> = Vec::with_capacity(keys.len());
    for &(c, s, start) in keys {
        if width <= 0 || start.rem_euclid(width) != 0 {
            return Err(corrupt(
                "feed key",
                format!("start {start} is not a window of {width} ms"),
            ));
        }
        let k = start.div_euclid(width);
        let step = |to: i64, from: i64| {
            to.checked_sub(from)
                .ok_or_else(|| corrupt("feed key", format!("step from {from} to {to}")))
        };
        let dc = u64::try_from(step(c, change)?)
            .map_err(|e| corrupt("feed key", format!("changes out of order: {e}")))?;
        steps.push((dc, step(s, series)?, step(k, window)?));
        (change, series, window) = (c, s, k);
    }
    postcard::to_allocvec(&steps).map_err(|e| corrupt("feed entry", e))
}

/// The keys [`encode`] wrote for the entry at (`width`, `first`); every
/// step checked (a damaged list is an error, never a wrapped number).
fn decode(width: i64, first: i64, list: &[u8]) -> Result<Vec<Key>, StoreError> {
    let steps: Vec<(u64, i64, i64)> =
        postcard::from_bytes(list).map_err(|e| corrupt("feed entry", e))?;
    let bad = || {
        corrupt(
            "feed entry",
            format!("a step overflows at width {width}, first {first}"),
        )
    };
    let (mut change, mut series, mut window) = (first, 0i64, 0i64);
    let mut out = Vec::with_capacity(steps.len());
    for (dc, ds, dw) in steps {
        change = i64::try_from(dc)
            .ok()
            .and_then(|dc| change.checked_add(dc))
            .ok_or_else(bad)?;
        series = series.checked_add(ds).ok_or_else(bad)?;
        window = window.checked_add(dw).ok_or_else(bad)?;
        out.push((change, series, window.checked_mul(width).ok_or_else(bad)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Keys round-trip through their encoding, across signs and large
    /// steps, and the usual key costs a few bytes.
    #[test]
    fn keys_round_trip() {
        let width = 60_000;
        let keys: Vec<Key> = vec![
            (100, 5, 1_700_000_040_000 - 1_700_000_040_000 % width),
            (101, 6, 1_700_000_040_000 - 1_700_000_040_000 % width),
            (102, 3, -120_000),
            (190, i64::MAX / 2, 0),
            (191, -7, i64::MIN / width * width),
        ];
        let list = encode(width, &keys).unwrap();
        assert_eq!(decode(width, 100, &list).unwrap(), keys);
        let usual: Vec<Key> = (0..1_000).map(|i| (i + 1, i, 60_000 * 3)).collect();
        let bytes = encode(width, &usual).unwrap().len();
        assert!(bytes <= 3 * 1_000 + 8, "{bytes} bytes for 1,000 keys");
    }

    /// A damaged or hostile list is an error naming the entry, never a
    /// panic or a wrapped number.
    #[test]
    fn a_damaged_list_is_refused() {
        let width = 60_000;
        let overflowing = postcard::to_allocvec(&vec![(u64::MAX, 0i64, 0i64)]).unwrap();
        assert!(decode(width, 1, &overflowing).is_err());
        let far = postcard::to_allocvec(&vec![(0u64, 0i64, i64::MAX)]).unwrap();
        assert!(decode(width, 1, &far).is_err());
        assert!(decode(width, 1, &[0xff, 0xff]).is_err());
        assert!(encode(width, &[(1, 1, 1)]).is_err(), "an unaligned start");
        assert!(
            encode(width, &[(2, 1, 0), (1, 1, 0)]).is_err(),
            "changes out of order"
        );
    }
}
