//! The group commit: assembling one [`Commit`] from the windower's flush,
//! the registry's and the devices' changes, running it, and only then
//! acknowledging the input it made durable (link Acks, MQTT PUBACKs through
//! the `done` signals) and handing new partials on to batches.
//!
//! If the store fails the engine stops with the error (see [`super`]):
//! nothing that commit held was acknowledged.

use std::time::Instant;

use tributary_core::frame::{Ack, Message};
use tributary_runtime::now_ms;

use super::input::{Done, Reply};
use super::Engine;
use crate::store::{Commit, StoreError};

/// Input applied in memory and waiting for its commit.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Readings applied since the last commit.
    pub(super) readings: u64,
    /// When the first input since the last commit arrived.
    pub(super) since: Option<Instant>,
    acks: Vec<(Reply, Ack)>,
    dones: Vec<Done>,
}

impl Pending {
    /// Notes input holding `readings` readings.
    pub(super) fn mark(&mut self, readings: u64) {
        self.readings += readings;
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// An Ack to send on `reply` after the commit.
    pub(super) fn ack(&mut self, reply: &Reply, ack: Ack) {
        self.acks.push((reply.clone(), ack));
    }

    /// A signal to fire after the commit (none: nothing to do).
    pub(super) fn done(&mut self, done: Option<Done>) {
        if let Some(d) = done {
            self.dones.push(d);
        }
    }

    /// After the commit: sends the Acks, fires the signals and starts over.
    fn acknowledge(&mut self) {
        for (reply, ack) in self.acks.drain(..) {
            let _ = reply.send(Message::Ack(ack));
        }
        for d in self.dones.drain(..) {
            let _ = d.send(());
        }
        self.readings = 0;
        self.since = None;
    }
}

impl Engine {
    /// Commits everything pending (a no-op when nothing is), then
    /// acknowledges it and forms batches of the new partials.
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let flush = self.win.flush(now_ms());
        let nothing = flush.emitted.is_empty()
            && flush.checkpoints.is_empty()
            && flush.deleted.is_empty()
            && self.pending.since.is_none();
        if nothing {
            return Ok(());
        }
        let mut c = Commit {
            flush,
            ..Commit::default()
        };
        self.registry.drain_into(&self.win, &mut c);
        self.devices.drain_into(&mut c);
        let revisions = c.flush.emitted.iter().filter(|e| e.revision).count() as u64;
        let emitted = c.flush.emitted.len() as u64;
        let r = self.store.commit(&c);
        let out = self.store_result(r)?;
        let m = &self.metrics;
        m.store_ok.set(1);
        m.record_commit(started.elapsed());
        m.partials_emitted.inc_by(emitted - revisions);
        m.revisions_emitted.inc_by(revisions);
        m.partials_coarsened.inc_by(out.coarsened);
        m.readings_dropped.inc_by(out.dropped_readings);
        m.outbox_bytes.set(self.store.outbox_bytes());
        self.pending.acknowledge();
        if emitted > 0 {
            self.form_batches()?;
        }
        Ok(())
    }

    /// Passes a store result on, marking the store failed (and saying so)
    /// on an error.
    pub(super) fn store_result<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.metrics.store_ok.set(0);
            tracing::error!(error = %e, "store operation failed; stopping so a restart resumes from the last commit");
        }
        r
    }
}
