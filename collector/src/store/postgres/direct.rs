//! Optimistic direct `COPY` of the rows a transaction expects to be new
//! (step 5 of [`super::apply`], before [`super::rows`]' general path).
//!
//! # Design
//! - **What goes direct.** The plan's rows finer than the finest roll-up
//!   width (the agents' own windows): at fan-in 1 every one of them is new,
//!   so the general path's staging table, speculative insertion and
//!   `RETURNING` of every key are pure cost. They go by binary `COPY`
//!   straight into `results` inside a `SAVEPOINT`.
//! - **Fallback.** A unique violation (the row existed, or another instance
//!   inserted it — the `COPY` waits for that instance's commit, as the
//!   general path's insert would) rolls back to the savepoint, which undoes
//!   every row of the `COPY`, and the same rows take the general path
//!   (insert what is missing, lock, fold and update the rest). Nothing is
//!   written twice and nothing is lost: either all of the `COPY`'s rows
//!   are in the transaction, or none.
//! - **Adaptive.** After a conflict the store skips the direct try for the
//!   next 1, 2, 4, … up to [`MAX_SKIP`] transactions (doubling while the
//!   tries keep failing, back to every transaction after one succeeds), so
//!   at fan-in 5 or 20, where an agent window's row usually exists, a
//!   transaction pays the failed `COPY` at most once in [`MAX_SKIP`] + 1.
//! - **Lock order.** Every transaction inserts and locks its rows in one
//!   global order, width first — (width, series, start) — whichever path
//!   each row takes: the direct rows are the finest widths, a prefix of
//!   that order, so the direct `COPY` then the general path's insert still
//!   take row locks in increasing order, and concurrent instances cannot
//!   deadlock (the argument of [`super::apply`] holds pass by pass).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use deadpool_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use tributary_core::Summary;

use super::apply::Failed;
use super::rows::position;
use crate::merge::Delta;
use crate::store::codec::corrupt;
use crate::store::StoreError;

/// The most transactions skipped after a conflict before trying again.
pub(super) const MAX_SKIP: u32 = 64;

/// When to try the direct `COPY`; shared by a store's clones (one
/// instance) and its lanes.
#[derive(Debug, Default)]
pub(super) struct Direct {
    /// Transactions still to skip.
    skip: AtomicU32,
    /// The skip set after the last conflict (0 after a success).
    backoff: AtomicU32,
    /// Direct tries that ran into an existing row and fell back.
    conflicts: AtomicU64,
}

impl Direct {
    /// Whether this transaction tries the direct `COPY` (counts one skip
    /// down otherwise).
    fn now(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1))
            .is_err()
    }

    fn succeeded(&self) {
        self.backoff.store(0, Ordering::Relaxed);
    }

    fn conflicted(&self) {
        let last = self.backoff.load(Ordering::Relaxed);
        let next = last.saturating_mul(2).clamp(1, MAX_SKIP);
        self.backoff.store(next, Ordering::Relaxed);
        self.skip.store(next, Ordering::Relaxed);
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Direct tries that fell back to the general path since the store
    /// opened.
    pub(super) fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

/// Tries to insert every row of `rows` (the `i`-th at position
/// `first + i`) with its delta as its state (revision 0) by one `COPY`
/// into `results`; answers whether it did. On `false` nothing of it was
/// written and the transaction goes on as before the try.
pub(super) async fn copy(
    tx: &Transaction<'_>,
    direct: &Direct,
    rows: &[Delta<'_>],
    first: i64,
) -> Result<bool, Failed> {
    if rows.is_empty() || !direct.now() {
        return Ok(false);
    }
    tx.batch_execute("SAVEPOINT direct").await?;
    match copy_rows(tx, rows, first).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT direct").await?;
            direct.succeeded();
            Ok(true)
        }
        Err(Failed::Pg(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT direct").await?;
            direct.conflicted();
            tracing::debug!(rows = rows.len(), "direct COPY ran into an existing row");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The `COPY` itself; a server error (the first unique violation) comes
/// back from `finish`, after the rest of the data was sent and discarded.
async fn copy_rows(tx: &Transaction<'_>, rows: &[Delta<'_>], first: i64) -> Result<(), Failed> {
    let copy = tx
        .prepare_cached(
            "COPY results (series, width, start, revision, summary, changed)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let sink = tx.copy_in(&copy).await?;
    let types = [
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::BYTEA,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let revision = i64::from(crate::merge::FIRST_REVISION);
    let mut bytes = Vec::new();
    for (i, d) in rows.iter().enumerate() {
        let (s, w, t) = d.key;
        encode_into(&d.summary, &mut bytes)?;
        let c = position(first, i)?;
        writer
            .as_mut()
            .write(&[&s, &w, &t, &revision, &bytes.as_slice(), &c])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// `summary` as [`crate::store::codec::encode_summary`] stores it
/// (postcard bytes), written into `buf` in place of what it held: one
/// buffer serves every row of a `COPY`, where a fresh vector per row cost
/// four allocations as it grew (a fifth of the writer's CPU at fan-in 1 was
/// encoding, perf).
pub(super) fn encode_into(summary: &Summary, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    buf.clear();
    *buf = postcard::to_extend(summary, std::mem::take(buf)).map_err(|e| corrupt("summary", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::encode_summary;

    #[test]
    fn encoding_into_a_used_buffer_gives_the_stored_bytes() {
        let q = tributary_core::Quantum::new(-3).unwrap();
        let mut big = Summary::new(q);
        for v in [-7_i64, 0, 3, 1_000_000, 42, i64::from(i32::MAX)] {
            big.insert(1_700_000_000_000 + v, v).unwrap();
        }
        let mut small = Summary::new(q);
        small.insert(1_700_000_000_000, 5).unwrap();
        let empty = Summary::new(q);
        let mut buf = vec![0xAA; 300];
        for s in [&big, &small, &empty, &big] {
            encode_into(s, &mut buf).unwrap();
            assert_eq!(buf, encode_summary(s).unwrap());
        }
    }

    /// Which of the next `n` transactions try the direct `COPY`.
    fn tries(d: &Direct, n: usize) -> Vec<bool> {
        (0..n).map(|_| d.now()).collect()
    }

    #[test]
    fn conflicts_back_off_doubling_and_a_success_resets() {
        let d = Direct::default();
        assert_eq!(tries(&d, 3), [true; 3], "a new store tries every time");
        d.conflicted();
        assert_eq!(tries(&d, 2), [false, true], "one skipped after a conflict");
        d.conflicted();
        assert_eq!(tries(&d, 3), [false, false, true], "then two");
        for _ in 0..10 {
            d.conflicted();
        }
        let after: Vec<bool> = tries(&d, MAX_SKIP as usize + 1);
        assert!(
            after[..MAX_SKIP as usize].iter().all(|t| !t),
            "at most MAX_SKIP skipped"
        );
        assert!(after[MAX_SKIP as usize]);
        d.succeeded();
        d.conflicted();
        assert_eq!(
            tries(&d, 2),
            [false, true],
            "a success starts the doubling over"
        );
        assert_eq!(d.conflicts(), 13);
    }
}
