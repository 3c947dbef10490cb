//! The PostgreSQL store's retention: `results` is partitioned by RANGE on
//! (width, start) (schema version 6), so expiry is mostly a `DROP TABLE`.
//!
//! # Design
//! - **Partitions.** One per width and span of window starts: a day for
//!   widths under an hour (agent windows), 30 days for coarser ones
//!   ([`span`]), named `results_w{width}_{k}` for the span `k` (`n{k}` when
//!   negative) of `[k·span, (k+1)·span)`. The retention task creates the
//!   current span's and the next two ahead of need ([`prepare`]) for each
//!   stored width; rows with no partition of their own (a new width before
//!   the task's next run, backfill of old windows, and every row carried
//!   over by the migration) live in `results_default`.
//! - **Expiry** ([`expire`]): first every partition of the width whose span
//!   ends at or before the cut is dropped whole (its space goes back to the
//!   file system at once), then what is left before the cut — in the
//!   partition at the edge and in the default — goes in bounded `DELETE`s.
//! - **Locks.** Creating and dropping a partition takes a short
//!   `ACCESS EXCLUSIVE` lock on `results`; it runs with a `lock_timeout`
//!   ([`LOCK_TIMEOUT`]) that bounds the wait for the lock, and a step that
//!   cannot get its lock is left to the next run. Creating a partition also
//!   reads the default partition under that lock (no row of the default may
//!   fall in the new range), so the task prepares every stored width, kept
//!   forever or not, and the default stays small; a default grown large
//!   (rows carried over by the version-6 migration) makes each creation
//!   that much longer. (Detaching concurrently
//!   is not possible while a default partition exists.) A partition whose
//!   range rows of the default already hold is not created (the default
//!   keeps them, expired by `DELETE`).
//! - **Counts.** A dropped partition's rows are counted by the planner's
//!   estimate (`reltuples`), not by a scan of the partition.
//! - **Finding rows by start** (the bounded `DELETE`s, [`oldest`]) goes
//!   through the BRIN index `results_expiry`, which answers only from the
//!   block ranges it has summarised (an unsummarised range matches every
//!   probe and is read whole), and which the planner takes only with the
//!   partition's statistics (without, it reads the width through
//!   `results_changed`, and each probe scans the partition). [`prepare`]
//!   summarises the ranges of the width's ended partitions and analyses
//!   those whose statistics are missing or stale ([`ready_ended`]); the
//!   current partition and the default are left to autovacuum.

use deadpool_postgres::Client;
use tributary_core::Width;

use crate::store::codec::corrupt;
use crate::store::StoreError;

/// How long a partition's creation or drop waits for its lock.
pub(super) const LOCK_TIMEOUT: &str = "2s";

/// Spans of window starts ahead of the current one given partitions.
const AHEAD: i64 = 2;

/// The span of window starts one partition of `width` holds (ms).
pub(super) fn span(width: Width) -> i64 {
    const DAY: i64 = 86_400_000;
    if width.ms() < 3_600_000 {
        DAY
    } else {
        30 * DAY
    }
}

/// The name of the partition of `width` holding span `k`.
fn partition(width: Width, k: i64) -> String {
    if k < 0 {
        format!("results_w{}_n{}", width.ms(), k.unsigned_abs())
    } else {
        format!("results_w{}_{k}", width.ms())
    }
}

/// The span `k` of a partition name of `width`, if it is one.
fn span_of(width: Width, name: &str) -> Option<i64> {
    let rest = name.strip_prefix(&format!("results_w{}_", width.ms()))?;
    match rest.strip_prefix('n') {
        Some(n) => n.parse::<i64>().ok().map(|k| -k),
        None => rest.parse().ok(),
    }
}

