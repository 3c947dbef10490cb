//! Pushing a sink's final rows: requests of at most `batch_size` points,
//! each retried until it is answered for good (or the sink stops or loses
//! its lease), a refused request split in halves until the refused point is
//! alone and skipped; after each answered request the pushed rows are
//! un-parked and, for rows of the feed, the cursor moves past them.

use std::time::{Duration, Instant};

use super::http::{backoff, Attempt};
use super::runner::{gauge, Flow, Position, Runner};
use crate::lease::Role;
use crate::store::{Changed, Feed, Leases, Query};
use tributary_runtime::now_ms;

/// How pushing one chunk ended.
enum Outcome {
    Delivered,
    Rejected { status: u16, body: String },
    Stopped,
    Lost,
}

impl<S: Feed + Leases + Query + Clone + 'static> Runner<S> {
    /// Waits `d` (a retry's backoff, possibly longer than the lease) while
    /// keeping the lease; how it ended early, if it did.
    async fn pause_leading(&mut self, d: Duration) -> Option<Outcome> {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.pause(left.min(self.lease.renew_every())).await {
                return Some(Outcome::Stopped);
            }
            if self.role().await != (Role::Leader { taken: false }) {
                return Some(Outcome::Lost);
            }
        }
    }

    /// Pushes `rows` (final, in change order) in requests of at most
    /// `batch_size`; after each answered one, un-parks its rows and, for
    /// rows of the feed (`from_feed`), advances the cursor. A refused
    /// request is split in halves until the refused point is alone; that
    /// point is logged, counted and skipped.
    pub(super) async fn push(
        &mut self,
        pos: &mut Position,
        rows: Vec<Changed>,
        from_feed: bool,
    ) -> Flow {
        let mut rest: &[Changed] = &rows;
        let mut take = rest.len();
        let mut store_failed = false;
        while !rest.is_empty() {
            let n = take.clamp(1, rest.len());
            let chunk = &rest[..n];
            match self.deliver(chunk).await {
                Outcome::Stopped => return Flow::Stop,
                Outcome::Lost => return Flow::Lost,
                Outcome::Delivered => {
                    let c = &self.counters;
                    c.pushed.inc_by(n as u64);
                    c.batches.inc();
                    c.last_success.set(now_ms() as f64 / 1000.0);
                }
                Outcome::Rejected { status, body } if n > 1 => {
                    tracing::debug!(sink = %self.cfg.name, status, points = n, body, "batch refused; splitting it to find the refused point");
                    take = n / 2;
                    continue;
                }
                Outcome::Rejected { status, body } => {
                    let row = &chunk[0];
                    tracing::error!(
                        sink = %self.cfg.name,
                        status,
                        series = %row.series,
                        start = row.stored.window.start(),
                        revision = row.stored.revision,
                        body,
                        "point refused by the sink; skipped"
                    );
                    self.counters.rejected.inc();
                }
            }
            let mut stored = self.unpark(pos, chunk).await;
            if from_feed {
                pos.cursor = chunk[n - 1].change;
                let lag = &self.counters.lag;
                lag.set(lag.get().saturating_sub(gauge(n)).max(0));
                stored &= self.save_cursor(pos.cursor).await;
            }
            store_failed |= !stored;
            rest = &rest[n..];
            take = rest.len();
        }
        if store_failed {
            Flow::Wait
        } else {
            Flow::Go
        }
    }

    /// Sends one chunk until it is answered for good or the sink stops.
    async fn deliver(&mut self, chunk: &[Changed]) -> Outcome {
        let body = match self.endpoint.encode(chunk, &self.stats) {
            Ok(b) => b,
            // Refused here as a server would: the runner isolates the point.
            Err(body) => return Outcome::Rejected { status: 0, body },
        };
        let (min, max) = (
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        );
        let mut attempt: u32 = 0;
        loop {
            if self.role().await != (Role::Leader { taken: false }) {
                return Outcome::Lost;
            }
            let res = tokio::select! {
                a = self.endpoint.send(body.clone()) => a,
                _ = self.stop.wait_for(|s| *s) => return Outcome::Stopped,
            };
            if !matches!(res, Attempt::Retry { .. }) {
                self.counters.failing.set(0);
            }
            match res {
                Attempt::Delivered => return Outcome::Delivered,
                Attempt::Rejected { status, body } => {
                    return Outcome::Rejected {
                        status: status.as_u16(),
                        body,
                    }
                }
                Attempt::Retry { reason, after } => {
                    self.counters.failing.inc();
                    self.counters.retries.inc();
                    let delay =
                        after.map_or_else(|| backoff(attempt, min, max), |a| a.clamp(min, max));
                    tracing::warn!(
                        sink = %self.cfg.name,
                        attempt = attempt + 1,
                        retry_in_ms = delay.as_millis() as u64,
                        points = chunk.len(),
                        reason,
                        "push failed; retrying"
                    );
                    if let Some(end) = self.pause_leading(delay).await {
                        return end;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
