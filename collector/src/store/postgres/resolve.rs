//! A transaction whose `COMMIT` was sent but whose reply never came: its
//! outcome looked up on another connection instead of guessed.
//!
//! # Design
//! - **When.** The connection fails while `COMMIT` is under way (closed,
//!   an I/O error: anything but an error reply of the server). The server
//!   may have committed or not; answering an error either way would be
//!   wrong half the time — ingest retries, the retry finds the batches
//!   applied and counts them as duplicates, and the group's batches,
//!   partials, readings and new incarnations are never counted.
//! - **How.** Every apply transaction takes its id (`pg_current_xact_id()`)
//!   in its first statement, at no extra round trip ([`super::senders`]).
//!   After such a failure [`settle`] asks `pg_xact_status` on another
//!   connection of the pool, which PostgreSQL documents for exactly this:
//!   `committed` → the transaction's report is the answer, as if the reply
//!   had come; `aborted` (or never started) → the error, as before;
//!   `in progress` (the server has not yet noticed the connection is gone)
//!   → asked again after a pause doubling from [`FIRST_PAUSE`] to
//!   [`MAX_PAUSE`], for at most [`RESOLVE_FOR`]; no answer by then, or no
//!   connection to ask on for [`UNREACHABLE_FOR`] (the database is down)
//!   → the error, as before
//!   (the retry answers the batches as duplicates). Each outcome is
//!   counted ([`CommitsUnknown`]:
//!   `tributary_collector_store_commit_unknown_total{outcome}`).
//! - **Nothing else to mend.** The PostgreSQL store keeps no cache that a
//!   commit updates (series ids are looked up in each transaction; the
//!   direct `COPY`'s back-off only times tries, whatever became of them),
//!   and the failed connection — with its prepared statements — is dropped
//!   by the pool, so the real outcome needs no other state set right.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use super::apply::Failed;
use crate::metrics::{label, Label};
use crate::store::{Report, StoreError};

/// The first pause before asking again about a transaction in progress.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two questions.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long to keep asking before leaving the outcome unresolved.
const RESOLVE_FOR: Duration = Duration::from_secs(30);
/// How long to keep trying while no connection of the pool answers (the
/// database down or unreachable: a restart that lost the reply may be
/// over in that time; ingest retries after it anyway).
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// A transaction whose `COMMIT` reply was lost.
#[derive(Debug)]
pub(super) struct Unknown {
    /// Its id (`pg_current_xact_id()`).
    pub(super) xid: i64,
    /// How the `COMMIT` failed.
    pub(super) error: tokio_postgres::Error,
    /// What it applied, if it committed.
    pub(super) report: Report,
}

/// What became of a transaction whose `COMMIT` reply was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// It committed: its work counts as applied.
    Committed,
    /// It aborted (or the server never began it): applied again later.
    Aborted,
    /// Not known: no connection to ask on, or still in progress after the
    /// time allowed. Answered as an error, as before.
    Unresolved,
}

impl CommitOutcome {
    /// The `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::Aborted => "aborted",
            CommitOutcome::Unresolved => "unresolved",
        }
    }

    const ALL: [CommitOutcome; 3] = [
        CommitOutcome::Committed,
        CommitOutcome::Aborted,
        CommitOutcome::Unresolved,
    ];
}

/// Commits whose reply was lost, by outcome; shared by a store's clones.
#[derive(Debug, Clone)]
pub(super) struct CommitsUnknown(Family<Label, Counter>);

impl Default for CommitsUnknown {
    fn default() -> Self {
        let family = Family::<Label, Counter>::default();
        for o in CommitOutcome::ALL {
            family.get_or_create_owned(&label("outcome", o.name()));
        }
        CommitsUnknown(family)
    }
}

impl CommitsUnknown {
    /// How many ended with `outcome`.
    pub(super) fn get(&self, outcome: CommitOutcome) -> u64 {
        self.0
            .get_or_create(&label("outcome", outcome.name()))
            .get()
    }

    fn count(&self, outcome: CommitOutcome) {
        self.0
            .get_or_create(&label("outcome", outcome.name()))
            .inc();
    }

    /// Registers `tributary_collector_store_commit_unknown_total`.
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "tributary_collector_store_commit_unknown",
            "PostgreSQL commits whose reply was lost (the connection failed during COMMIT), by what the server answered about them afterwards: committed (counted as applied), aborted (applied again), unresolved (no answer: retried, its batches then answer as duplicates).",
            self.0.clone(),
        );
    }
}

/// The answer of a transaction that ended with `result`: its report, or
/// when its `COMMIT` reply was lost, what the server says became of it.
pub(super) async fn settle(
    pool: &Pool,
    counts: &CommitsUnknown,
    result: Result<Report, Failed>,
) -> Result<Report, StoreError> {
    let unknown = match result {
        Ok(report) => return Ok(report),
        Err(Failed::Pg(e)) => return Err(e.into()),
        Err(Failed::Store(e)) => return Err(e),
        Err(Failed::Unknown(u)) => u,
    };
    let Unknown { xid, error, report } = *unknown;
    let outcome = outcome(pool, xid).await;
    counts.count(outcome);
    match outcome {
        CommitOutcome::Committed => {
            tracing::warn!(xid, %error, "the reply to COMMIT was lost; the server committed");
            Ok(report)
        }
        CommitOutcome::Aborted => {
            tracing::warn!(xid, %error, "the reply to COMMIT was lost; the server aborted");
            Err(error.into())
        }
        CommitOutcome::Unresolved => {
            tracing::error!(xid, %error,
                "the reply to COMMIT was lost and its outcome could not be learnt; retried (its batches may then count as duplicates)");
            Err(error.into())
        }
    }
}

/// What the server says of transaction `xid`, asked on a connection of
/// `pool` until it has ended, for at most [`RESOLVE_FOR`] — and for at
/// most [`UNREACHABLE_FOR`] while no connection answers.
async fn outcome(pool: &Pool, xid: i64) -> CommitOutcome {
    let deadline = Instant::now() + RESOLVE_FOR;
    let mut pause = FIRST_PAUSE;
    // Since when no connection answered.
    let mut silent: Option<Instant> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = tokio::time::timeout(left, status(pool, xid)).await;
        match asked.unwrap_or_else(|_| Err(StoreError::Backend("no answer in time".into()))) {
            Ok(Some(s)) if s == "committed" => return CommitOutcome::Committed,
            Ok(Some(s)) if s == "aborted" => return CommitOutcome::Aborted,
            Ok(Some(s)) if s == "in progress" => silent = None,
            // Too old for the server to know (NULL): not this case, as
            // the question follows the commit at once.
            Ok(other) => {
                tracing::warn!(xid, status = ?other, "unexpected transaction status");
                return CommitOutcome::Unresolved;
            }
            Err(e) => {
                tracing::debug!(xid, error = %e, "transaction status not available");
                let since = *silent.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNREACHABLE_FOR {
                    return CommitOutcome::Unresolved;
                }
            }
        }
        if Instant::now() + pause > deadline {
            return CommitOutcome::Unresolved;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// `pg_xact_status(xid)` on a connection of `pool` (not the failed one:
/// the caller has let it go, and the pool drops a closed connection).
async fn status(pool: &Pool, xid: i64) -> Result<Option<String>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT pg_xact_status($1::bigint::text::xid8)", &[&xid])
        .await?;
    Ok(row.get(0))
}
