//! How the store fails.

use tributary_runtime::checkpoint::CheckpointError;

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
    /// The operating system's random source failed (drawing the
    /// database's incarnation).
    #[error("cannot draw the database's incarnation: {0}")]
    Random(String),
    /// The data directory could not be created.
    #[error("cannot create data directory: {0}")]
    Dir(#[from] std::io::Error),
    /// The database holds summaries of schema 1, whose sketches index tick
    /// counts: they cannot be converted exactly to real-value buckets.
    #[error("the agent database holds summaries of schema {found}, whose sketches index tick counts; they cannot be converted exactly to this version's real-value buckets (schema {}): let the previous agent version drain its outbox, or move the database aside (its unsent data is then lost)", super::SCHEMA)]
    TickIndexed {
        /// The schema found.
        found: i64,
    },
}

/// A stored `what` that does not decode, and why.
pub(crate) fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: e.to_string(),
    }
}
