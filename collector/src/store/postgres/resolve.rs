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
//!   and its backend's process id (`pg_backend_pid()`) in its first
//!   statement, at no extra round trip ([`super::senders::Xact`]).
//!   After such a failure [`settle`] asks `pg_xact_status` on another
//!   connection of the pool, which PostgreSQL documents for exactly this:
//!   `committed` → the transaction's report is the answer, as if the reply
//!   had come; `aborted` (or never started) → the error, as before;
//!   `in progress` → see below, then asked again after a pause doubling
//!   from [`FIRST_PAUSE`] to [`MAX_PAUSE`], for at most [`RESOLVE_FOR`];
//!   no answer by then, or no connection to ask on for [`UNREACHABLE_FOR`]
//!   (the database is down) → the error, as before (the retry answers the
//!   batches as duplicates). Each outcome is counted ([`CommitsUnknown`]:
//!   `tributary_collector_store_commit_unknown_total{outcome}`).
//! - **A `COMMIT` that never arrived.** `in progress` means the server is
//!   either executing the `COMMIT` (its backend `active`: wait) or still
//!   waiting for it (`idle in transaction`): the `COMMIT` was lost on the
//!   way and the connection died without the server noticing (half-open:
//!   a NAT or firewall dropped it, a host vanished). Such a transaction
//!   would hold its row locks — the group's sender rows — until TCP
//!   keepalive or `idle_in_transaction_session_timeout` ended it, so the
//!   retry would wait on them. So the backend is looked up in
//!   `pg_stat_activity` by its process id *and* the transaction's id
//!   (`backend_xid`: a reused process id cannot match) and, if it is
//!   `idle in transaction`, ended with `pg_terminate_backend` in the same
//!   statement (`pg_cancel_backend` cancels only a running statement and
//!   leaves an idle transaction open). The status is then asked again —
//!   `aborted`, unless the `COMMIT` arrived at that very moment, which the
//!   status then tells: nothing is assumed. Ending another backend needs
//!   its role (the store's connections share one, so they may), a
//!   superuser, or `pg_signal_backend` (not for a superuser's backend);
//!   another role does not even see its `state`. Refused either way, the
//!   transaction is polled as before (and may stay `unresolved`). Each
//!   attempt is counted ([`IdleEnded`]:
//!   `tributary_collector_store_commit_idle_total{result}`).
//! - **Nothing else to mend.** The PostgreSQL store keeps no cache that a
//!   commit updates (series ids are looked up in each transaction; the
//!   direct `COPY`'s back-off only times tries, whatever became of them),
//!   and the failed connection — with its prepared statements — is dropped
//!   by the pool, so the real outcome needs no other state set right.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use tokio_postgres::error::SqlState;

use super::apply::Failed;
use super::senders::Xact;
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
/// How long `pg_terminate_backend` waits for the backend to exit.
const TERMINATE_WAIT: Duration = Duration::from_secs(5);

/// A transaction whose `COMMIT` reply was lost.
#[derive(Debug)]
pub(super) struct Unknown {
    /// Its id and backend.
    pub(super) xact: Xact,
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

impl Labelled for CommitOutcome {
    const KEY: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        CommitOutcome::Committed,
        CommitOutcome::Aborted,
        CommitOutcome::Unresolved,
    ];

    fn name(self) -> &'static str {
        self.name()
    }
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
}

/// What was done with a backend found waiting for a `COMMIT` that never
/// arrived (`idle in transaction` while its `COMMIT` reply was awaited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEnd {
    /// Ended with `pg_terminate_backend`: its transaction aborted.
    Terminated,
    /// Not allowed to see its state or to end it (another role): polled.
    Refused,
    /// Signalled, but it had not exited within [`TERMINATE_WAIT`]: polled.
    TimedOut,
}

impl Labelled for IdleEnd {
    const KEY: &'static str = "result";
    const ALL: &'static [Self] = &[IdleEnd::Terminated, IdleEnd::Refused, IdleEnd::TimedOut];

    fn name(self) -> &'static str {
        self.name()
    }
}

impl IdleEnd {
    /// The `result` label.
    pub fn name(self) -> &'static str {
        match self {
            IdleEnd::Terminated => "terminated",
            IdleEnd::Refused => "refused",
            IdleEnd::TimedOut => "timed_out",
        }
    }
}

/// A closed set of label values of one label key.
pub(super) trait Labelled: Copy + 'static {
    /// The label's key.
    const KEY: &'static str;
    /// Every value, each exported from the start (at 0).
    const ALL: &'static [Self];
    /// The label's value.
    fn name(self) -> &'static str;
}

/// A counter per value of `T`; shared by a store's clones.
#[derive(Debug, Clone)]
pub(super) struct Tally<T>(Family<Label, Counter>, PhantomData<T>);

impl<T: Labelled> Default for Tally<T> {
    fn default() -> Self {
        let family = Family::<Label, Counter>::default();
        for &v in T::ALL {
            family.get_or_create_owned(&label(T::KEY, v.name()));
        }
        Tally(family, PhantomData)
    }
}

impl<T: Labelled> Tally<T> {
    /// How many were counted with `value`.
    pub(super) fn get(&self, value: T) -> u64 {
        self.0.get_or_create(&label(T::KEY, value.name())).get()
    }

    fn count(&self, value: T) {
        self.0.get_or_create(&label(T::KEY, value.name())).inc();
    }
}

/// Commits whose reply was lost, by outcome.
pub(super) type CommitsUnknown = Tally<CommitOutcome>;

impl CommitsUnknown {
    /// Registers `tributary_collector_store_commit_unknown_total`.
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "tributary_collector_store_commit_unknown",
            "PostgreSQL commits whose reply was lost (the connection failed during COMMIT), by what the server answered about them afterwards: committed (counted as applied), aborted (applied again), unresolved (no answer: retried, its batches then answer as duplicates).",
            self.0.clone(),
        );
    }
}

