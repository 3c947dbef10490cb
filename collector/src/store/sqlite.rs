//! The embedded SQLite store (WAL), the collector's default backend.
//!
//! # Schema (version 1)
//! - `applied(agent, seq)` — the de-duplication keys, primary key;
//! - `series(id, key)` — series keys as canonical JSON, unique;
//! - `results(series, width, start, revision, summary)` — one row per
//!   (series, width, window) with the merged summary as postcard bytes;
//! - `watermarks(agent, watermark)` — the highest watermark each agent sent.
//!
//! [`SqliteStore::apply`] first inserts every batch's key (`INSERT OR
//! IGNORE`: a key that exists marks the batch a duplicate), merges the new
//! batches' partials — and their roll-ups — in memory, then reads, merges and
//! writes each touched row once, all in one transaction.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Summary, Width, Window};

use super::{Applied, Store, StoreError, StoredWindow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS applied (agent TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (agent, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS results (
    series INTEGER NOT NULL REFERENCES series(id),
    width INTEGER NOT NULL,
    start INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    summary BLOB NOT NULL,
    PRIMARY KEY (series, width, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (agent TEXT PRIMARY KEY, watermark INTEGER NOT NULL);
";

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    rollups: Vec<Width>,
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, keeping roll-ups at
    /// `rollups` (e.g. 1 h and 1 d).
    pub fn open(path: &Path, rollups: &[i64]) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        let rollups = rollups
            .iter()
            .map(|&w| Width::new(w).map_err(|_| StoreError::BadRollup(w)))
            .collect::<Result<_, _>>()?;
        Ok(SqliteStore { conn, rollups })
    }

    fn series_id(tx: &rusqlite::Transaction<'_>, key: &SeriesKey) -> Result<i64, StoreError> {
        let text = serde_json::to_string(key).map_err(|e| corrupt("series key", e))?;
        tx.execute(
            "INSERT OR IGNORE INTO series (key) VALUES (?1)",
            params![text],
        )?;
        Ok(
            tx.query_row("SELECT id FROM series WHERE key = ?1", params![text], |r| {
                r.get(0)
            })?,
        )
    }
}

/// The windows a partial of `window` lands in: its own and each roll-up that
/// is a multiple of its width.
fn targets(window: Window, rollups: &[Width]) -> impl Iterator<Item = Window> + '_ {
    std::iter::once(window).chain(rollups.iter().filter_map(move |&w| {
        (w.ms() > window.width().ms())
            .then(|| window.coarsen(w).ok())
            .flatten()
    }))
}

impl Store for SqliteStore {
    fn apply(&mut self, batches: &[Batch]) -> Result<Vec<Applied>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut outcome = Vec::with_capacity(batches.len());
        let mut merged: HashMap<(SeriesKey, Window), Summary> = HashMap::new();
        let mut watermarks: HashMap<&str, i64> = HashMap::new();
        {
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO applied (agent, seq) VALUES (?1, ?2)")?;
            for b in batches {
                let seq = i64::try_from(b.seq).map_err(|e| corrupt("batch sequence", e))?;
                if insert.execute(params![b.agent, seq])? == 0 {
                    outcome.push(Applied::Duplicate);
                    continue;
                }
                outcome.push(Applied::New);
                let w = watermarks.entry(b.agent.as_str()).or_insert(i64::MIN);
                *w = (*w).max(b.watermark);
                for p in &b.partials {
                    for target in targets(p.window, &self.rollups) {
                        let slot = merged
                            .entry((p.series.clone(), target))
                            .or_insert_with(|| Summary::new(p.summary.quantum()));
                        slot.merge(&p.summary).map_err(|source| StoreError::Merge {
                            series: p.series.to_string(),
                            window: target,
                            source,
                        })?;
                    }
                }
            }
        }
        let mut ids: HashMap<SeriesKey, i64> = HashMap::new();
        for ((key, window), summary) in merged {
            let id = match ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = Self::series_id(&tx, &key)?;
                    ids.insert(key.clone(), id);
                    id
                }
            };
            let existing: Option<(u32, Vec<u8>)> = tx
                .prepare_cached("SELECT revision, summary FROM results WHERE series = ?1 AND width = ?2 AND start = ?3")?
                .query_row(params![id, window.width().ms(), window.start()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (revision, result) = match existing {
                Some((rev, bytes)) => {
                    let mut stored: Summary =
                        postcard::from_bytes(&bytes).map_err(|e| corrupt("summary", e))?;
                    stored.merge(&summary).map_err(|source| StoreError::Merge {
                        series: key.to_string(),
                        window,
                        source,
                    })?;
                    (rev.saturating_add(1), stored)
                }
                None => (0, summary),
            };
            let bytes = postcard::to_allocvec(&result).map_err(|e| corrupt("summary", e))?;
            tx.prepare_cached(
                "INSERT INTO results (series, width, start, revision, summary) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (series, width, start) DO UPDATE SET revision = excluded.revision, summary = excluded.summary",
            )?
            .execute(params![id, window.width().ms(), window.start(), revision, bytes])?;
        }
        for (agent, w) in watermarks {
            tx.prepare_cached(
                "INSERT INTO watermarks (agent, watermark) VALUES (?1, ?2)
                 ON CONFLICT (agent) DO UPDATE SET watermark = max(watermark, excluded.watermark)",
            )?
            .execute(params![agent, w])?;
        }
        tx.commit()?;
        Ok(outcome)
    }

    fn series(&self) -> Result<Vec<SeriesKey>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM series ORDER BY key")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for text in rows {
            out.push(serde_json::from_str(&text?).map_err(|e| corrupt("series key", e))?);
        }
        Ok(out)
    }

    fn windows(
        &self,
        series: &SeriesKey,
        width: Width,
        from: i64,
        to: i64,
    ) -> Result<Vec<StoredWindow>, StoreError> {
        let text = serde_json::to_string(series).map_err(|e| corrupt("series key", e))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.start, r.revision, r.summary FROM results r JOIN series s ON s.id = r.series
             WHERE s.key = ?1 AND r.width = ?2 AND r.start >= ?3 AND r.start < ?4 ORDER BY r.start",
        )?;
        let rows = stmt.query_map(params![text, width.ms(), from, to], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (start, revision, bytes) = row?;
            out.push(StoredWindow {
                window: Window::new(start, width).map_err(|e| corrupt("window", e))?,
                summary: postcard::from_bytes(&bytes).map_err(|e| corrupt("summary", e))?,
                revision,
            });
        }
        Ok(out)
    }

    fn watermarks(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT agent, watermark FROM watermarks ORDER BY agent")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
