//! All durable agent state in one SQLite database (WAL).
//!
//! # Design
//! Tables:
//! - `meta(key, value)` — the next batch sequence, readings dropped and not
//!   yet reported (`dropped`), readings dropped ever (`dropped_total`), the
//!   database's [`incarnation`](mod@incarnation);
//! - `sources(id, name, watermark)` and `series(id, key, quantum, source,
//!   closed_before)` — dense ids matching the windower's;
//! - `open_windows(series, start, summary)` — checkpoints of open windows;
//! - `devices(device, boot, hello, offset_ms, hwm, above)` — each device
//!   boot's channels, clock offset and de-duplication state; `links(link,
//!   device, boot)` — which device last spoke on a link;
//! - `outbox(id, series, start, width, readings, bytes, summary)` — closed
//!   partials not yet in a batch, at most one per (series, window) at each
//!   coarsening level (see [`outbox`]);
//! - `batches(seq, readings, payload)` — batches formed but not confirmed.
//!
//! Invariants: one [`Store::commit`] transaction covers everything a group of
//! input changed (window checkpoints, emitted partials, de-dup marks), so
//! after a crash the agent resumes from a consistent point; inputs are
//! acknowledged only after it returns. A batch's identity (seq and content)
//! is fixed when it is formed ([`Store::form_batches`], committed before
//! anything is published) and it is deleted only on the collector's
//! confirmation. Only partials not yet in a batch are coarsened or dropped
//! ([`outbox`]), and every dropped reading is counted in the transaction
//! that drops it. A failed transaction changes nothing, in the database or
//! in the byte counts kept here, so the same [`Commit`] can be retried
//! until the disk has room again. WAL checkpoints run on a thread of their own
//! ([`tributary_runtime::checkpoint`]), so no commit stalls on one.
//!
//! # Layout
//! - this file — the schema, opening the database, the [`Store`] whose
//!   methods run each operation in its transaction and keep the byte counts;
//! - [`load`](mod@load) — everything read back at start ([`Loaded`]);
//! - [`commit`](mod@commit) — what one group commit writes ([`Commit`]);
//! - [`outbox`] — the `outbox` table: partials in, partials out to
//!   batches, and the coarsen/drop policy at the byte limit;
//! - [`batches`] — the `batches` table: forming, resending, confirming;
//! - [`incarnation`](mod@incarnation) — the random id that names this
//!   database in every batch;
//! - [`config`] — `[store]` and `[outbox]`; `codec` — how values are held
//!   in their columns; [`error`] — [`StoreError`].

pub mod batches;
mod codec;
pub mod commit;
pub mod config;
pub mod error;
pub mod incarnation;
pub mod load;
pub mod outbox;

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tributary_core::batch::Encoding;
use tributary_core::Incarnation;
use tributary_runtime::checkpoint::{self, Checkpointer};

pub use batches::FormedBatch;
pub use commit::{Commit, CommitOutcome};
pub use config::{OutboxConfig, StoreConfig, Synchronous};
pub use error::StoreError;
pub use load::{DeviceRow, Loaded, SeriesRow};
pub use outbox::WidthBytes;

/// The agent's database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    incarnation: Incarnation,
    limits: outbox::Limits,
    batch_max_partials: usize,
    /// Bytes of the outbox's rows per width.
    row_bytes: WidthBytes,
    /// Bytes of the formed batches.
    batch_bytes: u64,
    /// Readings dropped ever (`meta.dropped_total`).
    dropped_total: u64,
    /// Checkpoints the WAL off the commit path (see [`checkpoint`]).
    _checkpointer: Checkpointer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("incarnation", &self.incarnation)
            .field("limits", &self.limits)
            .field("row_bytes", &self.row_bytes)
            .field("batch_bytes", &self.batch_bytes)
            .finish()
    }
}

/// The schema version this build writes: 2 since sketches index the real
/// reading (issue #13).
pub const SCHEMA: i64 = 2;

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
CREATE INDEX IF NOT EXISTS outbox_window ON outbox(series, start, width);
CREATE INDEX IF NOT EXISTS outbox_width ON outbox(width, start);
CREATE INDEX IF NOT EXISTS outbox_start ON outbox(start);
CREATE TABLE IF NOT EXISTS batches(seq INTEGER PRIMARY KEY, readings INTEGER NOT NULL, payload BLOB NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('next_seq', 1), ('dropped', 0), ('schema', 2);
INSERT OR IGNORE INTO meta(key, value) SELECT 'dropped_total', value FROM meta WHERE key = 'dropped';
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
    if found > SCHEMA {
        return Err(error::corrupt(
            "schema",
            format!("version {found} is newer than this agent's {SCHEMA}"),
        ));
    }
    let held: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM open_windows) + (SELECT count(*) FROM outbox)
              + (SELECT count(*) FROM batches)",
        [],
        |r| r.get(0),
    )?;
    if held > 0 {
        return Err(StoreError::TickIndexed { found });
    }
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'schema'", [SCHEMA])?;
    Ok(())
}

