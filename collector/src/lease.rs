//! This instance's hold on a named lease in the store: which of the
//! collector instances sharing a database does a job that must run on one
//! of them at a time (a sink's pushes, `sink:<name>`; the retention runs,
//! `retention`).
//!
//! # Design
//! The store keeps one holder per lease until the lease expires, by the
//! store's clock ([`Leases::lease`]). [`HeldLease::role`] takes the lease,
//! or renews it once a third of its time to live has passed since it was
//! last asked for — so a holder that checks at least that often never lets
//! it lapse — and otherwise answers from memory, without a store call. The
//! renewal is counted from *before* the request, so this instance's view
//! never outlasts the store's expiry. The caller checks before each unit of
//! work that must not overlap another instance's, and keeps each unit well
//! inside the lease's time to live. [`HeldLease::give_up`] releases it when
//! the job stops, so another instance takes over at once rather than after
//! the expiry. Taking, losing and standing by are logged once per change of
//! holder, not at every check; the `leader` gauge shows the role (1/0).
//!
//! The renewals are timed by a [`LeaseClock`]: the monotonic clock, which a
//! test may move forward ([`LeaseClock::advance`]) to let a third of a
//! lease of a length a user can configure pass at once. A clock ahead only
//! renews sooner, so this instance's view still never outlasts the store's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;

use crate::store::{Lease, Leases, StoreError};

/// The clock a [`HeldLease`] times its renewals by: the monotonic clock plus
/// however far [`LeaseClock::advance`] moved it (never, outside tests).
/// Clones share the advance.
#[derive(Debug, Clone, Default)]
pub struct LeaseClock {
    /// How far ahead of the monotonic clock (ms).
    ahead_ms: Arc<AtomicU64>,
}

impl LeaseClock {
    /// Now by this clock.
    fn now(&self) -> Instant {
        let ahead = Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed));
        let now = Instant::now();
        now.checked_add(ahead).unwrap_or(now)
    }

    /// Moves this clock (and its clones) `by` forward: a lease timed by it
    /// sees that much more time pass since its last renewal.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .ahead_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_add(by))
            });
    }
}

/// Whether this instance may do the lease's job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// It holds the lease; `taken` when it did not at the previous check
    /// (so another instance may have worked meanwhile).
    Leader {
        /// Newly taken at this check.
        taken: bool,
    },
    /// Another instance holds it.
    Standby,
}

/// This instance's view of one lease.
#[derive(Debug)]
pub(crate) struct HeldLease {
    /// The lease's name in the store.
    name: String,
    /// This instance's name in the lease.
    holder: String,
    ttl: Duration,
    /// When the lease was last taken or renewed (asked), while it is ours,
    /// by `clock`.
    renewed: Option<Instant>,
    /// What renewals are timed by.
    clock: LeaseClock,
    /// The other holder last logged while standing by.
    standby: Option<String>,
    /// 1 while the lease is ours, else 0.
    leader: Gauge,
}

impl HeldLease {
    /// The lease `name`, held as `holder` for `ttl` at a time; `leader`
    /// shows whether it is held.
    pub(crate) fn new(name: &str, holder: &str, ttl: Duration, leader: Gauge) -> Self {
        leader.set(0);
        HeldLease {
            name: name.to_string(),
            holder: holder.to_string(),
            ttl,
            renewed: None,
            standby: None,
            leader,
            clock: LeaseClock::default(),
        }
    }

    /// The same lease, its renewals timed by `clock`.
    pub(crate) fn timed_by(self, clock: LeaseClock) -> Self {
        HeldLease { clock, ..self }
    }

    /// This instance's name in the lease.
    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    /// How often the lease is renewed while held.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// While the lease is ours: how long until it is due for renewal (zero
    /// when due); `None` when it is not ours.
    pub(crate) fn renew_in(&self) -> Option<Duration> {
        let now = self.clock.now();
        self.renewed.map(|t| {
            self.renew_every()
                .saturating_sub(now.saturating_duration_since(t))
        })
    }

    /// Whether this instance may do the job: takes the lease, or renews it
    /// once a third of it has passed since the last renewal. A store error
    /// is logged and returned (the caller counts it); the lease then counts
    /// as not ours until a later check takes it again.
    pub(crate) async fn role<S: Leases>(&mut self, store: &S) -> Result<Role, StoreError> {
        if self.renew_in().is_some_and(|left| !left.is_zero()) {
            return Ok(Role::Leader { taken: false });
        }
        let asked = self.clock.now();
        let res = store.lease(&self.name, &self.holder, self.ttl).await;
        let was_ours = self.renewed.is_some();
        match res {
            Ok(Lease::Ours) => {
                self.renewed = Some(asked);
                self.leader.set(1);
                if !was_ours {
                    self.standby = None;
                    tracing::info!(lease = %self.name, holder = %self.holder, "this instance holds the lease; it does the job");
                }
                Ok(Role::Leader { taken: !was_ours })
            }
            Ok(Lease::Theirs(other)) => {
                self.renewed = None;
                self.leader.set(0);
                if was_ours {
                    tracing::warn!(lease = %self.name, holder = %other, "the lease passed to another instance; standing by");
                } else if self.standby.as_ref() != Some(&other) {
                    tracing::info!(lease = %self.name, holder = %other, "another instance holds the lease and does the job; standing by");
                }
                self.standby = Some(other);
                Ok(Role::Standby)
            }
            Err(e) => {
                self.renewed = None;
                self.standby = None;
                self.leader.set(0);
                tracing::warn!(lease = %self.name, error = %e, "cannot take or renew the lease; not doing the job until it can");
                Err(e)
            }
        }
    }

    /// Gives the lease up (when stopping), so another instance takes over
    /// at once rather than when it expires. Nothing to do when it is not
    /// ours; a store error is logged and returned (the caller counts it).
    pub(crate) async fn give_up<S: Leases>(&mut self, store: &S) -> Result<(), StoreError> {
        if self.renewed.take().is_none() {
            return Ok(());
        }
        self.leader.set(0);
        store
            .release(&self.name, &self.holder)
            .await
            .inspect_err(|e| {
                tracing::warn!(lease = %self.name, error = %e, "cannot give up the lease; another instance takes over when it expires");
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_and_its_clones_run_that_far_ahead() {
        let clock = LeaseClock::default();
        let twin = clock.clone();
        let before = Instant::now();
        let hour = Duration::from_secs(3_600);
        clock.advance(hour);
        assert!(twin.now() >= before + hour);
        twin.advance(hour);
        assert!(clock.now() >= before + 2 * hour);
        assert!(LeaseClock::default().now() < before + hour);
        // An advance past what an Instant can hold leaves the clock usable.
        clock.advance(Duration::MAX);
        assert!(clock.now() >= before);
    }
}
