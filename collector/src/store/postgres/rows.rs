//! Step 5 of [`super::apply`]: the result rows of one transaction, new
//! ones written once with their final state, existing ones locked, folded
//! and updated.
//!
//! # Design
//! - **Order.** The plan's rows are taken in one global order, width
//!   first — (width, series, start) — by every path below and by every
//!   instance, so concurrent transactions insert and lock rows in
//!   increasing order and cannot deadlock ([`order`]).
//! - **Direct first.** The rows finer than the finest roll-up (expected
//!   new) try the optimistic direct `COPY` into `results`
//!   ([`super::direct`]); on a conflict they join the rest below.
//! - **New rows by `COPY`.** The remaining rows (in order) go by binary
//!   `COPY` into the session's staging table `stage_results` (temporary,
//!   `ON COMMIT DELETE ROWS`), each summary encoded as it is sent, so the
//!   server parses while the client encodes; then one
//!   `INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING` moves them into
//!   `results` in that order. The keys returned are the rows this
//!   transaction created.
//! - **Existing rows** (and rows another instance inserted meanwhile, for
//!   which the insert waited) are locked with `SELECT … ORDER BY … FOR
//!   UPDATE` (the same order), the deltas folded into them
//!   ([`merge::fold`]) and written with one `UPDATE … FROM unnest`; no
//!   other instance can change a locked row until this transaction ends,
//!   so no update is lost.
//! - Every row written takes change position `first + i` (its index in
//!   that order; see [`super::feed`]).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tributary_core::Width;

use super::apply::Failed;
use super::direct::{self, Direct};
use crate::merge::{self, Delta, RowKey};
use crate::store::codec::{corrupt, decode_summary, encode_summary};
use crate::store::StoreError;

/// The global order rows are inserted and locked in: (width, series,
/// start). The plan comes sorted in it ([`crate::merge::plan_in`]).
pub(super) fn order(&(s, w, t): &RowKey) -> (i64, i64, i64) {
    (w, s, t)
}

/// Writes the plan's `rows` (in [`order`]) with positions from `first` on,
/// trying the direct `COPY` ([`super::direct`]) for the rows finer than
/// every width of `rollups`.
pub(super) async fn write(
    tx: &Transaction<'_>,
    rows: Vec<Delta<'_>>,
    first: i64,
    rollups: &[Width],
    direct: &Direct,
) -> Result<(), Failed> {
    debug_assert!(rows.windows(2).all(|w| order(&w[0].key) < order(&w[1].key)));
    let finest = rollups.iter().map(|w| w.ms()).min().unwrap_or(i64::MAX);
    let fine = rows.partition_point(|d| d.key.1 < finest);
    let done = if direct::copy(tx, direct, &rows[..fine], first).await? {
        fine
    } else {
        0
    };
    let inserted = insert_new(tx, &rows[done..], first, done).await?;
    let mut stored = lock_rows(
        tx,
        rows[done..]
            .iter()
            .map(|d| d.key)
            .filter(|k| !inserted.contains(k)),
    )
    .await?;
    let mut update = Update::default();
    for (i, delta) in rows.into_iter().enumerate().skip(done) {
        if inserted.contains(&delta.key) {
            continue;
        }
        let Some((rev, old)) = stored.remove(&delta.key) else {
            return Err(StoreError::Backend(format!(
                "result row of {} at {} vanished during the transaction",
                delta.series, delta.window
            ))
            .into());
        };
        let rev = u32::try_from(rev).map_err(|e| corrupt("revision", e))?;
        let key = delta.key;
        let (revision, summary) = merge::fold(Some((rev, decode_summary(&old)?)), delta)?;
        let change = position(first, i)?;
        update.push(key, i64::from(revision), encode_summary(&summary)?, change);
    }
    if update.keys[0].is_empty() {
        return Ok(());
    }
    let write = tx
        .prepare_cached(
            "UPDATE results r SET revision = u.rev, summary = u.b, changed = u.c
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bigint[])
               AS u(s, w, t, rev, b, c)
             WHERE r.series = u.s AND r.width = u.w AND r.start = u.t",
        )
        .await?;
    let [s, w, t] = &update.keys;
    tx.execute(
        &write,
        &[s, w, t, &update.revisions, &update.bytes, &update.changes],
    )
    .await?;
    Ok(())
}