/// Creates the partitions of `width` for the span holding `now` and the
/// next [`AHEAD`]; one whose range the default partition holds rows of, or
/// whose lock is not granted in time, is left out (logged). Then
/// readies the ended ones ([`ready_ended`]).
pub(super) async fn prepare(client: &mut Client, width: Width, now: i64) -> Result<(), StoreError> {
    let span = span(width);
    let k0 = now.div_euclid(span);
    for k in k0..=k0.saturating_add(AHEAD) {
        let (Some(from), Some(to)) = (
            k.checked_mul(span),
            k.checked_add(1).and_then(|k| k.checked_mul(span)),
        ) else {
            continue;
        };
        let name = partition(width, k);
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get(0);
        if exists {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await?;
        let made = tx
            .batch_execute(&format!(
                "CREATE TABLE {name} PARTITION OF results FOR VALUES FROM ({w}, {from}) TO ({w}, {to})",
                w = width.ms()
            ))
            .await;
        match made {
            Ok(()) => tx.commit().await?,
            Err(e) => {
                tracing::debug!(partition = name, error = %StoreError::from(e), "partition not created; the default partition keeps its rows");
            }
        }
    }
    ready_ended(client, width, now).await?;
    Ok(())
}

/// How long readying an ended partition waits for its lock: below the
/// default `deadlock_timeout` (1 s), after which a waiting request would
/// cancel an autovacuum of that partition.
const SUMMARIZE_LOCK_TIMEOUT: &str = "500ms";

/// Ended partitions readied per width and call at most: the work of one
/// retention run stays bounded however many partitions are kept (after a
/// migration or a bulk load the rest follow on later runs).
const READY_PER_RUN: usize = 8;

/// Readies partitions of `width` whose span ended before `now` for finding
/// rows by start: those whose statistics are missing or stale
/// (autovacuum's own threshold: more than 50 + 10 % of their rows written
/// since), oldest first, at most [`READY_PER_RUN`], each analysed and its
/// new block ranges of `results_expiry` summarised in a transaction of its
/// own. A partition whose lock is not granted in time is left to the next
/// run; any other failure is the caller's (a `prepare` error of the
/// retention task).
///
/// A range the BRIN index has no summary of matches every probe, so
/// [`oldest`]'s steps and [`delete_expired`]'s scan read all of it; only
/// `VACUUM` summarises new ranges otherwise (the index is made without
/// `autosummarize`). Without statistics (or with those of a partition
/// analysed while nearly empty) the planner reads a partition through
/// `results_changed` instead of the BRIN index. Ended partitions take no
/// more rows but late ones, so each is readied again only once late rows
/// or expiry's deletes make its statistics stale; the current partition,
/// being written (and vacuumed), is left to autovacuum.
async fn ready_ended(client: &mut Client, width: Width, now: i64) -> Result<(), StoreError> {
    let span = span(width);
    let current = now.div_euclid(span);
    let parts = client
        .query(
            "SELECT t.relname::text, x.indexrelid::regclass::text
             FROM pg_inherits i
             JOIN pg_index x ON x.indexrelid = i.inhrelid
             JOIN pg_class t ON t.oid = x.indrelid
             LEFT JOIN pg_stat_user_tables s ON s.relid = t.oid
             WHERE i.inhparent = 'results_expiry'::regclass AND t.relname LIKE $1
               AND (t.reltuples < 0 OR coalesce(s.n_mod_since_analyze, 0)
                        > 50 + 0.1 * greatest(t.reltuples, 0))",
            &[&format!("results\\_w{}\\_%", width.ms())],
        )
        .await?;
    let mut stale: Vec<(i64, String, String)> = parts
        .iter()
        .filter_map(|r| {
            let k = span_of(width, r.get(0))?;
            (k < current).then(|| (k, r.get(0), r.get(1)))
        })
        .collect();
    stale.sort_unstable();
    for (_, table, index) in stale.iter().take(READY_PER_RUN) {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{SUMMARIZE_LOCK_TIMEOUT}'"
        ))
        .await?;
        let done = async {
            // A name of this width's partitions ([`partition`]).
            tx.batch_execute(&format!("ANALYZE {table}")).await?;
            tx.execute(
                "SELECT brin_summarize_new_values($1::text::regclass)",
                &[index],
            )
            .await
        }
        .await;
        match done {
            Ok(_) => tx.commit().await?,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::debug!(
                    partition = table,
                    "ended partition busy; readied at the next run"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Drops the partitions of `width` whose span ends at or before `before`,
/// with the parked entries of their rows; answers the rows they held (the
/// planner's estimate) and their bytes. A partition whose lock is not
/// granted in time is left to the next call.
pub(super) async fn drop_expired(
    client: &mut Client,
    width: Width,
    before: i64,
) -> Result<(u64, u64), StoreError> {
    let span = span(width);
    // This width's partitions only (`_` escaped in the pattern).
    let names = client
        .query(
            "SELECT c.relname::text, greatest(c.reltuples, 0)::bigint,
                    pg_total_relation_size(c.oid)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'results'::regclass AND c.relname LIKE $1",
            &[&format!("results\\_w{}\\_%", width.ms())],
        )
        .await?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    for row in names {
        let name: String = row.get(0);
        let Some(k) = span_of(width, &name) else {
            continue;
        };
        let Some(end) = k.checked_add(1).and_then(|k| k.checked_mul(span)) else {
            continue;
        };
        if end > before {
            continue;
        }
        let from = k.saturating_mul(span);
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await?;
        let dropped = async {
            tx.execute(
                "DELETE FROM parked WHERE width = $1 AND start >= $2 AND start < $3",
                &[&width.ms(), &from, &end],
            )
            .await?;
            tx.batch_execute(&format!("DROP TABLE {name}")).await?;
            tx.commit().await
        }
        .await;
        match dropped {
            Ok(()) => {
                rows = rows.saturating_add(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
                bytes = bytes.saturating_add(u64::try_from(row.get::<_, i64>(2)).unwrap_or(0));
            }
            Err(e) => {
                tracing::warn!(partition = name, error = %StoreError::from(e), "expired partition not dropped; retried at the next run");
            }
        }
    }
    Ok((rows, bytes))
}

/// The widths at which results are stored, ascending: a skip-scan of the
/// `(width, changed)` index `results_changed`, one look-up per width.
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
        out.push(Width::new(ms).map_err(|e| corrupt("result width", e))?);
    }
    Ok(out)
}

/// The earliest window start stored at `width`, in one statement: a binary
/// search over starts run by the server (a recursive CTE), each step one
/// `EXISTS` that the BRIN index `results_expiry` answers from the block
/// ranges holding starts at or below the probe (schema 8 has no B-tree to
/// read a minimum from, and `min(start)` would read every row of the
/// width). 64 steps of a few buffers each, once [`ready_ended`] has made
/// the partitions' statistics and BRIN summaries: on 1 M rows 2 ms in one
/// round trip, where the 64 round trips of the same search took 15 ms on
/// a local socket (`OPERATIONS.md`); without them each step reads a
/// partition whole (seconds; the 64 round trips took 0.6 s there).
pub(super) async fn oldest(client: &Client, width: Width) -> Result<Option<i64>, StoreError> {
    // Invariant of each row (lo, hi): no row starts below `lo`, one starts
    // at or below `hi`; the anchor holds only if the width has any row.
    // `mid` = floor((lo + hi) / 2) in bigint without overflow (arithmetic
    // shifts; a numeric division rounded x.5 up above ~1.5e16 before the
    // floor, so `mid` could equal `hi` and the search never ended); `n`
    // bounds it at the 64 halvings a range of 2^64 needs. `OFFSET 0` keeps the
    // probe one subquery (inlined, it would run once per `CASE`). The
    // width is written into the text, not bound: a statement per width,
    // planned for it (partitions pruned, its statistics used; replanned
    // after an ANALYZE), where a parameter let the plan cache settle on a
    // generic plan reading the width through `results_changed` (111 ms
    // against 8 ms on 1.4 M rows).
    let w = width.ms();
    let stmt = client
        .prepare_cached(&format!(
            "WITH RECURSIVE b(lo, hi, n) AS (
                 SELECT (-9223372036854775808)::bigint, 9223372036854775807::bigint, 0
                 WHERE EXISTS (SELECT 1 FROM results WHERE width = {w})
               UNION ALL
                 SELECT CASE WHEN p.found THEN b.lo ELSE m.mid + 1 END,
                        CASE WHEN p.found THEN m.mid ELSE b.hi END,
                        b.n + 1
                 FROM b
                 CROSS JOIN LATERAL (
                     SELECT (b.lo >> 1) + (b.hi >> 1) + (b.lo & b.hi & 1) AS mid) m
                 CROSS JOIN LATERAL (
                     SELECT EXISTS (SELECT 1 FROM results WHERE width = {w} AND start <= m.mid)
                         AS found
                     OFFSET 0) p
                 WHERE b.lo < b.hi AND b.n < 64)
             SELECT lo FROM b WHERE lo = hi"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// Deletes at most `limit` rows at `width` starting before `before`, and
/// the parked entries of the rows it deletes, in one statement (what is
/// left after [`drop_expired`]).
pub(super) async fn delete_expired(
    client: &Client,
    width: Width,
    before: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // SKIP LOCKED: a row an ingest transaction is merging into right now is
    // left for the next batch instead of waiting for it. No `ORDER BY`:
    // every row before the cut goes, in any order, and without a sort the
    // scan of the BRIN index's block ranges stops at `limit` rows instead
    // of sorting all that are left on every batch.
    let stmt = client
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM results WHERE (series, width, start) IN (
                     SELECT series, width, start FROM results
                     WHERE width = $1 AND start < $2
                     LIMIT $3 FOR UPDATE SKIP LOCKED)
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
