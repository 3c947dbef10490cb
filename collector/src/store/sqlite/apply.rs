//! The writer's half of the SQLite store: its connection, the cache of
//! committed state, and [`Writer::apply`] — the SQL sequenced around
//! [`crate::merge`] in one `IMMEDIATE` transaction (the senders' part in
//! [`super::senders`]).
//!
//! A row's committed state usually comes from the [`Cache`] rather than the
//! database, and a row seen for the first time is a plain insert
//! ([`super::rows`]); so a partial costs about one row write, and a roll-up
//! touched by many partials of a group is written once. Change numbers come
//! from the `meta` counter, incremented per row written; SQLite serialises
//! writers, so they commit in order.
//!
//! SQLite has one writer, so the work around it runs beside it: while the
//! writer writes the rows no roll-up lands on (the agents' windows, first in
//! the table's order), one scoped thread computes the group's roll-ups and
//! another encodes those rows' deltas, handed over in chunks. On 2 cores
//! this took `store_bench` at fan-in 1 from about 146 k to 171 k partials/s
//! (medians of 4, alternating), for about a tenth more CPU per partial.

use std::path::Path;

use foldhash::{HashMap, HashMapExt};
use rusqlite::{params, Connection, TransactionBehavior};
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_runtime::checkpoint::{self, Checkpointer};

use super::cache::{Cache, Committed};
use super::rows::RowWriter;
use super::schema::span;
use super::senders;
use crate::merge;
use crate::store::codec::{key_text, EncodedSummaries};
use crate::store::{Applied, NewIncarnation, Refusals, Report, StoreError};

/// Encoded deltas the encoding thread hands the writer at a time.
const CHUNK: usize = 512;

/// Chunks the encoding thread may be ahead of the writer by.
const CHUNKS_AHEAD: usize = 8;

/// The page size of a new database (SQLite's default is 4 KiB). At fan-in 1
/// each partial is a row inserted into `results` among its series' earlier
/// windows of the same span, so leaves split often; 8 KiB pages split half
/// as often and write fewer WAL frames per row. `store_bench --writers 0
/// --fan-in 1 --minutes 400`, three alternating runs each: 238 k against
/// 216 k partials/s (190 k against 169 k per CPU-second of the writer);
/// 16 KiB was no better than 8 KiB. A database made with another page size
/// keeps it (SQLite changes it only by a `VACUUM` outside WAL mode).
const PAGE_SIZE: i64 = 8_192;

/// Result rows the store keeps in memory at most (see [`Cache`]): enough
/// for the roll-ups and open windows of some 30,000 active series.
const CACHED_ROWS: usize = 100_000;

/// The one connection that writes, and what it remembers.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) conn: Connection,
    rollups: Vec<Width>,
    pub(super) cache: Cache,
    /// Checkpoints the WAL off the commit path.
    _checkpointer: Checkpointer,
}

