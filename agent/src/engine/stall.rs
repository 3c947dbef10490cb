//! A failing store — a full disk, an I/O error, a corrupt database: what the
//! engine holds until a commit succeeds again, and when it tries.
//!
//! # Design
//! A store failure never stops the agent (DESIGN §4). A process that exits
//! on a full disk exits again as soon as it is restarted (a crash loop under
//! systemd), and lets go of what the devices held for it. Instead the
//! engine goes on taking input and applying it in memory but acknowledges
//! none of it: the devices' resend rings and the local broker's
//! unacknowledged messages keep the data, and the sources' flow control
//! (unacked frames, the broker's in-flight window) stops more from coming.
//! It retries, backing off from [`RETRY_MIN`] to [`RETRY_MAX`]: first the
//! commit that failed, exactly as it was (its changes left the windower
//! when it was assembled, and a failed transaction wrote nothing), then a
//! commit of everything since; input is acknowledged only when both
//! succeeded. Confirmed batches whose deletion failed are deleted at the
//! next try (until then they may be resent, which the collector
//! de-duplicates). Until a commit succeeds the reason is shown on `/health`,
//! `/health/ready` and `/metrics` (`store_ok`, `store_failing{reason}`,
//! `store_errors_total{reason}`, `inputs_unacknowledged`).

use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::store::{Commit, StoreError};

/// The first retry comes this long after a failure…
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);
/// …and the delay doubles up to this.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the engine holds while the store fails, and when it tries again.
#[derive(Debug)]
pub(crate) struct Stall {
    /// The group commit that failed, to be retried as it is.
    failed: Option<Box<Commit>>,
    /// Confirmed batch sequences whose deletion failed.
    confirms: Vec<u64>,
    /// Since when the store fails (none: it works).
    since: Option<Instant>,
    next_try: Instant,
    backoff: Duration,
}

impl Default for Stall {
    fn default() -> Self {
        Stall {
            failed: None,
            confirms: Vec::new(),
            since: None,
            next_try: Instant::now(),
            backoff: RETRY_MIN,
        }
    }
}

impl Stall {
    /// Whether the store fails.
    pub(crate) fn is_failing(&self) -> bool {
        self.since.is_some()
    }

    /// How long until the next try (none while the store works).
    pub(crate) fn retry_in(&self) -> Option<Duration> {
        self.since
            .map(|_| self.next_try.saturating_duration_since(Instant::now()))
    }

    /// The commit to retry first, if one failed.
    pub(crate) fn take_failed(&mut self) -> Option<Box<Commit>> {
        self.failed.take()
    }

    /// Holds a commit that failed, to retry it as it is.
    pub(crate) fn hold(&mut self, c: Box<Commit>) {
        self.failed = Some(c);
    }

    /// The confirmed sequences whose deletion is still due.
    pub(crate) fn take_confirms(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.confirms)
    }

    /// Holds confirmed sequences whose deletion failed.
    pub(crate) fn hold_confirms(&mut self, seqs: Vec<u64>) {
        self.confirms.extend(seqs);
    }

    /// A store operation failed with `e`: says so and sets the next try.
    pub(crate) fn failed(&mut self, e: &StoreError, m: &Metrics) {
        let now = Instant::now();
        if self.since.is_none() {
            self.since = Some(now);
            self.backoff = RETRY_MIN;
            tracing::error!(
                error = %e,
                reason = e.fault(),
                "store failing: input is held unacknowledged (the devices and the local broker keep it) and committed when the store works again"
            );
        } else {
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
            tracing::debug!(error = %e, "store still failing");
        }
        self.next_try = now + self.backoff;
        m.store_failed(e.fault(), e.to_string());
    }

    /// A commit succeeded: the store works (again).
    pub(crate) fn recovered(&mut self, m: &Metrics) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                "store works again: the held input is committed and acknowledged"
            );
        }
        m.store_recovered();
    }
}
