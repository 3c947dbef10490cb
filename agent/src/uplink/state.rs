//! The uplink's protocol state: the batches it holds until the collector
//! confirms them, and which of them to publish when. A plain synchronous
//! struct — no I/O, no clock of its own — driven by the async shell in
//! [`super`] and tested on its own.
//!
//! # Design
//! - The engine hands over every batch it forms ([`UplinkState::hold`]); the
//!   uplink holds it, by sequence, until a Confirm names it
//!   ([`UplinkState::confirm`], which says which held batches that released,
//!   for the engine to delete). A PUBACK releases nothing: a broker may drop
//!   a QoS 1 message after acknowledging it.
//! - A batch is *due* while connected if it was not published on the
//!   current connection, or was published there `confirm_timeout` ago or
//!   more ([`UplinkState::due`]). Losing the connection makes every held
//!   batch due again on the next one: on reconnect everything is
//!   republished, with the same bytes (the collector de-duplicates by
//!   (agent, seq)).
//! - Whether a publication is the batch's first or a repeat is reported
//!   ([`Publication`]), for `batches_sent_total` and `batches_resent_total`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A batch held until it is confirmed.
#[derive(Debug)]
struct Held {
    payload: Vec<u8>,
    /// When it was last published on the current connection.
    sent: Option<Instant>,
    /// Whether it was ever published.
    published: bool,
}

/// Whether a publication was a batch's first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publication {
    /// Its first.
    First,
    /// A repeat (after a timeout or a reconnect).
    Again,
}

/// The batches in flight and the connection state.
#[derive(Debug)]
pub struct UplinkState {
    held: BTreeMap<u64, Held>,
    timeout: Duration,
    connected: bool,
}

impl UplinkState {
    /// Nothing held, not connected; a batch unconfirmed `confirm_timeout`
    /// after its publication is due again.
    pub fn new(confirm_timeout: Duration) -> Self {
        UplinkState {
            held: BTreeMap::new(),
            timeout: confirm_timeout,
            connected: false,
        }
    }

    /// Holds batch `seq` until it is confirmed; a batch already held keeps
    /// its bytes (returns false).
    pub fn hold(&mut self, seq: u64, payload: Vec<u8>) -> bool {
        match self.held.entry(seq) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Held {
                    payload,
                    sent: None,
                    published: false,
                });
                true
            }
        }
    }

    /// The connection is up: every held batch is due.
    pub fn connected(&mut self) {
        self.connected = true;
        for b in self.held.values_mut() {
            b.sent = None;
        }
    }

    /// The connection is lost: nothing is due until the next one.
    pub fn disconnected(&mut self) {
        self.connected = false;
    }

    /// Whether connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The batches to publish at `now`, oldest first (none while
    /// disconnected).
    pub fn due(&self, now: Instant) -> Vec<u64> {
        if !self.connected {
            return Vec::new();
        }
        self.held
            .iter()
            .filter(|(_, b)| {
                b.sent
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.timeout)
            })
            .map(|(&seq, _)| seq)
            .collect()
    }

    /// The bytes of a held batch.
    pub fn payload(&self, seq: u64) -> Option<&[u8]> {
        self.held.get(&seq).map(|b| b.payload.as_slice())
    }

    /// Records that batch `seq` was handed to the MQTT client at `now`.
    pub fn published(&mut self, seq: u64, now: Instant) -> Option<Publication> {
        let b = self.held.get_mut(&seq)?;
        b.sent = Some(now);
        let first = !b.published;
        b.published = true;
        Some(if first {
            Publication::First
        } else {
            Publication::Again
        })
    }

    /// A Confirm named `seqs`: releases the held ones and returns them
    /// (a repeated or unknown sequence releases nothing).
    pub fn confirm(&mut self, seqs: impl IntoIterator<Item = u64>) -> Vec<u64> {
        seqs.into_iter()
            .filter(|s| self.held.remove(s).is_some())
            .collect()
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1_000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Publishes everything due at `now`; returns what was published how.
    fn publish(s: &mut UplinkState, now: Instant) -> Vec<(u64, Publication)> {
        s.due(now)
            .into_iter()
            .map(|seq| (seq, s.published(seq, now).unwrap()))
            .collect()
    }

    #[test]
    fn a_batch_is_published_once_until_its_confirmation_times_out() {
        let t0 = Instant::now();
        let mut s = UplinkState::new(TIMEOUT);
        s.connected();
        assert!(s.hold(1, b"one".to_vec()));
        assert_eq!(publish(&mut s, t0), [(1, Publication::First)]);
        assert_eq!(s.due(t0 + ms(999)), Vec::<u64>::new());
        assert_eq!(publish(&mut s, t0 + ms(1_000)), [(1, Publication::Again)]);
        assert_eq!(s.due(t0 + ms(1_500)), Vec::<u64>::new());
        assert_eq!(s.payload(1), Some(&b"one"[..]));
    }

    #[test]
    fn nothing_is_due_while_disconnected_and_everything_on_reconnect() {
        let t0 = Instant::now();
        let mut s = UplinkState::new(TIMEOUT);
        s.hold(2, b"two".to_vec());
        s.hold(1, b"one".to_vec());
        assert!(s.due(t0).is_empty(), "not connected yet");
        s.connected();
        assert_eq!(
            publish(&mut s, t0),
            [(1, Publication::First), (2, Publication::First)],
            "oldest first"
        );
        s.disconnected();
        s.hold(3, b"three".to_vec());
        assert!(
            s.due(t0 + ms(5_000)).is_empty(),
            "an outage publishes nothing"
        );
        // Reconnected well within the timeout: all republished at once,
        // the ones sent before as repeats.
        s.connected();
        assert_eq!(
            publish(&mut s, t0 + ms(10)),
            [
                (1, Publication::Again),
                (2, Publication::Again),
                (3, Publication::First)
            ]
        );
    }

    #[test]
    fn a_confirm_releases_only_what_is_held() {
        let t0 = Instant::now();
        let mut s = UplinkState::new(TIMEOUT);
        s.connected();
        for seq in 1..=3 {
            s.hold(seq, vec![seq as u8]);
        }
        publish(&mut s, t0);
        assert_eq!(s.confirm([2, 9]), [2], "9 was never held");
        assert_eq!(s.confirm([2]), Vec::<u64>::new(), "a repeated Confirm");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.due(t0 + TIMEOUT),
            [1, 3],
            "a confirmed batch is never resent"
        );
        assert_eq!(s.payload(2), None);
        assert_eq!(s.confirm([1, 3]), [1, 3]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_batch_handed_over_twice_keeps_its_first_bytes() {
        let mut s = UplinkState::new(TIMEOUT);
        assert!(s.hold(7, b"first".to_vec()));
        assert!(!s.hold(7, b"second".to_vec()));
        assert_eq!(s.payload(7), Some(&b"first"[..]));
        assert_eq!(s.published(8, Instant::now()), None, "not held");
    }
}