impl Writer {
    /// Opens the writer of the database at `path` (WAL), migrating it.
    pub(super) fn open(path: &Path, rollups: Vec<Width>) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // Before anything creates the file's header (journal_mode = WAL
        // does); on an existing database it changes nothing.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        super::schema::migrate(&conn)?;
        // 64 MiB of page cache (the default is 2 MiB): the result index and
        // the rows being merged stay in memory instead of being re-read.
        conn.pragma_update(None, "cache_size", -65_536)?;
        // `results.series REFERENCES series(id)` stays declared (a table
        // keeps its keys in SQLite), but the writer does not have it
        // checked: the bundled SQLite checks foreign keys by default, a
        // look-up of the series row for every result row inserted; without
        // it `store_bench --fan-in 1 --minutes 400` merges about 13 % more
        // partials/s. Every id the writer binds it took from `series`
        // itself, in the same transaction or a committed one (its memory of
        // ids is filled only after a commit and cleared when another
        // connection writes), and no series row is ever deleted;
        // PostgreSQL's schema 8 dropped the same key for the same cost.
        conn.pragma_update(None, "foreign_keys", false)?;
        let checkpointer = Checkpointer::start(&conn, path, checkpoint::INTERVAL)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Writer {
            conn,
            rollups,
            cache: Cache::new(CACHED_ROWS),
            _checkpointer: checkpointer,
        })
    }

    /// Commits one small write (the `health_probe` row of `meta`) the way
    /// [`Writer::apply`] commits: fails when the database cannot be written
    /// (a full disk, a lock held elsewhere, a read-only file).
    pub(super) fn probe(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('health_probe', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [tributary_runtime::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Applies `batches` in one transaction (see [`crate::merge`]). One
    /// function on purpose: it is the transaction's steps in order, numbered
    /// as in the design note, and every step borrows the transaction.
    pub(super) fn apply(
        &mut self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> Result<Report, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Inside the write lock: has anyone else written since our commit?
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        self.cache.check_version(version);
        let cache = &mut self.cache;

        // 1–3. The senders, the new batches, their marks moved.
        let seen = tributary_runtime::now_ms();
        let (applied, fresh, incarnations) = senders_step(&tx, batches, refused, seen)?;
        if fresh.is_empty() {
            tx.commit()?;
            return Ok(Report {
                applied,
                incarnations,
            });
        }

        // 4. The partials merged per row, with series ids from the cache or
        // the table.
        let mut new_ids: HashMap<&SeriesKey, i64> = HashMap::new();
        let mut gathered = merge::gather(&fresh, |key| {
            if let Some(id) = cache.id(key).or_else(|| new_ids.get(key).copied()) {
                return Ok(id);
            }
            let id = series_id(&tx, key)?;
            new_ids.insert(key, id);
            Ok(id)
        })?;
        let watermarks = std::mem::take(&mut gathered.watermarks);
        let mut done = Committed::default();
        {
            let mut report = tx.prepare_cached(
                "INSERT OR IGNORE INTO series_agents (series, agent) VALUES (?1, ?2)",
            )?;
            for &(id, agent) in &gathered.reporters {
                if !cache.reported(id, agent) {
                    report.execute(params![id, agent])?;
                    done.reporters.insert((id, agent.to_string()));
                }
            }
        }

        // 5–6. Fold each delta into its row's committed state and write it,
        // in the table's order (width, span, series, start): each write
        // lands next to the one before it in the result B-tree. The rows
        // narrower than every roll-up come first; while the writer writes
        // them, one thread computes the roll-ups and another encodes their
        // deltas, so the writer's core spends its time in SQLite.
        let table_order =
            |&(id, width, start): &merge::RowKey| (width, span(width, start), id, start);
        let rollups: Vec<i64> = self.rollups.iter().map(|w| w.ms()).collect();
        let finest = rollups.iter().copied().min().unwrap_or(i64::MAX);
        let change: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'change'", [], |r| {
            r.get(0)
        })?;
        let mut rows = RowWriter::new(&tx, cache, &rollups, change)?;
        let fine = gathered.finer_than(finest, table_order);
        let levels = if fine.len() < CHUNK {
            // A small group: two threads would cost more than they save.
            for r in &fine {
                rows.write((r.key, r.window, r.series), r.summary, None, &mut done)?;
            }
            gathered.roll_ups(&self.rollups)?
        } else {
            let encode: Vec<bool> = fine.iter().map(|r| !rows.cached(&r.key)).collect();
            std::thread::scope(|s| -> Result<_, StoreError> {
                let rolling = s.spawn(|| gathered.roll_ups(&self.rollups));
                // Chunks, not rows, through the channel: a wake-up per row
                // cost the writer a sixth of its time; and a chunk's
                // summaries in one buffer, not one allocation each (freeing
                // those on this thread contended for the allocator's lock).
                let (sent, received) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
                let (fine, encode) = (&fine, &encode);
                s.spawn(move || {
                    let mut chunk = EncodedSummaries::with_capacity(CHUNK);
                    for (r, _) in fine.iter().zip(encode).filter(|(_, &e)| e) {
                        if let Err(e) = chunk.push(r.summary) {
                            let _ = sent.send(Err(e));
                            return;
                        }
                        if chunk.len() == CHUNK {
                            let next = EncodedSummaries::with_capacity(CHUNK);
                            // The writer stopped (it failed): so does this.
                            if sent.send(Ok(std::mem::replace(&mut chunk, next))).is_err() {
                                return;
                            }
                        }
                    }
                    let _ = sent.send(Ok(chunk));
                });
                let stopped = || StoreError::Backend("the encoding thread stopped early".into());
                let (mut ready, mut next) = (EncodedSummaries::default(), 0);
                for (r, &encoded) in fine.iter().zip(encode) {
                    let bytes = match encoded {
                        true => {
                            if next == ready.len() {
                                ready = received.recv().map_err(|_| stopped())??;
                                next = 0;
                            }
                            next += 1;
                            Some(ready.get(next - 1).ok_or_else(stopped)?)
                        }
                        false => None,
                    };
                    rows.write((r.key, r.window, r.series), r.summary, bytes, &mut done)?;
                }
                rolling
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })?
        };
        for delta in gathered.into_rows(finest, levels, table_order)? {
            let at = (delta.key, delta.window, delta.series);
            rows.write(at, &delta.summary, None, &mut done)?;
        }
        let (change, log) = rows.finish(&mut done)?;
        log.commit(&tx)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'change'",
            params![change],
        )?;

        // Progress.
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO watermarks (agent, watermark, seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent) DO UPDATE SET watermark = max(watermark, excluded.watermark), seen_ms = excluded.seen_ms",
            )?;
            for (agent, w) in &watermarks {
                upsert.execute(params![agent, w, seen])?;
            }
        }
        tx.commit()?;
        done.ids = new_ids.into_iter().map(|(k, id)| (k.clone(), id)).collect();
        self.cache.committed(done);
        Ok(Report {
            applied,
            incarnations,
        })
    }

    /// Records `batches` as seen without merging them (steps 1–3 of
    /// [`Writer::apply`] only; see [`crate::store::Ingest::record_refused`]).
    pub(super) fn record(
        &mut self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> Result<Report, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = tributary_runtime::now_ms();
        let (applied, _, incarnations) = senders_step(&tx, batches, refused, now)?;
        tx.commit()?;
        Ok(Report {
            applied,
            incarnations,
        })
    }
}

