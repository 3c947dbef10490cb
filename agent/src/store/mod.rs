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
//!
//! # Layout
//! - this file — the schema, opening the database, the error type;
//! - [`load`](mod@load) — everything read back at start ([`Loaded`]);
//! - [`commit`](mod@commit) — one group commit ([`Commit`]);
//! - [`outbox`] — the `outbox` table: partials in, partials out to
//!   batches, and the coarsen/drop policy at the byte limit;
//! - [`batches`] — the `batches` table: forming, resending, confirming;
//! - [`config`] — `[store]` and `[outbox]`.

pub mod batches;
pub mod commit;
pub mod config;
pub mod load;
pub mod outbox;

use std::path::Path;

use rusqlite::Connection;
use tributary_core::Summary;
use tributary_runtime::checkpoint::{self, CheckpointError, Checkpointer};

pub use batches::FormedBatch;
pub use commit::{Commit, CommitOutcome};
pub use config::{OutboxConfig, StoreConfig, Synchronous};
pub use load::{DeviceRow, Loaded, SeriesRow};

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
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: e.to_string(),
    }
}

fn encode_summary(s: &Summary) -> Vec<u8> {
    postcard::to_allocvec(s).unwrap_or_default()
}

fn decode_summary(b: &[u8]) -> Result<Summary, StoreError> {
    postcard::from_bytes(b).map_err(|e| corrupt("summary", e))
}

/// The agent's database.
pub struct Store {
    conn: Connection,
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
            .field("limits", &self.limits)
            .field("partial_bytes", &self.partial_bytes)
            .field("batch_bytes", &self.batch_bytes)
            .finish()
    }
}

const SCHEMA: &str = "
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
INSERT OR IGNORE INTO meta(key, value) VALUES ('next_seq', 1), ('dropped', 0), ('schema', 1);
";

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
        conn.execute_batch(SCHEMA)?;
        let checkpointer = Checkpointer::start(&conn, path, checkpoint::INTERVAL)?;
        let partial_bytes = outbox::bytes(&conn)?;
        let batch_bytes = batches::bytes(&conn)?;
        Ok(Store {
            conn,
            limits: outbox::Limits::new(outbox),
            batch_max_partials: outbox.batch_max_partials,
            partial_bytes,
            batch_bytes,
            _checkpointer: checkpointer,
        })
    }

    /// Bytes of unconfirmed data (unbatched partials and formed batches).
    pub fn outbox_bytes(&self) -> u64 {
        self.partial_bytes + self.batch_bytes
    }

    /// Unbatched partials in the outbox.
    pub fn pending_partials(&self) -> Result<u64, StoreError> {
        outbox::count(&self.conn)
    }

    /// Replaces the outbox limits (tests shrink them between commits).
    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, limits: outbox::Limits) {
        self.limits = limits;
    }
}

#[cfg(test)]
mod tests;
