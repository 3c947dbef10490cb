//! All durable agent state in one SQLite database (WAL).
//!
//! # Design
//! Tables:
//! - `meta(key, value)` — the next batch sequence, readings dropped and not
//!   yet reported;
//! - `sources(id, name, watermark)` and `series(id, key, quantum, source,
//!   closed_before)` — dense ids matching the windower's;
//! - `open_windows(series, start, summary)` — checkpoints of open windows;
//! - `devices(device, boot, hello, offset_ms, hwm, above)` — each device
//!   boot's channels, clock offset and de-duplication state; `links(link,
//!   device, boot)` — which device last spoke on a link;
//! - `outbox(id, series, start, width, readings, bytes, summary)` — closed
//!   partials not yet in a batch;
//! - `batches(seq, readings, payload)` — batches formed but not confirmed.
//!
//! Invariants: one [`Store::commit`] transaction covers everything a group of
//! input changed (window checkpoints, emitted partials, de-dup marks), so
//! after a crash the agent resumes from a consistent point; inputs are
//! acknowledged only after it returns. A batch's identity (seq and content)
//! is fixed when it is formed ([`Store::form_batches`], committed before
//! anything is published) and it is deleted only on the collector's
//! confirmation. Only partials not yet in a batch are coarsened or dropped
//! ([`outbox`]). WAL checkpoints run on a thread of their own
//! ([`tributary_runtime::checkpoint`]), so no commit stalls on one.

pub mod outbox;

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::frame::Hello;
use tributary_core::{SeriesKey, Summary, Width, Window};

use crate::config::Synchronous;
use crate::window::{Flush, SeriesId, SourceId};
use tributary_runtime::checkpoint::{self, CheckpointError, Checkpointer};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, corrupt file, …).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode.
    #[error("corrupt stored {what}: {reason}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The WAL checkpoint thread could not start.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The data directory could not be created.
    #[error("cannot create data directory: {0}")]
    Dir(#[from] std::io::Error),
    /// The database holds summaries of schema 1, whose sketches index tick
    /// counts: they cannot be converted exactly to real-value buckets.
    #[error("the agent database holds summaries of schema {found}, whose sketches index tick counts; they cannot be converted exactly to this version's real-value buckets (schema {SCHEMA}): let the previous agent version drain its outbox, or move the database aside (its unsent data is then lost)")]
    TickIndexed {
        /// The schema found.
        found: i64,
    },
}

/// The schema version this build writes: 2 since sketches index the real
/// reading (issue #13).
pub const SCHEMA: i64 = 2;

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: e.to_string(),
    }
}

/// A device boot's stored state.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot: u32,
    /// Its last Hello.
    pub hello: Hello,
    /// Event time = tick + offset_ms.
    pub offset_ms: i64,
    /// De-dup mark.
    pub hwm: Option<u32>,
    /// Applied sequences above the mark.
    pub above: Vec<u32>,
}

/// A stored series.
#[derive(Debug, Clone)]
pub struct SeriesRow {
    /// Dense id.
    pub id: SeriesId,
    /// Key.
    pub key: SeriesKey,
    /// Quantum exponent.
    pub quantum: tributary_core::Quantum,
    /// Source id.
    pub source: SourceId,
    /// Windows before this are closed.
    pub closed_before: i64,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Sources in id order: (name, watermark).
    pub sources: Vec<(String, Option<i64>)>,
    /// Series in id order.
    pub series: Vec<SeriesRow>,
    /// Open window checkpoints.
    pub windows: Vec<(SeriesId, i64, Summary)>,
    /// Device boots.
    pub devices: Vec<DeviceRow>,
    /// (link, device, boot).
    pub links: Vec<(String, String, u32)>,
}

/// One group commit.
#[derive(Debug, Default)]
pub struct Commit {
    /// Newly registered sources: (id, name).
    pub new_sources: Vec<(SourceId, String)>,
    /// Newly registered series.
    pub new_series: Vec<SeriesRow>,
    /// The windower's changes.
    pub flush: Flush,
    /// Source watermarks to store: (id, watermark).
    pub watermarks: Vec<(SourceId, i64)>,
    /// Device rows changed.
    pub devices: Vec<DeviceRow>,
    /// Link → device boot changes.
    pub links: Vec<(String, String, u32)>,
}

/// What a commit did to the outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Partials added.
    pub partials: u64,
    /// Partials merged away by coarsening.
    pub coarsened: u64,
    /// Readings dropped at the floor.
    pub dropped_readings: u64,
}