/// Backends found waiting for a lost `COMMIT`, by what became of them.
pub(super) type IdleEnded = Tally<IdleEnd>;

impl IdleEnded {
    /// Registers `tributary_collector_store_commit_idle_total`.
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "tributary_collector_store_commit_idle",
            "PostgreSQL backends found idle in the transaction whose COMMIT reply was lost (the COMMIT never arrived; the server had not noticed the connection was gone), by result: terminated (its transaction aborted, applied again), refused (no privilege to see or end it: polled until it ends or unresolved), timed_out (signalled, not yet gone: polled).",
            self.0.clone(),
        );
    }
}

/// The answer of a transaction that ended with `result`: its report, or
/// when its `COMMIT` reply was lost, what the server says became of it.
pub(super) async fn settle(
    pool: &Pool,
    counts: &CommitsUnknown,
    idle: &IdleEnded,
    result: Result<Report, Failed>,
) -> Result<Report, StoreError> {
    let unknown = match result {
        Ok(report) => return Ok(report),
        Err(Failed::Pg(e)) => return Err(e.into()),
        Err(Failed::Store(e)) => return Err(e),
        Err(Failed::Unknown(u)) => u,
    };
    let Unknown {
        xact,
        error,
        report,
    } = *unknown;
    let xid = xact.xid;
    let outcome = outcome(pool, idle, xact).await;
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

/// What the server says of transaction `xact`, asked on a connection of
/// `pool` until it has ended, for at most [`RESOLVE_FOR`] — and for at
/// most [`UNREACHABLE_FOR`] while no connection answers; its backend ended
/// if it waits for the lost `COMMIT` ([`end_if_idle`]).
async fn outcome(pool: &Pool, idle: &IdleEnded, xact: Xact) -> CommitOutcome {
    let deadline = Instant::now() + RESOLVE_FOR;
    let mut pause = FIRST_PAUSE;
    // Since when no connection answered.
    let mut silent: Option<Instant> = None;
    // Whether its backend may still be found idle and ended (until it has
    // been, or that was refused).
    let mut may_end = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match within(left, status(pool, xact.xid)).await {
            Ok(Some(s)) if s == "committed" => return CommitOutcome::Committed,
            Ok(Some(s)) if s == "aborted" => return CommitOutcome::Aborted,
            Ok(Some(s)) if s == "in progress" => {
                silent = None;
                if may_end {
                    if let Some(end) = try_end(pool, idle, xact, left).await {
                        may_end = false;
                        if end == IdleEnd::Terminated {
                            // Asked again at once: it has exited.
                            continue;
                        }
                    }
                }
            }
            // Too old for the server to know (NULL): not this case, as
            // the question follows the commit at once.
            Ok(other) => {
                tracing::warn!(xid = xact.xid, status = ?other, "unexpected transaction status");
                return CommitOutcome::Unresolved;
            }
            Err(e) => {
                tracing::debug!(xid = xact.xid, error = %e, "transaction status not available");
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

/// `asked`, or an error if it has not answered within `left`.
async fn within<T>(
    left: Duration,
    asked: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(left, asked)
        .await
        .unwrap_or_else(|_| Err(StoreError::Backend("no answer in time".into())))
}

/// [`end_if_idle`] within `left`, what it did counted and logged; `None`
/// when the backend was not found idle (or not looked up: asked again
/// at the next poll).
async fn try_end(pool: &Pool, idle: &IdleEnded, xact: Xact, left: Duration) -> Option<IdleEnd> {
    let (xid, pid) = (xact.xid, xact.pid);
    let end = match within(left, end_if_idle(pool, xact)).await {
        Ok(end) => end?,
        Err(e) => {
            tracing::debug!(xid, error = %e, "backend not looked up");
            return None;
        }
    };
    idle.count(end);
    if end == IdleEnd::Terminated {
        tracing::warn!(
            xid,
            pid,
            "the COMMIT never reached the server, which still waited for it; its backend was ended"
        );
    } else {
        tracing::warn!(xid, pid, result = end.name(),
            "the COMMIT never reached the server, which still waits for it; its backend could not be ended, polled instead");
    }
    Some(end)
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

/// Ends the backend of `xact` if it is `idle in transaction` — waiting
/// for the `COMMIT` that never arrived — in one statement with the look-up
/// (by process id and transaction id, so a reused process id is never
/// hit). `None` when it is not (executing the `COMMIT`, or gone).
async fn end_if_idle(pool: &Pool, xact: Xact) -> Result<Option<IdleEnd>, StoreError> {
    let client = pool.get().await?;
    let wait_ms = i64::try_from(TERMINATE_WAIT.as_millis()).unwrap_or(i64::MAX);
    // `CASE` calls the (volatile) function only for an idle backend.
    let rows = client
        .query(
            "SELECT state IS NULL,
               CASE WHEN state = 'idle in transaction' THEN pg_terminate_backend(pid, $3) END
             FROM pg_stat_activity
             WHERE pid = $1 AND backend_xid = xid($2::bigint::text::xid8)",
            &[&xact.pid, &xact.xid, &wait_ms],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::debug!(pid = xact.pid, error = %StoreError::from(e), "not allowed to end the backend");
            return Ok(Some(IdleEnd::Refused));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    // Another role's backend: its state is hidden.
    if row.get::<_, bool>(0) {
        return Ok(Some(IdleEnd::Refused));
    }
    Ok(match row.get::<_, Option<bool>>(1) {
        None => None,
        Some(true) => Some(IdleEnd::Terminated),
        Some(false) => Some(IdleEnd::TimedOut),
    })
}
