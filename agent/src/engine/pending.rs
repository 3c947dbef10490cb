//! Input applied in memory and waiting for its group commit: how much, since
//! when, and what to acknowledge once it is durable.

use std::time::Instant;

use tributary_core::frame::{Ack, Message};

use super::input::{Done, Reply};

/// Input applied in memory and waiting for its commit.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Readings applied since the last commit.
    pub(crate) readings: u64,
    /// When the first input since the last commit arrived.
    pub(crate) since: Option<Instant>,
    acks: Vec<(Reply, Ack)>,
    dones: Vec<Done>,
}

impl Pending {
    /// Notes input holding `readings` readings.
    pub(crate) fn mark(&mut self, readings: u64) {
        self.readings += readings;
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// An Ack to send on `reply` after the commit.
    pub(crate) fn ack(&mut self, reply: &Reply, ack: Ack) {
        self.acks.push((reply.clone(), ack));
    }

    /// A signal to fire after the commit (none: nothing to do).
    pub(crate) fn done(&mut self, done: Option<Done>) {
        if let Some(d) = done {
            self.dones.push(d);
        }
    }

    /// Inputs waiting for their acknowledgement.
    pub(crate) fn held(&self) -> u64 {
        (self.acks.len() + self.dones.len()) as u64
    }

    /// After the commit: sends the Acks, fires the signals and starts over.
    pub(crate) fn acknowledge(&mut self) {
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
