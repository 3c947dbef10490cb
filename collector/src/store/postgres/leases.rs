//! The PostgreSQL store's leases, by the database server's clock (so the
//! instances' clocks need not agree).

use std::time::Duration;

use deadpool_postgres::Client;

use crate::store::codec::ttl_ms;
use crate::store::{Lease, StoreError};

/// Takes or renews the lease `name` for `holder` until `ttl` from now.
pub(super) async fn lease(
    client: &Client,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Lease, StoreError> {
    let ttl_ms = ttl_ms(ttl);
    let take = client
        .prepare_cached(
            "INSERT INTO leases (name, holder, expires)
             VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
             WHERE leases.holder = excluded.holder OR leases.expires <= clock_timestamp()",
        )
        .await?;
    let held_by = client
        .prepare_cached("SELECT holder FROM leases WHERE name = $1")
        .await?;
    // Refused, then released before the holder is read: try again.
    for _ in 0..3 {
        if client.execute(&take, &[&name, &holder, &ttl_ms]).await? == 1 {
            return Ok(Lease::Ours);
        }
        if let Some(row) = client.query_opt(&held_by, &[&name]).await? {
            return Ok(Lease::Theirs(row.get(0)));
        }
    }
    Err(StoreError::Backend(format!(
        "lease {name:?} changed hands three times while being taken"
    )))
}

/// Gives up the lease `name` if `holder` holds it.
pub(super) async fn release(client: &Client, name: &str, holder: &str) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .await?;
    client.execute(&stmt, &[&name, &holder]).await?;
    Ok(())
}