/// What steps 1–3 answer: each batch's outcome, the new batches, and the
/// incarnations seen for the first time.
type Taken<'b> = (Vec<Applied>, Vec<&'b Batch>, Vec<NewIncarnation>);

/// Steps 1–3 of a group's transaction: the senders' marks; the keys at or
/// above them claimed, the first copy of a new key new; then, if any
/// batch is new, the marks moved (seen at `now_ms`) and what the checks
/// refused stored with each new batch.
fn senders_step<'b>(
    tx: &rusqlite::Transaction<'_>,
    batches: &'b [Batch],
    refused: &[Refusals],
    now_ms: i64,
) -> Result<Taken<'b>, StoreError> {
    let (marks, incarnations) = senders::marks(tx, batches)?;
    let new = senders::claim(tx, batches, &marks)?;
    let (applied, fresh) = merge::senders::dedupe(batches, new)?;
    if !fresh.is_empty() {
        senders::update(tx, batches, &fresh, &marks, now_ms)?;
        senders::add_refused(tx, batches, &applied, refused)?;
    }
    Ok((applied, fresh, incarnations))
}

/// The id of series `key`, inserted when missing.
fn series_id(tx: &rusqlite::Transaction<'_>, key: &SeriesKey) -> Result<i64, StoreError> {
    let text = key_text(key)?;
    tx.prepare_cached("INSERT OR IGNORE INTO series (key) VALUES (?1)")?
        .execute(params![text])?;
    Ok(tx
        .prepare_cached("SELECT id FROM series WHERE key = ?1")?
        .query_row(params![text], |r| r.get(0))?)
}
