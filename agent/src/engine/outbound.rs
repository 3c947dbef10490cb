//! The engine's end of the uplink: forming batches from the outbox and
//! handing them over, one way, and deleting them when the uplink reports the
//! collector's confirmation.
//!
//! # Design
//! The engine forms batches (identity committed first, [`Store::form_batches`])
//! while the uplink is connected and fewer than `uplink.max_in_flight` are
//! formed but unconfirmed — it counts that itself: the batches in the store.
//! It forms after a commit that emitted partials, after confirmations freed
//! room, and when the uplink (re)connects; during an outage nothing new is
//! frozen into batches, so partials stay in the outbox, where they can be
//! coarsened. At start it hands over every unconfirmed batch loaded from
//! the store. The uplink publishes what it is given, republishes it all on
//! reconnect and after a timeout, and sends back [`Input::Confirmed`].
//!
//! [`Store::form_batches`]: crate::store::Store::form_batches
//! [`Input::Confirmed`]: super::Input::Confirmed

use tokio::sync::{mpsc, watch};
use tributary_core::batch::Encoding;

use super::Engine;
use crate::store::{FormedBatch, StoreError};

/// Where formed batches go and what the engine knows of the uplink.
#[derive(Debug)]
pub(crate) struct Outbound {
    agent: String,
    encoding: Encoding,
    max_in_flight: usize,
    batches: mpsc::UnboundedSender<FormedBatch>,
    connected: watch::Receiver<bool>,
    /// Whether the uplink still reports its connection state.
    watching: bool,
    /// Batches formed and not confirmed (the rows of `batches`).
    unconfirmed: usize,
}

impl Outbound {
    /// Batches of `agent`, encoded as `encoding`, at most `max_in_flight`
    /// unconfirmed, go to `batches` while `connected` says the uplink is up.
    /// The channel holds at most `max_in_flight` batches plus, at start, the
    /// unconfirmed ones the store held.
    pub(crate) fn new(
        agent: &str,
        encoding: Encoding,
        max_in_flight: usize,
        batches: mpsc::UnboundedSender<FormedBatch>,
        connected: watch::Receiver<bool>,
    ) -> Self {
        Outbound {
            agent: agent.to_string(),
            encoding,
            max_in_flight,
            batches,
            connected,
            watching: true,
            unconfirmed: 0,
        }
    }

    /// How many batches may be formed now.
    fn room(&self) -> usize {
        let up = self.watching && *self.connected.borrow() && !self.batches.is_closed();
        if up {
            self.max_in_flight.saturating_sub(self.unconfirmed)
        } else {
            0
        }
    }

    /// Resolves when the uplink's connection state changes; never once the
    /// uplink is gone (the engine then forms no more batches).
    pub(super) async fn changed(&mut self) {
        if !self.watching {
            return std::future::pending().await;
        }
        if self.connected.changed().await.is_err() {
            self.watching = false;
        }
    }

    fn hand_over(&mut self, batches: Vec<FormedBatch>) {
        self.unconfirmed += batches.len();
        for b in batches {
            // The uplink is gone (shutdown): the batch stays stored and is
            // sent after the next start.
            let _ = self.batches.send(b);
        }
    }
}

impl Engine {
    /// Hands every stored unconfirmed batch to the uplink (at start).
    pub(super) fn resume_batches(&mut self) -> Result<(), StoreError> {
        let r = self.store.unconfirmed();
        let stored = self.store_result(r)?;
        self.outbound.hand_over(stored);
        Ok(())
    }

    /// Forms as many batches as there is room for and hands them over.
    pub(super) fn form_batches(&mut self) -> Result<(), StoreError> {
        let room = self.outbound.room();
        if room == 0 {
            return Ok(());
        }
        let o = &self.outbound;
        let r = self
            .store
            .form_batches(&o.agent, self.win.watermark(), room, o.encoding);
        let formed = self.store_result(r)?;
        self.metrics.batches_formed.inc_by(formed.len() as u64);
        self.metrics.outbox_bytes.set(self.store.outbox_bytes());
        self.outbound.hand_over(formed);
        Ok(())
    }

    /// The collector confirmed `seqs`: delete them and form more.
    pub(super) fn confirmed(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        let r = self.store.confirm(seqs);
        let (n, readings) = self.store_result(r)?;
        self.metrics.batches_confirmed.inc_by(n);
        self.metrics.readings_confirmed.inc_by(readings);
        self.metrics.outbox_bytes.set(self.store.outbox_bytes());
        self.outbound.unconfirmed = self
            .outbound
            .unconfirmed
            .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
        self.form_batches()
    }
}
