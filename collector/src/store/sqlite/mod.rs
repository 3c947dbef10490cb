//! The embedded SQLite store (WAL), the collector's default backend.
//!
//! # Schema (version 4, in `PRAGMA user_version`; migrations run at open)
//! - `applied(agent, seq)` — the de-duplication keys, primary key;
//! - `series(id, key)` — series keys as canonical JSON, unique;
//! - `results(series, width, start, revision, summary, changed)` — one row
//!   per (series, width, window) with the merged summary as postcard bytes
//!   and the change number of its last write (indexed for the change feed);
//! - `watermarks(agent, watermark, seen_ms)` — the highest watermark each
//!   agent sent and when it was last seen;
//! - `series_agents(series, agent)` — which agents reported each series;
//! - `cursors(name, value)` — durable cursors (sinks); `meta` — the change
//!   counter. SQLite serialises writers, so change numbers commit in order;
//! - `leases(name, holder, expires_ms)` — who runs each sink, until when
//!   (several processes may open one database file);
//! - `parked(name, series, width, start)` — rows each sink passed over
//!   because they were not final yet.
//!
//! Version 4 changes no table: from it on, summaries' sketches index the
//! real reading (issue #13). Those of versions 1–3 indexed tick counts and
//! cannot be converted exactly, so a database of an older version is
//! migrated only if `results` is empty, and refused
//! ([`StoreError::TickIndexed`]) otherwise.
//!
//! [`SqliteStore::apply`] first inserts every batch's key (`INSERT OR
//! IGNORE`: a key that exists marks the batch a duplicate), merges the new
//! batches' partials — and their roll-ups — in memory, then merges into and
//! writes each touched row once, all in one transaction. A row's committed
//! state usually comes from the store's [`cache`] rather than the database,
//! and a row seen for the first time is a plain insert; so a partial costs
//! about one row write, and a roll-up touched by many partials of a group
//! is written once. WAL checkpoints run on a thread of their own
//! ([`tributary_runtime::checkpoint`]), so no commit stalls on one.

mod cache;

use foldhash::{HashMap, HashMapExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_runtime::checkpoint::{self, Checkpointer};

use cache::{Cache, Committed, RowKey};

use super::{add_rollups, in_order, merge_into, Pending};
use super::{
    corrupt, decode_summary, encode_summary, feed_bounds, key_text, stored, AgentProgress, Applied,
    Changed, Lease, Store, StoreError, StoredWindow,
};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

/// The first version whose sketches index the real reading.
const REAL_VALUE_SKETCHES: i64 = 4;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 4] = [V1, V2, V3, V4];

const V1: &str = "
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

const V2: &str = "
ALTER TABLE watermarks ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX results_changed ON results (width, changed);
CREATE TABLE series_agents (series INTEGER NOT NULL, agent TEXT NOT NULL, PRIMARY KEY (series, agent)) WITHOUT ROWID;
CREATE TABLE cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('change', 0);
";

const V3: &str = "
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE parked (name TEXT NOT NULL, series INTEGER NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL, PRIMARY KEY (name, series, width, start)) WITHOUT ROWID;
";

/// Sketches index the real reading from here on; no table changes.
const V4: &str = "";

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: std::path::PathBuf,
    rollups: Vec<Width>,
    cache: Cache,
    /// Checkpoints the WAL off the commit path (writers only).
    _checkpointer: Option<Checkpointer>,
}

/// Result rows the store keeps in memory at most (see [`cache`]): enough
/// for the roll-ups and open windows of some 30,000 active series.
const CACHED_ROWS: usize = 100_000;

