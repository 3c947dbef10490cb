//! The PostgreSQL store's change feed, parked rows and durable cursors.
//!
//! # Design: positions without a global counter (schema 5)
//! A row's change number is the position `base + xid · 2^24 + i` given by
//! the transaction that last wrote it (`apply::positions`): `xid` that
//! transaction's 64-bit id, `i` the row's index in it, `base` the last
//! number of the counter that schema 4 took in turn on every commit.
//! Transactions are numbered when they start writing, not when they commit,
//! so a later-numbered one may commit first; a reader therefore only looks
//! at positions below `base + xmin · 2^24`, where `xmin` is the oldest
//! transaction still running in its statement's snapshot: every transaction
//! numbered below it has ended (so its rows, if it committed, are in the
//! snapshot), and every transaction that has not yet committed is numbered
//! at or above it. A reader that has seen position `n` thus never later
//! finds a committed position `≤ n` it missed, and writers share nothing but
//! the rows they really touch. The price: a row shows in the feed only once
//! every transaction older than its writer has ended — a long-running
//! transaction anywhere on the server (also one idle in transaction, or a
//! prepared one) holds the feed back while it runs; writes go on.

use deadpool_postgres::Client;
use tokio_postgres::types::ToSql;
use tributary_core::{SeriesKey, Width};

use super::apply::POSITION_STRIDE;
use crate::store::codec::{change_number, corrupt, feed_bounds, key_texts, parse_key, stored};
use crate::store::{Changed, StoreError};

/// A change-feed query: `sql` with `params`, whose rows are (change, series
/// key, start, revision, summary) of windows at `width`.
async fn changed_rows(
    client: &Client,
    sql: &str,
    width: Width,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Changed>, StoreError> {
    let stmt = client.prepare_cached(sql).await?;
    client
        .query(&stmt, params)
        .await?
        .iter()
        .map(|row| {
            Ok(Changed {
                change: change_number(row.get(0))?,
                series: parse_key(row.get(1))?,
                stored: stored(row.get(2), width, row.get(3), row.get(4))?,
            })
        })
        .collect()
}

/// Rows at `width` changed after `after`, in change order, at most `limit`.
pub(super) async fn changed_since(
    client: &Client,
    width: Width,
    after: u64,
    limit: usize,
) -> Result<Vec<Changed>, StoreError> {
    let (after, limit) = feed_bounds(after, limit);
    changed_rows(
        client,
        "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM results r
         JOIN series s ON s.id = r.series
         WHERE r.width = $1 AND r.changed > $2
           AND r.changed < (SELECT value FROM meta WHERE key = 'position_base')
             + pg_snapshot_xmin(pg_current_snapshot())::text::bigint * $4
         ORDER BY r.changed LIMIT $3",
        width,
        &[&width.ms(), &after, &limit, &POSITION_STRIDE],
    )
    .await
}

/// The rows `name` parked at `width`, changed after `after`.
pub(super) async fn parked(
    client: &Client,
    name: &str,
    width: Width,
    after: u64,
    limit: usize,
) -> Result<Vec<Changed>, StoreError> {
    let (after, limit) = feed_bounds(after, limit);
    changed_rows(
        client,
        "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM parked p
         JOIN results r ON r.series = p.series AND r.width = p.width AND r.start = p.start
         JOIN series s ON s.id = r.series
         WHERE p.name = $4 AND p.width = $1 AND r.changed > $2
           AND r.changed < (SELECT value FROM meta WHERE key = 'position_base')
             + pg_snapshot_xmin(pg_current_snapshot())::text::bigint * $5
         ORDER BY r.changed LIMIT $3",
        width,
        &[&width.ms(), &after, &limit, &name, &POSITION_STRIDE],
    )
    .await
}

/// Parks (`park`) or un-parks the rows of `keys` for `name` in one
/// statement, the keys as two parallel arrays (`unnest`).
pub(super) async fn park(
    client: &Client,
    park: bool,
    name: &str,
    width: Width,
    keys: &[(SeriesKey, i64)],
) -> Result<(), StoreError> {
    let sql = if park {
        "INSERT INTO parked (name, series, width, start)
         SELECT $1, s.id, $2, u.start FROM unnest($3::text[], $4::bigint[]) AS u(k, start)
         JOIN series s ON s.key = u.k
         ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM parked p USING unnest($3::text[], $4::bigint[]) AS u(k, start), series s
         WHERE p.name = $1 AND p.width = $2 AND s.key = u.k AND p.series = s.id AND p.start = u.start"
    };
    let series: Vec<SeriesKey> = keys.iter().map(|(k, _)| k.clone()).collect();
    let texts = key_texts(&series)?;
    let starts: Vec<i64> = keys.iter().map(|(_, start)| *start).collect();
    let stmt = client.prepare_cached(sql).await?;
    client
        .execute(&stmt, &[&name, &width.ms(), &texts, &starts])
        .await?;
    Ok(())
}

/// The cursor `name` (0 when never set).
pub(super) async fn cursor(client: &Client, name: &str) -> Result<u64, StoreError> {
    let stmt = client
        .prepare_cached("SELECT value FROM cursors WHERE name = $1")
        .await?;
    let v: Option<i64> = client.query_opt(&stmt, &[&name]).await?.map(|r| r.get(0));
    u64::try_from(v.unwrap_or(0)).map_err(|e| corrupt("cursor", e))
}

/// Moves the cursor `name` forward to `value` (never back).
pub(super) async fn set_cursor(client: &Client, name: &str, value: u64) -> Result<(), StoreError> {
    let value = i64::try_from(value).map_err(|e| corrupt("cursor", e))?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO cursors (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = GREATEST(cursors.value, excluded.value)",
        )
        .await?;
    client.execute(&stmt, &[&name, &value]).await?;
    Ok(())
}
