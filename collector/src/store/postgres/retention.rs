//! The PostgreSQL store's retention SQL: expired result rows deleted in
//! bounded batches (one statement, its own transaction, found through the
//! `results_expiry (width, start)` index), with their parked entries.
//!
//! Space: a delete leaves dead tuples that autovacuum makes reusable by
//! later inserts, so the table stops growing once expiry keeps pace with
//! ingest; it does not shrink the files. Dropping whole time partitions
//! instead (issue #16's plan: `results` partitioned by width, then by window
//! start) is not done yet, so [`reclaim`] has nothing to do.

use deadpool_postgres::Client;
use tributary_core::Width;

use crate::store::StoreError;

/// The widths at which results are stored, ascending: a skip-scan of the
/// `(width, start)` index, one look-up per width.
pub(super) async fn widths(client: &Client) -> Result<Vec<Width>, StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH RECURSIVE w(x) AS (
                 SELECT min(width) FROM results
                 UNION ALL
                 SELECT (SELECT min(width) FROM results WHERE width > x) FROM w WHERE x IS NOT NULL)
             SELECT x FROM w WHERE x IS NOT NULL",
        )
        .await?;
    let mut out = Vec::new();
    for row in client.query(&stmt, &[]).await? {
        let ms: i64 = row.get(0);
        out.push(Width::new(ms).map_err(|e| StoreError::Corrupt {
            what: "result width",
            detail: e.to_string(),
        })?);
    }
    Ok(out)
}

/// The earliest window start stored at `width`.
pub(super) async fn oldest(client: &Client, width: Width) -> Result<Option<i64>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT min(start) FROM results WHERE width = $1")
        .await?;
    Ok(client.query_one(&stmt, &[&width.ms()]).await?.get(0))
}

/// Deletes at most `limit` rows at `width` starting before `before`, and
/// the parked entries of the rows it deletes, in one statement.
pub(super) async fn expire(
    client: &Client,
    width: Width,
    before: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // SKIP LOCKED: a row an ingest transaction is merging into right now is
    // left for the next batch instead of waiting for it.
    let stmt = client
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM results WHERE (series, width, start) IN (
                     SELECT series, width, start FROM results
                     WHERE width = $1 AND start < $2
                     ORDER BY start LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING series, width, start),
             unparked AS (
                 DELETE FROM parked p USING gone g
                 WHERE p.series = g.series AND p.width = g.width AND p.start = g.start)
             SELECT count(*) FROM gone",
        )
        .await?;
    let n: i64 = client
        .query_one(&stmt, &[&width.ms(), &before, &limit])
        .await?
        .get(0);
    Ok(usize::try_from(n).unwrap_or(0))
}