/// The change position of the `i`-th row of a transaction whose first is
/// `first`.
pub(super) fn position(first: i64, i: usize) -> Result<i64, StoreError> {
    i64::try_from(i)
        .ok()
        .and_then(|i| first.checked_add(i))
        .ok_or_else(|| StoreError::Backend(format!("change position {first} + {i} overflows")))
}

/// Inserts every row of `rows` that does not exist yet with its delta as
/// its state (revision 0), the `i`-th at position `first + from + i`;
/// answers the keys it inserted.
async fn insert_new(
    tx: &Transaction<'_>,
    rows: &[Delta<'_>],
    first: i64,
    from: usize,
) -> Result<HashSet<RowKey>, Failed> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    // The notice of a table that exists is not worth a log line.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TEMP TABLE IF NOT EXISTS stage_results
           (s BIGINT NOT NULL, w BIGINT NOT NULL, t BIGINT NOT NULL, b BYTEA NOT NULL, c BIGINT NOT NULL)
           ON COMMIT DELETE ROWS;
         RESET client_min_messages",
    )
    .await?;
    let copy = tx
        .prepare_cached("COPY stage_results (s, w, t, b, c) FROM STDIN (FORMAT binary)")
        .await?;
    let sink = tx.copy_in(&copy).await?;
    let types = [Type::INT8, Type::INT8, Type::INT8, Type::BYTEA, Type::INT8];
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let mut bytes = Vec::new();
    for (i, d) in rows.iter().enumerate() {
        let (s, w, t) = d.key;
        direct::encode_into(&d.summary, &mut bytes)?;
        let c = position(first, from + i)?;
        writer
            .as_mut()
            .write(&[&s, &w, &t, &bytes.as_slice(), &c])
            .await?;
    }
    writer.finish().await?;
    // No `ORDER BY` (sorting ~50,000 rows with their bytes spilled to disk
    // and cost a fifth of the insert): the staging table holds them in the
    // global order, and a scan of it hands them over in that order.
    let insert = tx
        .prepare_cached(
            "INSERT INTO results (series, width, start, revision, summary, changed)
             SELECT s, w, t, 0, b, c FROM stage_results
             ON CONFLICT (series, width, start) DO NOTHING RETURNING series, width, start",
        )
        .await?;
    Ok(tx
        .query(&insert, &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// Three parallel arrays of row keys, for `unnest`.
fn columns(keys: impl Iterator<Item = RowKey>) -> [Vec<i64>; 3] {
    let mut cols: [Vec<i64>; 3] = Default::default();
    for (s, w, t) in keys {
        cols[0].push(s);
        cols[1].push(w);
        cols[2].push(t);
    }
    cols
}

/// The rows to update, as parallel arrays for `unnest`.
#[derive(Default)]
struct Update {
    keys: [Vec<i64>; 3],
    revisions: Vec<i64>,
    bytes: Vec<Vec<u8>>,
    changes: Vec<i64>,
}

impl Update {
    fn push(&mut self, (s, w, t): RowKey, revision: i64, bytes: Vec<u8>, change: i64) {
        self.keys[0].push(s);
        self.keys[1].push(w);
        self.keys[2].push(t);
        self.revisions.push(revision);
        self.bytes.push(bytes);
        self.changes.push(change);
    }
}

/// Locks the existing rows `keys` (in the global order, [`order`]) and
/// reads their revision and summary bytes.
async fn lock_rows(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = RowKey>,
) -> Result<HashMap<RowKey, (i64, Vec<u8>)>, tokio_postgres::Error> {
    let [s, w, t] = columns(keys);
    let mut stored = HashMap::new();
    if s.is_empty() {
        return Ok(stored);
    }
    let lock = tx
        .prepare_cached(
            "SELECT r.series, r.width, r.start, r.revision, r.summary FROM results r
             JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(s, w, t)
               ON r.series = u.s AND r.width = u.w AND r.start = u.t
             ORDER BY r.width, r.series, r.start FOR UPDATE OF r",
        )
        .await?;
    for row in tx.query(&lock, &[&s, &w, &t]).await? {
        stored.insert(
            (row.get(0), row.get(1), row.get(2)),
            (row.get(3), row.get(4)),
        );
    }
    Ok(stored)
}