/// A formed batch.
#[derive(Debug, Clone)]
pub struct FormedBatch {
    /// Its sequence.
    pub seq: u64,
    /// Its encoded payload.
    pub payload: Vec<u8>,
    /// Readings it holds.
    pub readings: u64,
}

/// The agent's database.
pub struct Store {
    conn: Connection,
    partial_bytes: u64,
    batch_bytes: u64,
    /// Checkpoints the WAL off the commit path (see [`checkpoint`]).
    _checkpointer: Checkpointer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("partial_bytes", &self.partial_bytes)
            .field("batch_bytes", &self.batch_bytes)
            .finish()
    }
}

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sources(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, watermark INTEGER);
CREATE TABLE IF NOT EXISTS series(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, quantum INTEGER NOT NULL,
    source INTEGER NOT NULL, closed_before INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS open_windows(series INTEGER NOT NULL, start INTEGER NOT NULL, summary BLOB NOT NULL,
    PRIMARY KEY(series, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices(device TEXT NOT NULL, boot INTEGER NOT NULL, hello BLOB NOT NULL,
    offset_ms INTEGER NOT NULL, hwm INTEGER, above BLOB NOT NULL, PRIMARY KEY(device, boot));
CREATE TABLE IF NOT EXISTS links(link TEXT PRIMARY KEY, device TEXT NOT NULL, boot INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, series INTEGER NOT NULL,
    start INTEGER NOT NULL, width INTEGER NOT NULL, readings INTEGER NOT NULL, bytes INTEGER NOT NULL,
    summary BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches(seq INTEGER PRIMARY KEY, readings INTEGER NOT NULL, payload BLOB NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('next_seq', 1), ('dropped', 0), ('schema', 2);
";

/// Brings a schema-1 database to [`SCHEMA`] if it holds no summary (open
/// windows, unsent partials or batches): sketches of schema 1 index tick
/// counts and cannot be converted exactly, so one that does is refused.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
        r.get(0)
    })?;
    if found == SCHEMA {
        return Ok(());
    }
    let held: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM open_windows) + (SELECT count(*) FROM outbox)
              + (SELECT count(*) FROM batches)",
        [],
        |r| r.get(0),
    )?;
    if found > SCHEMA {
        return Err(corrupt(
            "schema",
            format!("version {found} is newer than this agent's {SCHEMA}"),
        ));
    }
    if held > 0 {
        return Err(StoreError::TickIndexed { found });
    }
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'schema'", [SCHEMA])?;
    Ok(())
}

fn encode_summary(s: &Summary) -> Vec<u8> {
    postcard::to_allocvec(s).unwrap_or_default()
}

