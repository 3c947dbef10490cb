//! All durable agent state in one SQLite database (WAL).
//!
//! # Design
//! Tables:
//! - `meta(key, value)` — the next batch sequence, readings dropped and not
//!   yet reported, the database's [`incarnation`](mod@incarnation);
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

/// The agent's database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    incarnation: Incarnation,
    limits: outbox::Limits,
    batch_max_partials: usize,
    partial_bytes: u64,
    batch_bytes: u64,
    /// Checkpoints the WAL off the commit path (see [`checkpoint`]).
    _checkpointer: Checkpointer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("incarnation", &self.incarnation)
            .field("limits", &self.limits)
            .field("partial_bytes", &self.partial_bytes)
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
        let partial_bytes = outbox::bytes(&conn)?;
        let batch_bytes = batches::bytes(&conn)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            incarnation,
            limits: outbox::Limits::new(outbox),
            batch_max_partials: outbox.batch_max_partials,
            partial_bytes,
            batch_bytes,
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
        self.partial_bytes + self.batch_bytes
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
    /// over its byte limit.
    pub fn commit(&mut self, c: &Commit) -> Result<CommitOutcome, StoreError> {
        let tx = self.conn.transaction()?;
        let added = commit::write(&tx, c)?;
        let mut outcome = CommitOutcome {
            partials: c.flush.emitted.len() as u64,
            ..CommitOutcome::default()
        };
        let mut partial_bytes = self.partial_bytes + added;
        if partial_bytes + self.batch_bytes > self.limits.max_bytes {
            let r = outbox::shrink(&tx, &self.limits, self.batch_bytes)?;
            outcome.coarsened = r.coarsened;
            outcome.dropped_readings = r.dropped_readings;
            partial_bytes = r.partial_bytes;
        }
        tx.commit()?;
        self.partial_bytes = partial_bytes;
        Ok(outcome)
    }

    /// Forms up to `max_batches` batches of agent `agent`, of at most
    /// `outbox.batch_max_partials` partials each, from the unbatched outbox,
    /// oldest first, committing them before returning.
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
        };
        let tx = self.conn.transaction()?;
        let formed = batches::form(&tx, shape, watermark, max_batches)?;
        tx.commit()?;
        self.partial_bytes = self.partial_bytes.saturating_sub(formed.freed);
        self.batch_bytes += formed.added;
        Ok(formed.batches)
    }

    /// Every formed, unconfirmed batch (oldest first).
    pub fn unconfirmed(&self) -> Result<Vec<FormedBatch>, StoreError> {
        batches::unconfirmed(&self.conn)
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

    /// Replaces the outbox limits (tests shrink them between commits).
    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, limits: outbox::Limits) {
        self.limits = limits;
    }
}

#[cfg(test)]
mod tests;
