//! The database's incarnation (DESIGN §4): a random id drawn when the
//! database is created (or first opened by a version that knows it) and
//! kept in `meta` for as long as the file lives. Every batch carries it, so
//! a collector tells this database's batches from those of a database that
//! was lost or replaced under the same agent id and numbers from 1 again.
//!
//! Restoring an old copy of the database brings back an old incarnation
//! *and* old sequence numbers the collector has applied: its next batches
//! would be taken for replays. Start a restored gateway on a fresh database
//! instead (or delete the `incarnation` row of `meta`, which draws a new one
//! at the next start).

use rusqlite::Connection;
use tributary_core::Incarnation;

use super::error::StoreError;

/// The database's incarnation, drawn from the operating system's random
/// source and stored when the database has none yet.
pub(crate) fn ensure(conn: &Connection) -> Result<Incarnation, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    // The column is a SQL integer: the 64 bits are stored as an i64.
    let drawn = i64::from_be_bytes(bytes);
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('incarnation', ?1)",
        [drawn],
    )?;
    let stored: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'incarnation'",
        [],
        |r| r.get(0),
    )?;
    Ok(Incarnation::new(u64::from_be_bytes(stored.to_be_bytes())))
}
