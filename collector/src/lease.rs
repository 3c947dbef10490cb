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
//! A renewal the store cannot answer (a lost connection, a busy database)
//! does not give the lease up: it stays this instance's in the store until
//! it expires, so this instance does no work meanwhile (nothing confirms
//! the lease) but asks again every [`HeldLease::retry_every`]
//! ([`HeldLease::renew_in`] says when) until it is renewed or its time to
//! live has passed since the last renewal. Renewed in time, it was never
//! anyone else's (`taken: false`: a sink keeps its position); past that,
//! this instance counts it as lost, and a later check takes it as new. A
//! holder that forgot the lease at the first error would leave it to lapse
//! wherever its next check is further away than the lease's expiry — the
//! retention task, whose runs may be hours apart, would hand it to a
//! standby at every transient error.
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

/// The longest wait before asking again after a failed renewal.
const MAX_RETRY: Duration = Duration::from_secs(5);

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
    /// After a renewal the store could not answer, while the lease may
    /// still be ours: when to ask again (by `clock`).
    retry_at: Option<Instant>,
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
            retry_at: None,
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

    /// How soon a renewal the store could not answer is asked again: a
    /// twelfth of the lease (a quarter of the time between renewals, so a
    /// few tries fit before it expires), at most 5 s.
    pub(crate) fn retry_every(&self) -> Duration {
        (self.ttl / 12).min(MAX_RETRY)
    }

    /// While the lease is ours, or may still be (a renewal failed less
    /// than its time to live after the last one): how long until it is due
    /// for renewal, or for another try (zero when due); `None` when it is
    /// not ours.
    pub(crate) fn renew_in(&self) -> Option<Duration> {
        let now = self.clock.now();
        let renewed = self.renewed?;
        if now.saturating_duration_since(renewed) >= self.ttl {
            return None;
        }
        let due = self
            .retry_at
            .unwrap_or_else(|| renewed.checked_add(self.renew_every()).unwrap_or(now));
        Some(due.saturating_duration_since(now))
    }

    /// Whether this instance may do the job: takes the lease, or renews it
    /// once a third of it has passed since the last renewal (at once after
    /// a failed renewal). A store error is logged and returned (the caller
    /// counts it and does not do the job); the lease is asked for again
    /// when [`HeldLease::renew_in`] says, while it may still be ours.
    pub(crate) async fn role<S: Leases>(&mut self, store: &S) -> Result<Role, StoreError> {
        if self.retry_at.is_none() && self.renew_in().is_some_and(|left| !left.is_zero()) {
            return Ok(Role::Leader { taken: false });
        }
        let asked = self.clock.now();
        let res = store.lease(&self.name, &self.holder, self.ttl).await;
        // Ours all along only if the answer came before the last renewal's
        // expiry: until then nobody else could have held it.
        let answered = self.clock.now();
        let was_ours = self
            .renewed
            .is_some_and(|t| answered.saturating_duration_since(t) < self.ttl);
        match res {
            Ok(Lease::Ours) => {
                self.renewed = Some(asked);
                if self.retry_at.take().is_some() && was_ours {
                    tracing::info!(lease = %self.name, holder = %self.holder, "renewed the lease after a failed renewal; it never lapsed");
                }
                self.leader.set(1);
                if !was_ours {
                    self.standby = None;
                    tracing::info!(lease = %self.name, holder = %self.holder, "this instance holds the lease; it does the job");
                }
                Ok(Role::Leader { taken: !was_ours })
            }
            Ok(Lease::Theirs(other)) => {
                self.renewed = None;
                self.retry_at = None;
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
                self.standby = None;
                self.leader.set(0);
                if was_ours {
                    // Still ours in the store until it expires: ask again
                    // soon rather than at the caller's next check.
                    self.retry_at =
                        Some(answered.checked_add(self.retry_every()).unwrap_or(answered));
                    tracing::warn!(lease = %self.name, error = %e, "cannot renew the lease; not doing the job until it is renewed, asking again before it expires");
                } else {
                    self.renewed = None;
                    self.retry_at = None;
                    tracing::warn!(lease = %self.name, error = %e, "cannot take the lease; not doing the job until it can");
                }
                Err(e)
            }
        }
    }

    /// Gives the lease up (when stopping), so another instance takes over
    /// at once rather than when it expires. Nothing to do when it is not
    /// ours; a store error is logged and returned (the caller counts it).
    pub(crate) async fn give_up<S: Leases>(&mut self, store: &S) -> Result<(), StoreError> {
        self.retry_at = None;
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
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::store::Answer;

    /// A store that answers each `lease` call with the next scripted
    /// answer and counts the calls; releases succeed.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Answer<Lease>>>,
        asked: AtomicU64,
    }

    impl Scripted {
        fn then(&self, answer: Answer<Lease>) {
            self.answers.lock().unwrap().push_back(answer);
        }

        fn asked(&self) -> u64 {
            self.asked.load(Ordering::Relaxed)
        }
    }

    impl Leases for Scripted {
        async fn lease(&self, _: &str, _: &str, _: Duration) -> Answer<Lease> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted answer")
        }

        async fn release(&self, _: &str, _: &str) -> Answer<()> {
            Ok(())
        }
    }

    fn down() -> Answer<Lease> {
        Err(StoreError::Backend("connection lost".into()))
    }

    const TTL: Duration = Duration::from_secs(120);

    /// A lease of [`TTL`] timed by `clock`, and its leader gauge.
    fn held(clock: &LeaseClock) -> (HeldLease, Gauge) {
        let gauge = Gauge::default();
        let lease = HeldLease::new("job", "me", TTL, gauge.clone()).timed_by(clock.clone());
        (lease, gauge)
    }

    /// `lease` taken, then its renewal due (by `clock`) and failed: it may
    /// still be ours.
    async fn taken_then_not_renewed(lease: &mut HeldLease, clock: &LeaseClock, store: &Scripted) {
        store.then(Ok(Lease::Ours));
        assert_eq!(
            lease.role(store).await.unwrap(),
            Role::Leader { taken: true }
        );
        clock.advance(TTL / 3);
        store.then(down());
        assert!(lease.role(store).await.is_err());
        assert!(lease.renew_in().is_some());
    }

    #[tokio::test]
    async fn a_failed_renewal_is_tried_again_before_the_lease_expires_and_keeps_it() {
        let (clock, store) = (LeaseClock::default(), Scripted::default());
        let (mut lease, gauge) = held(&clock);
        assert_eq!(lease.retry_every(), Duration::from_secs(5), "at most 5 s");
        store.then(Ok(Lease::Ours));
        assert_eq!(
            lease.role(&store).await.unwrap(),
            Role::Leader { taken: true }
        );
        assert_eq!(gauge.get(), 1);
        // Inside a third of the lease: from memory.
        assert_eq!(
            lease.role(&store).await.unwrap(),
            Role::Leader { taken: false }
        );
        assert_eq!(store.asked(), 1);

        // Due; the store cannot answer: no job, but the lease is asked for
        // again within `retry_every`, not at the caller's next check.
        clock.advance(TTL / 3);
        assert_eq!(lease.renew_in(), Some(Duration::ZERO));
        store.then(down());
        assert!(lease.role(&store).await.is_err());
        assert_eq!(gauge.get(), 0);
        let retry = lease.renew_in().expect("still possibly ours");
        assert!(
            retry > Duration::ZERO && retry <= lease.retry_every(),
            "{retry:?}"
        );
        // While the retry waits, asking is asking the store (nothing in
        // memory confirms the lease).
        store.then(down());
        assert!(lease.role(&store).await.is_err());
        assert_eq!(store.asked(), 3);

        // Renewed before it expired: never anyone else's.
        clock.advance(TTL / 2);
        assert_eq!(lease.renew_in(), Some(Duration::ZERO));
        store.then(Ok(Lease::Ours));
        assert_eq!(
            lease.role(&store).await.unwrap(),
            Role::Leader { taken: false }
        );
        assert_eq!(gauge.get(), 1);
        // And timed from this renewal again.
        let next = lease.renew_in().unwrap();
        assert!(next > TTL / 3 - Duration::from_secs(1), "{next:?}");
        assert_eq!(
            lease.role(&store).await.unwrap(),
            Role::Leader { taken: false }
        );
        assert_eq!(store.asked(), 4);
    }

    #[tokio::test]
    async fn a_lease_not_renewed_within_its_time_to_live_is_taken_as_new() {
        let (clock, store) = (LeaseClock::default(), Scripted::default());
        let (mut lease, gauge) = held(&clock);
        taken_then_not_renewed(&mut lease, &clock, &store).await;

        // Past the lease's expiry: no longer ours, nothing to retry; the
        // next check takes it as new (another instance may have worked).
        clock.advance(TTL);
        assert_eq!(lease.renew_in(), None);
        store.then(Ok(Lease::Ours));
        assert_eq!(
            lease.role(&store).await.unwrap(),
            Role::Leader { taken: true }
        );
        assert_eq!(gauge.get(), 1);

        // The same when the caller simply checked too late, no error.
        clock.advance(TTL + Duration::from_secs(1));
        assert_eq!(lease.renew_in(), None);
        store.then(Ok(Lease::Ours));
        assert_eq!(
            lease.role(&store).await.unwrap(),
            Role::Leader { taken: true }
        );

        // A failure after the expiry forgets it at once.
        clock.advance(TTL);
        store.then(down());
        assert!(lease.role(&store).await.is_err());
        assert_eq!(lease.renew_in(), None);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_failed_renewal_answered_by_another_holder_stands_by() {
        let (clock, store) = (LeaseClock::default(), Scripted::default());
        let (mut lease, gauge) = held(&clock);
        taken_then_not_renewed(&mut lease, &clock, &store).await;
        store.then(Ok(Lease::Theirs("other".into())));
        assert_eq!(lease.role(&store).await.unwrap(), Role::Standby);
        assert_eq!(lease.renew_in(), None);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_lease_never_taken_is_not_retried() {
        let (clock, store) = (LeaseClock::default(), Scripted::default());
        let (mut lease, gauge) = held(&clock);
        store.then(down());
        assert!(lease.role(&store).await.is_err());
        assert_eq!(lease.renew_in(), None);
        assert_eq!(gauge.get(), 0);
    }

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