impl Store {
    /// Opens (creating) the database at `path` with the `[store]` and
    /// `[outbox]` settings.
    pub fn open(
        path: &Path,
        cfg: &StoreConfig,
        outbox: &OutboxConfig,
    ) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match cfg.synchronous {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA_SQL)?;
        migrate(&conn)?;
        let incarnation = incarnation::ensure(&conn)?;
        let checkpointer = Checkpointer::start(&conn, path, checkpoint::INTERVAL)?;
        let row_bytes = outbox::width_bytes(&conn)?;
        let batch_bytes = batches::bytes(&conn)?;
        let dropped_total: i64 = conn.query_row(
            "SELECT value FROM meta WHERE key = 'dropped_total'",
            [],
            |r| r.get(0),
        )?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            incarnation,
            limits: outbox::Limits::new(outbox),
            batch_max_partials: outbox.batch_max_partials,
            row_bytes,
            batch_bytes,
            dropped_total: u64::try_from(dropped_total).unwrap_or(0),
            _checkpointer: checkpointer,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's incarnation, carried in every batch.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Bytes of unconfirmed data (unbatched partials and formed batches).
    pub fn outbox_bytes(&self) -> u64 {
        self.row_bytes.total() + self.batch_bytes
    }

    /// Bytes of unbatched partials per window width.
    pub fn row_bytes(&self) -> &WidthBytes {
        &self.row_bytes
    }

    /// Bytes of formed, unconfirmed batches.
    pub fn batch_bytes(&self) -> u64 {
        self.batch_bytes
    }

    /// Readings dropped at the outbox's floor ever (durable).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Unbatched partials in the outbox.
    pub fn pending_partials(&self) -> Result<u64, StoreError> {
        outbox::count(&self.conn)
    }

    /// Loads everything needed to resume.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        load::load(&self.conn)
    }

    /// Commits one group atomically, coarsening the outbox if it is then
    /// over its byte limit. On an error nothing changed: `c` may be
    /// committed again.
    pub fn commit(&mut self, c: &Commit) -> Result<CommitOutcome, StoreError> {
        let tx = self.conn.transaction()?;
        let added = commit::write(&tx, c)?;
        let mut outcome = CommitOutcome {
            partials: c.flush.emitted.len() as u64,
            ..CommitOutcome::default()
        };
        let mut rows = self.row_bytes.clone();
        rows.add_all(&added);
        let budget = self.limits.row_budget(self.batch_bytes);
        if rows.total() > budget {
            let r = outbox::shrink(&tx, &self.limits, budget, &mut rows)?;
            outcome.coarsened = r.coarsened;
            outcome.dropped_readings = r.dropped_readings;
        }
        tx.commit()?;
        self.row_bytes = rows;
        self.dropped_total += outcome.dropped_readings;
        Ok(outcome)
    }

    /// Forms up to `max_batches` batches of agent `agent`, of at most
    /// `outbox.batch_max_partials` partials each, from the unbatched outbox,
    /// oldest first, committing them before returning. Batches are formed
    /// only while formed batches take less than their share of
    /// `outbox.max_bytes` ([`outbox::Limits::batch_share`]; one batch is
    /// always allowed when none is in flight); a batch that would take more
    /// than its part of the share is cut short. Readings dropped since the
    /// last batch ride in the first one (with no partials if there are none).
    pub fn form_batches(
        &mut self,
        agent: &str,
        watermark: i64,
        max_batches: usize,
        encoding: Encoding,
    ) -> Result<Vec<FormedBatch>, StoreError> {
        let shape = batches::Shape {
            agent,
            incarnation: self.incarnation,
            encoding,
            max_partials: self.batch_max_partials,
            max_bytes: self.limits.batch_max_bytes(),
        };
        let room = batches::Room {
            batches: max_batches,
            in_flight: self.batch_bytes,
            share: self.limits.batch_share(),
        };
        let tx = self.conn.transaction()?;
        let formed = batches::form(&tx, shape, watermark, room)?;
        tx.commit()?;
        for (w, b) in formed.freed.iter() {
            self.row_bytes.sub(w, b);
        }
        self.batch_bytes += formed.added;
        Ok(formed.batches)
    }

    /// Every formed, unconfirmed batch (oldest first).
    pub fn unconfirmed(&self) -> Result<Vec<FormedBatch>, StoreError> {
        batches::unconfirmed(&self.conn, self.incarnation)
    }

    /// Deletes confirmed batches; returns (batches, readings) removed. A
    /// sequence not (or no longer) stored is skipped.
    pub fn confirm(&mut self, seqs: &[u64]) -> Result<(u64, u64), StoreError> {
        let tx = self.conn.transaction()?;
        let done = batches::confirm(&tx, seqs)?;
        tx.commit()?;
        self.batch_bytes = self.batch_bytes.saturating_sub(done.bytes);
        Ok((done.batches, done.readings))
    }

    /// Makes every write fail (SQLite's `query_only`), as a failing disk
    /// would, or work again (tests).
    #[cfg(test)]
    pub(crate) fn set_query_only(&self, on: bool) {
        self.conn
            .pragma_update(None, "query_only", on)
            .expect("query_only is a pragma");
    }

    /// Replaces the outbox limits (tests shrink them between commits).
    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, limits: outbox::Limits) {
        self.limits = limits;
    }
}

#[cfg(test)]
mod tests;
