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

use std::time::{Duration, Instant};

use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;

use crate::store::{Lease, Leases, StoreError};

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
    /// When the lease was last taken or renewed (asked), while it is ours.
    renewed: Option<Instant>,
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
        }
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
        self.renewed
            .map(|t| self.renew_every().saturating_sub(t.elapsed()))
    }

    /// Whether this instance may do the job: takes the lease, or renews it
    /// once a third of it has passed since the last renewal. A store error
    /// is logged and returned (the caller counts it); the lease then counts
    /// as not ours until a later check takes it again.
    pub(crate) async fn role<S: Leases>(&mut self, store: &S) -> Result<Role, StoreError> {
        if self.renew_in().is_some_and(|left| !left.is_zero()) {
            return Ok(Role::Leader { taken: false });
        }
        let asked = Instant::now();
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
