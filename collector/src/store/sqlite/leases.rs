//! The SQLite store's leases (several processes may open one database
//! file), by the collector's clock.

use std::time::Duration;

use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::codec::ttl_ms;
use crate::store::{Lease, StoreError};

/// Takes or renews the lease `name` for `holder` until `ttl` from now.
pub(super) fn lease(
    conn: &mut Connection,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Lease, StoreError> {
    let now = tributary_runtime::now_ms();
    let expires = now.saturating_add(ttl_ms(ttl));
    // One transaction: the holder read back is the one that refused us.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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

/// Gives up the lease `name` if `holder` holds it.
pub(super) fn release(conn: &Connection, name: &str, holder: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
        .execute(params![name, holder])?;
    Ok(())
}
