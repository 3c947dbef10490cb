//! The SQLite store's change feed, parked rows and durable cursors. Reads
//! run on reader connections, writes on the writer's.

use rusqlite::{params, Connection, OptionalExtension};
use tributary_core::{SeriesKey, Width};

use super::schema::span_sql;
use crate::store::codec::{change_number, corrupt, feed_bounds, key_text, parse_key, stored};
use crate::store::{Changed, StoreError};

/// Runs a change-feed query whose rows are (change, series key, start,
/// revision, summary) of windows at `width`.
fn changed_rows(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    width: Width,
) -> Result<Vec<Changed>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(Changed {
            change: change_number(r.get(0)?)?,
            series: parse_key(&r.get::<_, String>(1)?)?,
            stored: stored(r.get(2)?, width, r.get(3)?, &r.get::<_, Vec<u8>>(4)?)?,
        });
    }
    Ok(out)
}

/// Rows at `width` changed after `after`, in change order, at most `limit`
/// (from the change feed's log, [`super::feed_log`]).
pub(super) fn changed_since(
    conn: &Connection,
    width: Width,
    after: u64,
    limit: usize,
) -> Result<Vec<Changed>, StoreError> {
    super::feed_log::read(conn, width, after, limit)
}

/// The rows `name` parked at `width`, changed after `after`.
pub(super) fn parked(
    conn: &Connection,
    name: &str,
    width: Width,
    after: u64,
    limit: usize,
) -> Result<Vec<Changed>, StoreError> {
    let (after, limit) = feed_bounds(after, limit);
    let sql = format!(
        "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM parked p
         JOIN results r ON r.width = p.width AND r.span = {} AND r.series = p.series
           AND r.start = p.start
         JOIN series s ON s.id = r.series
         WHERE p.name = ?4 AND p.width = ?1 AND r.changed > ?2 ORDER BY r.changed LIMIT ?3",
        span_sql("p.width", "p.start")
    );
    changed_rows(conn, &sql, params![width.ms(), after, limit, name], width)
}

/// Parks (`park`) or un-parks rows: runs the statement once per (series
/// key, window start) of `keys`, with (`name`, width, key text, start) as
/// `?1`–`?4`, in one transaction.
pub(super) fn park(
    conn: &mut Connection,
    park: bool,
    name: &str,
    width: Width,
    keys: &[(SeriesKey, i64)],
) -> Result<(), StoreError> {
    let sql = if park {
        "INSERT OR IGNORE INTO parked (name, series, width, start)
         SELECT ?1, id, ?2, ?4 FROM series WHERE key = ?3"
    } else {
        "DELETE FROM parked WHERE name = ?1 AND width = ?2 AND start = ?4
         AND series = (SELECT id FROM series WHERE key = ?3)"
    };
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        for (series, start) in keys {
            stmt.execute(params![name, width.ms(), key_text(series)?, start])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The cursor `name` (0 when never set).
pub(super) fn cursor(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT value FROM cursors WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?;
    u64::try_from(v.unwrap_or(0)).map_err(|e| corrupt("cursor", e))
}

/// Moves the cursor `name` forward to `value` (never back).
pub(super) fn set_cursor(conn: &Connection, name: &str, value: u64) -> Result<(), StoreError> {
    let value = i64::try_from(value).map_err(|e| corrupt("cursor", e))?;
    conn.prepare_cached(
        "INSERT INTO cursors (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute(params![name, value])?;
    Ok(())
}
