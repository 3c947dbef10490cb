//! A sink's lease: which collector instance pushes the sink.
//!
//! Every instance sharing a database may configure the same sink; it pushes
//! only from the instance holding the lease `sink:<name>` in the store
//! ([`Leases::lease`]). The holder renews it once a third of `lease_ms` has
//! passed — checked before every request, between retries and at each poll
//! — and gives it up when it stops, so another instance takes over at once;
//! if the holder dies, another takes over when the lease expires. The
//! sink's config keeps `lease_ms` at least twice a request's timeout and
//! the poll interval, so a request never outlasts the lease it started
//! under.

use std::time::{Duration, Instant};

use super::SinkCounters;
use crate::store::{Lease, Leases};

/// Whether this instance may push now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// It holds the sink's lease; `taken` when it did not at the previous
    /// check (so another instance may have moved the cursor meanwhile).
    Leader { taken: bool },
    /// Another instance holds it, or the store could not say.
    Standby,
}

/// This instance's view of one sink's lease.
pub(super) struct SinkLease {
    /// The sink's name (for logs).
    sink: String,
    /// The lease's name in the store.
    name: String,
    /// This instance's name in the lease.
    holder: String,
    ttl: Duration,
    /// When the lease was last taken or renewed (asked), while it is ours.
    renewed: Option<Instant>,
    /// The other holder last logged while standing by.
    standby: Option<String>,
}

impl SinkLease {
    /// The lease `name` of sink `sink`, held as `holder` for `ttl` at a
    /// time.
    pub(super) fn new(sink: &str, name: &str, holder: &str, ttl: Duration) -> Self {
        SinkLease {
            sink: sink.to_string(),
            name: name.to_string(),
            holder: holder.to_string(),
            ttl,
            renewed: None,
            standby: None,
        }
    }

    /// This instance's name in the lease.
    pub(super) fn holder(&self) -> &str {
        &self.holder
    }

    /// How often the lease is renewed while held.
    pub(super) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Whether this instance may push: takes the lease, or renews it once a
    /// third of it has passed since the last renewal.
    pub(super) async fn role<S: Leases>(&mut self, store: &S, counters: &SinkCounters) -> Role {
        if self
            .renewed
            .is_some_and(|t| t.elapsed() < self.renew_every())
        {
            return Role::Leader { taken: false };
        }
        let asked = Instant::now();
        let res = store.lease(&self.name, &self.holder, self.ttl).await;
        let was_ours = self.renewed.is_some();
        match res {
            Ok(Lease::Ours) => {
                // Counted from before the request, so never longer than the
                // store's own expiry.
                self.renewed = Some(asked);
                counters.leader.set(1);
                if !was_ours {
                    self.standby = None;
                    tracing::info!(sink = %self.sink, holder = %self.holder, "this instance holds the sink's lease; pushing");
                }
                Role::Leader { taken: !was_ours }
            }
            Ok(Lease::Theirs(other)) => {
                self.renewed = None;
                counters.leader.set(0);
                if was_ours {
                    tracing::warn!(sink = %self.sink, holder = %other, "the sink's lease passed to another instance; standing by");
                } else if self.standby.as_ref() != Some(&other) {
                    tracing::info!(sink = %self.sink, holder = %other, "another instance runs this sink; standing by");
                }
                self.standby = Some(other);
                Role::Standby
            }
            Err(e) => {
                self.renewed = None;
                self.standby = None;
                counters.leader.set(0);
                counters.store_errors.inc();
                tracing::warn!(sink = %self.sink, error = %e, "cannot take or renew the sink's lease; not pushing until it can");
                Role::Standby
            }
        }
    }

    /// Gives the lease up (when stopping), so another instance takes over
    /// at once rather than when it expires.
    pub(super) async fn give_up<S: Leases>(&mut self, store: &S, counters: &SinkCounters) {
        if self.renewed.take().is_none() {
            return;
        }
        counters.leader.set(0);
        if let Err(e) = store.release(&self.name, &self.holder).await {
            counters.store_errors.inc();
            tracing::warn!(sink = %self.sink, error = %e, "cannot give up the sink's lease; another instance takes over when it expires");
        }
    }
}