impl SqliteStore {
    /// Opens (or creates) the database at `path`, keeping roll-ups at
    /// `rollups` (e.g. 1 h and 1 d).
    pub fn open(path: &Path, rollups: &[i64]) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 64 MiB of page cache (the default is 2 MiB): the result index and
        // the rows being merged stay in memory instead of being re-read.
        conn.pragma_update(None, "cache_size", -65_536)?;
        Self::migrate(&conn)?;
        let checkpointer = Checkpointer::start(&conn, path, checkpoint::INTERVAL)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let rollups = rollups
            .iter()
            .map(|&w| Width::new(w).map_err(|_| StoreError::BadRollup(w)))
            .collect::<Result<_, _>>()?;
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
            rollups,
            cache: Cache::new(CACHED_ROWS),
            _checkpointer: Some(checkpointer),
        })
    }

    fn migrate(conn: &Connection) -> Result<(), StoreError> {
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        if (1..REAL_VALUE_SKETCHES).contains(&found) {
            let held: bool =
                conn.query_row("SELECT EXISTS (SELECT 1 FROM results)", [], |r| r.get(0))?;
            if held {
                return Err(StoreError::TickIndexed {
                    found,
                    known: SCHEMA_VERSION,
                });
            }
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            conn.execute_batch(&format!(
                "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
                from + 1
            ))?;
        }
        Ok(())
    }

    /// A one-query `…_of` read: the rows of `sql`, whose `?1` is the list
    /// of `series`' key texts as JSON (for `json_each`; `params` are
    /// `?2…`) and whose first column is a key text, converted by `row` and
    /// laid out in the order of `series`.
    fn by_series<T: Clone>(
        &self,
        series: &[SeriesKey],
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        row: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<Vec<T>>, StoreError> {
        let texts: Vec<String> = series.iter().map(key_text).collect::<Result<_, _>>()?;
        let list = serde_json::to_string(&texts).map_err(|e| corrupt("series keys", e))?;
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&list];
        args.extend_from_slice(params);
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(args.as_slice())?;
        let mut by_key: HashMap<String, Vec<T>> = HashMap::new();
        while let Some(r) = rows.next()? {
            by_key.entry(r.get(0)?).or_default().push(row(r)?);
        }
        Ok(in_order(&texts, by_key))
    }

    /// Runs `sql` once per (series key, window start) of `keys`, with
    /// (`name`, width, key text, start) as `?1`–`?4`, in one transaction.
    fn per_key(
        &mut self,
        sql: &str,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(sql)?;
            for (series, start) in keys {
                let text = key_text(series)?;
                stmt.execute(params![name, width.ms(), text, start])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs a change-feed query whose rows are (change, series key, start,
    /// revision, summary) of windows at `width`.
    fn changed_rows(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        width: Width,
    ) -> Result<Vec<Changed>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (change, key, start, revision, bytes) = row?;
            out.push(Changed {
                change: u64::try_from(change).map_err(|e| corrupt("change number", e))?,
                series: serde_json::from_str(&key).map_err(|e| corrupt("series key", e))?,
                stored: stored(start, width, revision, &bytes)?,
            });
        }
        Ok(out)
    }

    fn series_id(tx: &rusqlite::Transaction<'_>, key: &SeriesKey) -> Result<i64, StoreError> {
        let text = key_text(key)?;
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

impl Store for SqliteStore {
    fn apply(&mut self, batches: &[Batch]) -> Result<Vec<Applied>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Inside the write lock: has anyone else written since our commit?
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        self.cache.check_version(version);
        let cache = &mut self.cache;
        let mut done = Committed::default();
        let mut outcome = Vec::with_capacity(batches.len());
        // The batches' partials merged per target row, with the series they
        // belong to (for error messages).
        let mut merged: Pending<'_, RowKey> = Pending::default();
        let mut watermarks: HashMap<&str, i64> = HashMap::new();
        let mut new_ids: HashMap<&SeriesKey, i64> = HashMap::new();
        {
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO applied (agent, seq) VALUES (?1, ?2)")?;
            let mut report = tx.prepare_cached(
                "INSERT OR IGNORE INTO series_agents (series, agent) VALUES (?1, ?2)",
            )?;
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
                    let id = match cache
                        .id(&p.series)
                        .or_else(|| new_ids.get(&p.series).copied())
                    {
                        Some(id) => id,
                        None => {
                            let id = Self::series_id(&tx, &p.series)?;
                            new_ids.insert(&p.series, id);
                            id
                        }
                    };
                    if !cache.reported(id, &b.agent) && done.reporters.insert((id, b.agent.clone()))
                    {
                        report.execute(params![id, b.agent])?;
                    }
                    let key = (id, p.window.width().ms(), p.window.start());
                    merge_into(&mut merged, key, &p.summary, &p.series, p.window)?;
                }
            }
        }
        add_rollups(&mut merged, &self.rollups, |&(id, _, _), w| {
            (id, w.width().ms(), w.start())
        })?;
        let mut change: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'change'", [], |r| {
                r.get(0)
            })?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO results (series, width, start, revision, summary, changed) VALUES (?1, ?2, ?3, 0, ?4, ?5)",
            )?;
            let mut select = tx.prepare_cached(
                "SELECT revision, summary FROM results WHERE series = ?1 AND width = ?2 AND start = ?3",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE results SET revision = ?4, summary = ?5, changed = ?6 WHERE series = ?1 AND width = ?2 AND start = ?3",
            )?;
            done.rows.reserve(merged.len());
            // In key order: each insert lands next to the one before it in
            // the result B-tree, instead of at a random page.
            let mut merged: Vec<_> = merged.into_iter().collect();
            merged.sort_unstable_by_key(|(key, _)| *key);
            for (key, (delta, series, window)) in merged {
                change += 1;
                let (id, width, start) = key;
                let stored = match cache.take(&key) {
                    Some(row) => Some((row.revision, row.summary)),
                    None => {
                        let bytes = encode_summary(&delta)?;
                        if insert.execute(params![id, width, start, bytes, change])? == 1 {
                            done.rows.push((key, (0, delta)));
                            continue;
                        }
                        let (revision, bytes): (u32, Vec<u8>) = select
                            .query_row(params![id, width, start], |r| Ok((r.get(0)?, r.get(1)?)))?;
                        Some((revision, decode_summary(&bytes)?))
                    }
                };
                let Some((revision, mut summary)) = stored else {
                    continue;
                };
                summary.merge(&delta).map_err(|source| StoreError::Merge {
                    series: series.to_string(),
                    window,
                    source,
                })?;
                let revision = revision.saturating_add(1);
                if update.execute(params![
                    id,
                    width,
                    start,
                    revision,
                    encode_summary(&summary)?,
                    change
                ])? != 1
                {
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
        let seen = crate::finality::now_ms();
        for (agent, w) in watermarks {
            tx.prepare_cached(
                "INSERT INTO watermarks (agent, watermark, seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent) DO UPDATE SET watermark = max(watermark, excluded.watermark), seen_ms = excluded.seen_ms",
            )?
            .execute(params![agent, w, seen])?;
        }
        tx.commit()?;
        done.ids = new_ids.into_iter().map(|(k, id)| (k.clone(), id)).collect();
        self.cache.committed(done);
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
        let text = key_text(series)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.start, r.revision, r.summary FROM results r JOIN series s ON s.id = r.series
             WHERE s.key = ?1 AND r.width = ?2 AND r.start >= ?3 AND r.start < ?4 ORDER BY r.start",
        )?;
        let mut rows = stmt.query(params![text, width.ms(), from, to])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(stored(
                r.get(0)?,
                width,
                r.get(1)?,
                &r.get::<_, Vec<u8>>(2)?,
            )?);
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

    fn progress(&self, series: &SeriesKey) -> Result<Vec<AgentProgress>, StoreError> {
        let text = key_text(series)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT w.agent, w.watermark, w.seen_ms FROM series s
             JOIN series_agents a ON a.series = s.id
             JOIN watermarks w ON w.agent = a.agent
             WHERE s.key = ?1 ORDER BY w.agent",
        )?;
        let rows = stmt.query_map(params![text], |r| {
            Ok(AgentProgress {
                agent: r.get(0)?,
                watermark: r.get(1)?,
                seen_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn progress_of(&self, series: &[SeriesKey]) -> Result<Vec<Vec<AgentProgress>>, StoreError> {
        self.by_series(
            series,
            "SELECT s.key, w.agent, w.watermark, w.seen_ms FROM series s
             JOIN series_agents a ON a.series = s.id
             JOIN watermarks w ON w.agent = a.agent
             WHERE s.key IN (SELECT value FROM json_each(?1)) ORDER BY s.key, w.agent",
            &[],
            |r| {
                Ok(AgentProgress {
                    agent: r.get(1)?,
                    watermark: r.get(2)?,
                    seen_ms: r.get(3)?,
                })
            },
        )
    }

    fn windows_of(
        &self,
        series: &[SeriesKey],
        width: Width,
        from: i64,
        to: i64,
    ) -> Result<Vec<Vec<StoredWindow>>, StoreError> {
        self.by_series(
            series,
            "SELECT s.key, r.start, r.revision, r.summary FROM series s
             JOIN results r ON r.series = s.id
             WHERE s.key IN (SELECT value FROM json_each(?1))
               AND r.width = ?2 AND r.start >= ?3 AND r.start < ?4
             ORDER BY s.key, r.start",
            &[&width.ms(), &from, &to],
            |r| stored(r.get(1)?, width, r.get(2)?, &r.get::<_, Vec<u8>>(3)?),
        )
    }

    fn changed_since(
        &self,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changed>, StoreError> {
        let (after, limit) = feed_bounds(after, limit);
        self.changed_rows(
            "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM results r
             JOIN series s ON s.id = r.series
             WHERE r.width = ?1 AND r.changed > ?2 ORDER BY r.changed LIMIT ?3",
            params![width.ms(), after, limit],
            width,
        )
    }

    fn park(
        &mut self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError> {
        self.per_key(
            "INSERT OR IGNORE INTO parked (name, series, width, start)
             SELECT ?1, id, ?2, ?4 FROM series WHERE key = ?3",
            name,
            width,
            keys,
        )
    }

    fn parked(
        &self,
        name: &str,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changed>, StoreError> {
        let (after, limit) = feed_bounds(after, limit);
        self.changed_rows(
            "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM parked p
             JOIN results r ON r.series = p.series AND r.width = p.width AND r.start = p.start
             JOIN series s ON s.id = r.series
             WHERE p.name = ?4 AND p.width = ?1 AND r.changed > ?2 ORDER BY r.changed LIMIT ?3",
            params![width.ms(), after, limit, name],
            width,
        )
    }

    fn unpark(
        &mut self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError> {
        self.per_key(
            "DELETE FROM parked WHERE name = ?1 AND width = ?2 AND start = ?4
             AND series = (SELECT id FROM series WHERE key = ?3)",
            name,
            width,
            keys,
        )
    }

    fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT value FROM cursors WHERE name = ?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()?;
        u64::try_from(v.unwrap_or(0)).map_err(|e| corrupt("cursor", e))
    }

    fn lease(&mut self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        let now = crate::finality::now_ms();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        // One transaction: the holder read back is the one that refused us.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken = tx
            .prepare_cached(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                 WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4",
            )?
            .execute(params![name, holder, expires, now])?;
        let lease = if taken == 1 {
            Lease::Ours
        } else {
            Lease::Theirs(
                tx.prepare_cached("SELECT holder FROM leases WHERE name = ?1")?
                    .query_row(params![name], |r| r.get(0))?,
            )
        };
        tx.commit()?;
        Ok(lease)
    }

    fn release(&mut self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
            .execute(params![name, holder])?;
        Ok(())
    }

    fn reader(&self) -> Result<Self, StoreError> {
        // WAL: this connection reads the last committed state while the
        // writer's connection commits; `query_only` makes a stray write fail.
        let conn = Connection::open(&self.path)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "cache_size", -65_536)?;
        Ok(SqliteStore {
            conn,
            path: self.path.clone(),
            rollups: self.rollups.clone(),
            cache: Cache::new(0),
            _checkpointer: None,
        })
    }

    fn set_cursor(&mut self, name: &str, value: u64) -> Result<(), StoreError> {
        let value = i64::try_from(value).map_err(|e| corrupt("cursor", e))?;
        self.conn
            .prepare_cached(
                "INSERT INTO cursors (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute(params![name, value])?;
        Ok(())
    }
}
