//! The writer's half of the SQLite store: its connection, the cache of
//! committed state, and [`Writer::apply`] — the SQL sequenced around
//! [`crate::merge`] in one `IMMEDIATE` transaction (the senders' part in
//! [`super::senders`]).
//!
//! A row's committed state usually comes from the [`Cache`] rather than the
//! database, and a row seen for the first time is a plain insert; so a
//! partial costs about one row write, and a roll-up touched by many partials
//! of a group is written once. Change numbers come from the `meta` counter,
//! incremented per row written; SQLite serialises writers, so they commit in
//! order.

use std::path::Path;

use foldhash::{HashMap, HashMapExt};
use rusqlite::{params, Connection, TransactionBehavior};
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_runtime::checkpoint::{self, Checkpointer};

use super::cache::{Cache, Committed};
use super::schema::span;
use super::senders;
use crate::merge;
use crate::store::codec::{decode_summary, encode_summary, key_text};
use crate::store::{Refusals, Report, StoreError};

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
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        super::schema::migrate(&conn)?;
        // 64 MiB of page cache (the default is 2 MiB): the result index and
        // the rows being merged stay in memory instead of being re-read.
        conn.pragma_update(None, "cache_size", -65_536)?;
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

        // 1–3. The senders' marks, the keys at or above them claimed; the
        // first copy of a new key is new. Then the marks move.
        let (marks, incarnations) = senders::marks(&tx, batches)?;
        let new = senders::claim(&tx, batches, &marks)?;
        let (applied, fresh) = merge::senders::dedupe(batches, new)?;
        if fresh.is_empty() {
            tx.commit()?;
            return Ok(Report {
                applied,
                incarnations: Vec::new(),
            });
        }
        let seen = tributary_runtime::now_ms();
        senders::update(&tx, batches, &fresh, &marks, seen)?;
        senders::add_refused(&tx, batches, &applied, refused)?;

        // 4. The plan, with series ids from the cache or the table.
        let mut new_ids: HashMap<&SeriesKey, i64> = HashMap::new();
        // In the table's order (width, span, series, start): each write
        // lands next to the one before it in the result B-tree.
        let table_order =
            |&(id, width, start): &merge::RowKey| (width, span(width, start), id, start);
        let plan = merge::plan_in(
            &fresh,
            &self.rollups,
            |key| {
                if let Some(id) = cache.id(key).or_else(|| new_ids.get(key).copied()) {
                    return Ok(id);
                }
                let id = series_id(&tx, key)?;
                new_ids.insert(key, id);
                Ok(id)
            },
            table_order,
        )?;
        let mut done = Committed::default();
        let rollups: Vec<i64> = self.rollups.iter().map(|w| w.ms()).collect();
        {
            let mut report = tx.prepare_cached(
                "INSERT OR IGNORE INTO series_agents (series, agent) VALUES (?1, ?2)",
            )?;
            for &(id, agent) in &plan.reporters {
                if !cache.reported(id, agent) {
                    report.execute(params![id, agent])?;
                    done.reporters.insert((id, agent.to_string()));
                }
            }
        }

        // 5–6. Fold each delta into its row's committed state and write it.
        let mut change: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'change'", [], |r| {
                r.get(0)
            })?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO results (series, width, start, revision, summary, changed, span) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut select = tx.prepare_cached(
                "SELECT revision, summary FROM results WHERE width = ?2 AND span = ?4 AND series = ?1 AND start = ?3",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE results SET revision = ?4, summary = ?5, changed = ?6 WHERE width = ?2 AND span = ?7 AND series = ?1 AND start = ?3",
            )?;
            done.rows.reserve(plan.rows.len());
            for delta in plan.rows {
                change += 1;
                let key = delta.key;
                let (id, width, start) = key;
                let span = span(width, start);
                let stored = match cache.take(&key) {
                    Some(row) => Some((row.revision, row.summary)),
                    None => {
                        // A row seen for the first time: a plain insert of
                        // the delta at the first revision.
                        let bytes = encode_summary(&delta.summary)?;
                        let first =
                            params![id, width, start, merge::FIRST_REVISION, bytes, change, span];
                        if insert.execute(first)? == 1 {
                            // Cached on its second write: a roll-up row is
                            // merged into by every group that reaches its
                            // window, but most rows at an agent's width are
                            // written once (fan-in 1), and caching them
                            // cost a tenth of the transaction in churn.
                            if rollups.contains(&width) {
                                done.rows.push((key, merge::fold(None, delta)?));
                            }
                            continue;
                        }
                        let (revision, bytes): (u32, Vec<u8>) = select
                            .query_row(params![id, width, start, span], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })?;
                        Some((revision, decode_summary(&bytes)?))
                    }
                };
                let (revision, summary) = merge::fold(stored, delta)?;
                let row = params![
                    id,
                    width,
                    start,
                    revision,
                    encode_summary(&summary)?,
                    change,
                    span
                ];
                if update.execute(row)? != 1 {
                    // Only possible if the file changed behind SQLite's back.
                    cache.check_version(i64::MIN);
                    return Err(StoreError::Backend(
                        "a cached result row is missing from the database; cache cleared".into(),
                    ));
                }
                done.rows.push((key, (revision, summary)));
            }
        }
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
            for (agent, w) in &plan.watermarks {
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
