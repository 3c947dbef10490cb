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
//! coarsened. How many bytes of batches may be formed and unconfirmed is
//! the store's to limit (a quarter of `outbox.max_bytes`). At start it hands
//! over every unconfirmed batch loaded from the store. The uplink publishes
//! what it is given, republishes it all on reconnect and after a timeout,
//! and sends back [`Input::Confirmed`]. Whether batches wait for a
//! confirmation, and since when, goes to the health state (`/health/ready`
//! reports a collector that stopped confirming).
//!
//! [`Store::form_batches`]: crate::store::Store::form_batches
//! [`Input::Confirmed`]: super::Input::Confirmed

use tokio::sync::{mpsc, watch};
use tributary_core::batch::Encoding;

use crate::metrics::Metrics;
use crate::store::{FormedBatch, Store, StoreError};

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

    /// Whether the uplink's connection state changed since last seen (and
    /// marks it seen); no waiting.
    pub(crate) fn take_change(&mut self) -> bool {
        if !self.watching {
            return false;
        }
        match self.connected.has_changed() {
            Ok(changed) => {
                if changed {
                    self.connected.borrow_and_update();
                }
                changed
            }
            Err(_) => {
                self.watching = false;
                false
            }
        }
    }

    /// Resolves when the uplink's connection state changes; never once the
    /// uplink is gone (the engine then forms no more batches).
    pub(crate) async fn changed(&mut self) {
        if !self.watching {
            return std::future::pending().await;
        }
        if self.connected.changed().await.is_err() {
            self.watching = false;
        }
    }

    /// Hands `batches` (formed, or loaded at start) to the uplink.
    pub(crate) fn hand_over(&mut self, batches: Vec<FormedBatch>, m: &Metrics) {
        if self.unconfirmed == 0 && !batches.is_empty() {
            m.health.batches_waiting(true);
        }
        self.unconfirmed += batches.len();
        for b in batches {
            // The uplink is gone (shutdown): the batch stays stored and is
            // sent after the next start.
            let _ = self.batches.send(b);
        }
    }
}

impl Outbound {
    /// Forms as many batches as there is room for, at the agent's
    /// `watermark`, and hands them over.
    pub(crate) fn form(
        &mut self,
        store: &mut Store,
        watermark: i64,
        m: &Metrics,
    ) -> Result<(), StoreError> {
        let room = self.room();
        if room == 0 {
            return Ok(());
        }
        let formed = store.form_batches(&self.agent, watermark, room, self.encoding)?;
        m.batches_formed.inc_by(formed.len() as u64);
        m.set_outbox(store.row_bytes(), store.batch_bytes());
        self.hand_over(formed, m);
        Ok(())
    }

    /// The collector confirmed `seqs`: delete them (the engine then forms
    /// more).
    pub(crate) fn confirmed(
        &mut self,
        store: &mut Store,
        seqs: &[u64],
        m: &Metrics,
    ) -> Result<(), StoreError> {
        let (n, readings) = store.confirm(seqs)?;
        m.batches_confirmed.inc_by(n);
        m.readings_confirmed.inc_by(readings);
        m.set_outbox(store.row_bytes(), store.batch_bytes());
        self.unconfirmed = self
            .unconfirmed
            .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
        if n > 0 {
            // A confirmation restarts the clock of the batches still waiting.
            m.health.batches_waiting(self.unconfirmed > 0);
        }
        Ok(())
    }
}
