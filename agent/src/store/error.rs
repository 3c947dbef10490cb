//! How the store fails, and how a failure is classified for metrics
//! ([`StoreError::fault`], one of [`FAULTS`]).

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

/// The reasons a store operation fails, as the `reason` label of
/// `tributary_agent_store_errors_total` and `tributary_agent_store_failing`.
pub const FAULTS: [&str; 6] = [
    "disk_full",
    "io",
    "corrupt",
    "cannot_write",
    "busy",
    "other",
];

/// The errno of a full disk.
const ENOSPC: i32 = nix::errno::Errno::ENOSPC as i32;

impl StoreError {
    /// Which of [`FAULTS`] this is.
    pub fn fault(&self) -> &'static str {
        use rusqlite::ErrorCode as C;
        let sqlite = |e: &rusqlite::Error| match e.sqlite_error_code() {
            Some(C::DiskFull) => "disk_full",
            Some(C::SystemIoFailure) => "io",
            Some(C::DatabaseCorrupt | C::NotADatabase) => "corrupt",
            Some(C::ReadOnly | C::PermissionDenied | C::CannotOpen) => "cannot_write",
            Some(C::DatabaseBusy | C::DatabaseLocked) => "busy",
            _ => "other",
        };
        match self {
            StoreError::Sqlite(e) => sqlite(e),
            StoreError::Checkpoint(CheckpointError::Sqlite(e)) => sqlite(e),
            StoreError::Checkpoint(CheckpointError::Spawn(_)) | StoreError::Random(_) => "other",
            StoreError::Corrupt { .. } | StoreError::TickIndexed { .. } => "corrupt",
            StoreError::Dir(e) if e.raw_os_error() == Some(ENOSPC) => "disk_full",
            StoreError::Dir(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                "cannot_write"
            }
            StoreError::Dir(_) => "io",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert_eq!(StoreError::from(full).fault(), "disk_full");
        let dir = std::io::Error::from_raw_os_error(ENOSPC);
        assert_eq!(StoreError::Dir(dir).fault(), "disk_full");
        assert_eq!(corrupt("summary", "bad").fault(), "corrupt");
        for f in FAULTS {
            assert_eq!(FAULTS.iter().filter(|g| **g == f).count(), 1);
        }
    }
}