fn decode_summary(b: &[u8]) -> Result<Summary, StoreError> {
    postcard::from_bytes(b).map_err(|e| corrupt("summary", e))
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path, sync: Synchronous) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA_SQL)?;
        migrate(&conn)?;
        let checkpointer = Checkpointer::start(&conn, path, checkpoint::INTERVAL)?;
        let partial_bytes: i64 =
            conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM outbox", [], |r| {
                r.get(0)
            })?;
        let batch_bytes: i64 = conn.query_row(
            "SELECT COALESCE(SUM(length(payload)), 0) FROM batches",
            [],
            |r| r.get(0),
        )?;
        Ok(Store {
            conn,
            partial_bytes: partial_bytes as u64,
            batch_bytes: batch_bytes as u64,
            _checkpointer: checkpointer,
        })
    }

    /// Bytes of unconfirmed data (unbatched partials and formed batches).
    pub fn outbox_bytes(&self) -> u64 {
        self.partial_bytes + self.batch_bytes
    }

    /// Loads everything needed to resume.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut out = Loaded::default();
        let mut st = self
            .conn
            .prepare("SELECT id, name, watermark FROM sources ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for (i, row) in rows.enumerate() {
            let (id, name, wm) = row?;
            if id != i as i64 {
                return Err(corrupt("sources", format!("id {id} at position {i}")));
            }
            out.sources.push((name, wm));
        }
        let mut st = self
            .conn
            .prepare("SELECT id, key, quantum, source, closed_before FROM series ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for (i, row) in rows.enumerate() {
            let (id, key, q, source, closed_before) = row?;
            if id != i as i64 {
                return Err(corrupt("series", format!("id {id} at position {i}")));
            }
            let key: SeriesKey =
                serde_json::from_str(&key).map_err(|e| corrupt("series key", e))?;
            let quantum =
                tributary_core::Quantum::new(q as i8).map_err(|e| corrupt("series quantum", e))?;
            out.series.push(SeriesRow {
                id: id as SeriesId,
                key,
                quantum,
                source: source as SourceId,
                closed_before,
            });
        }
        let mut st = self
            .conn
            .prepare("SELECT series, start, summary FROM open_windows")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (s, start, blob) = row?;
            out.windows
                .push((s as SeriesId, start, decode_summary(&blob)?));
        }
        let mut st = self
            .conn
            .prepare("SELECT device, boot, hello, offset_ms, hwm, above FROM devices")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        })?;
        for row in rows {
            let (device, boot, hello, offset_ms, hwm, above) = row?;
            out.devices.push(DeviceRow {
                device,
                boot: boot as u32,
                hello: postcard::from_bytes(&hello).map_err(|e| corrupt("device hello", e))?,
                offset_ms,
                hwm: hwm.map(|h| h as u32),
                above: postcard::from_bytes(&above).map_err(|e| corrupt("device dedupe", e))?,
            });
        }
        let mut st = self.conn.prepare("SELECT link, device, boot FROM links")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u32,
            ))
        })?;
        for row in rows {
            out.links.push(row?);
        }
        Ok(out)
    }

    /// Commits one group atomically, coarsening the outbox if it is over
    /// `limits`. `keys` resolves series ids for coarsened partials.
    pub fn commit(
        &mut self,
        c: &Commit,
        limits: &outbox::Limits,
    ) -> Result<CommitOutcome, StoreError> {
        let tx = self.conn.transaction()?;
        let mut added_bytes = 0u64;
        {
            let mut st = tx.prepare_cached("INSERT INTO sources(id, name) VALUES (?1, ?2)")?;
            for (id, name) in &c.new_sources {
                st.execute(params![i64::from(*id), name])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT INTO series(id, key, quantum, source, closed_before) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in &c.new_series {
                let key = serde_json::to_string(&s.key).map_err(|e| corrupt("series key", e))?;
                st.execute(params![
                    i64::from(s.id),
                    key,
                    i64::from(s.quantum.exponent()),
                    i64::from(s.source),
                    s.closed_before
                ])?;
            }
            let mut st = tx.prepare_cached("UPDATE sources SET watermark = ?2 WHERE id = ?1")?;
            for (id, wm) in &c.watermarks {
                st.execute(params![i64::from(*id), wm])?;
            }
            let mut st =
                tx.prepare_cached("DELETE FROM open_windows WHERE series = ?1 AND start = ?2")?;
            for (s, start) in &c.flush.deleted {
                st.execute(params![i64::from(*s), start])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO open_windows(series, start, summary) VALUES (?1, ?2, ?3)",
            )?;
            for (s, start, sum) in &c.flush.checkpoints {
                st.execute(params![i64::from(*s), start, encode_summary(sum)])?;
            }
            let mut st = tx.prepare_cached("UPDATE series SET closed_before = ?2 WHERE id = ?1")?;
            for (s, cb) in &c.flush.closed_before {
                st.execute(params![i64::from(*s), cb])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT INTO outbox(series, start, width, readings, bytes, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in &c.flush.emitted {
                let blob = encode_summary(&e.summary);
                added_bytes += blob.len() as u64;
                st.execute(params![
                    i64::from(e.series),
                    e.window.start(),
                    e.window.width().ms(),
                    e.summary.count() as i64,
                    blob.len() as i64,
                    blob
                ])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO devices(device, boot, hello, offset_ms, hwm, above) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for d in &c.devices {
                st.execute(params![
                    d.device,
                    i64::from(d.boot),
                    postcard::to_allocvec(&d.hello).unwrap_or_default(),
                    d.offset_ms,
                    d.hwm.map(i64::from),
                    postcard::to_allocvec(&d.above).unwrap_or_default()
                ])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO links(link, device, boot) VALUES (?1, ?2, ?3)",
            )?;
            for (l, d, b) in &c.links {
                st.execute(params![l, d, i64::from(*b)])?;
            }
        }
        let mut outcome = CommitOutcome {
            partials: c.flush.emitted.len() as u64,
            ..CommitOutcome::default()
        };
        let mut partial_bytes = self.partial_bytes + added_bytes;
        if partial_bytes + self.batch_bytes > limits.max_bytes {
            let r = outbox::shrink(&tx, limits, self.batch_bytes)?;
            outcome.coarsened = r.coarsened;
            outcome.dropped_readings = r.dropped_readings;
            partial_bytes = r.partial_bytes;
            if r.dropped_readings > 0 {
                tx.execute(
                    "UPDATE meta SET value = value + ?1 WHERE key = 'dropped'",
                    params![r.dropped_readings as i64],
                )?;
            }
        }
        tx.commit()?;
        self.partial_bytes = partial_bytes;
        Ok(outcome)
    }

    /// Forms up to `max_batches` batches of at most `max_partials` partials
    /// each from the unbatched outbox, committing them before returning.
    pub fn form_batches(
        &mut self,
        agent: &str,
        watermark: i64,
        max_batches: usize,
        max_partials: usize,
        encoding: Encoding,
    ) -> Result<Vec<FormedBatch>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::new();
        let mut freed = 0u64;
        let mut added = 0u64;
        for _ in 0..max_batches {
            let mut partials = Vec::new();
            let mut ids = Vec::new();
            {
                let mut st = tx.prepare_cached(
                    "SELECT o.id, s.key, o.start, o.width, o.bytes, o.summary FROM outbox o
                     JOIN series s ON s.id = o.series ORDER BY o.id LIMIT ?1",
                )?;
                let rows = st.query_map(params![max_partials as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                    ))
                })?;
                for row in rows {
                    let (id, key, start, width, bytes, blob) = row?;
                    let series: SeriesKey =
                        serde_json::from_str(&key).map_err(|e| corrupt("series key", e))?;
                    let width = Width::new(width).map_err(|e| corrupt("outbox width", e))?;
                    let window =
                        Window::new(start, width).map_err(|e| corrupt("outbox window", e))?;
                    partials.push(Partial {
                        series,
                        window,
                        summary: decode_summary(&blob)?,
                    });
                    ids.push(id);
                    freed += bytes as u64;
                }
            }
            if partials.is_empty() {
                break;
            }
            let seq: i64 =
                tx.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                    r.get(0)
                })?;
            let dropped: i64 =
                tx.query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
                    r.get(0)
                })?;
            let mut batch = Batch::new(agent, seq as u64, watermark, partials);
            batch.dropped_readings = dropped as u64;
            let payload = batch.encode(encoding);
            let readings = batch.readings();
            tx.execute(
                "INSERT INTO batches(seq, readings, payload) VALUES (?1, ?2, ?3)",
                params![seq, readings as i64, payload],
            )?;
            tx.execute(
                "UPDATE meta SET value = CASE key WHEN 'next_seq' THEN value + 1 ELSE 0 END
                 WHERE key IN ('next_seq', 'dropped')",
                [],
            )?;
            {
                let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in ids {
                    del.execute(params![id])?;
                }
            }
            added += payload.len() as u64;
            out.push(FormedBatch {
                seq: seq as u64,
                payload,
                readings,
            });
        }
        tx.commit()?;
        self.partial_bytes = self.partial_bytes.saturating_sub(freed);
        self.batch_bytes += added;
        Ok(out)
    }

    /// Every formed, unconfirmed batch (oldest first).
    pub fn unconfirmed(&self) -> Result<Vec<FormedBatch>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, readings, payload FROM batches ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(FormedBatch {
                seq: r.get::<_, i64>(0)? as u64,
                readings: r.get::<_, i64>(1)? as u64,
                payload: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes confirmed batches; returns (batches, readings) removed.
    pub fn confirm(&mut self, seqs: &[u64]) -> Result<(u64, u64), StoreError> {
        let tx = self.conn.transaction()?;
        let (mut n, mut readings, mut bytes) = (0u64, 0u64, 0u64);
        {
            let mut get =
                tx.prepare_cached("SELECT readings, length(payload) FROM batches WHERE seq = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM batches WHERE seq = ?1")?;
            for &s in seqs {
                let Ok(s) = i64::try_from(s) else { continue };
                let row: Option<(i64, i64)> = get
                    .query_row(params![s], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((r, b)) = row {
                    del.execute(params![s])?;
                    n += 1;
                    readings += r as u64;
                    bytes += b as u64;
                }
            }
        }
        tx.commit()?;
        self.batch_bytes = self.batch_bytes.saturating_sub(bytes);
        Ok((n, readings))
    }

    /// Unbatched partials in the outbox.
    pub fn pending_partials(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests;
