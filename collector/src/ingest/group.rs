//! The ack group: the messages received since the last commit, in arrival
//! order, and what to acknowledge and confirm once the commit's outcome is
//! known. A plain synchronous struct, so the rules are tested without a
//! broker; [`super::run`] is the async shell around it.
//!
//! # Design
//! - PUBACKs go in arrival order (MQTT 3.1.1 §4.6, and rumqttd drops a
//!   client that breaks it). A refused message is acknowledged at once when
//!   nothing waits, else queued behind the valid batches awaiting their
//!   commit.
//! - Nothing is acknowledged before the group's commit. When the commit
//!   fails, nothing is and the group is put back in front of what arrived
//!   meanwhile, to be committed again (the shell retries with a backoff):
//!   on a live connection the broker resends nothing, so a dropped group
//!   would hold the broker's in-flight window for good and ingest would
//!   stop (issue #12).
//! - One group commits at a time while the next one gathers ([`Group::take`]
//!   to [`Group::settle`] or [`Group::restore`]); a refused message that
//!   arrives meanwhile waits behind the committing group's acks.
//! - After a commit every message of the group is acknowledged, and each
//!   agent incarnation is confirmed the sequences applied — new, duplicate,
//!   or refused whole and recorded as such (it can never apply, so the
//!   agent must stop resending); a confirmation names the incarnation, so it never releases
//!   the batches of another database under the same agent id.

use std::collections::BTreeMap;

use tributary_core::batch::Batch;
use tributary_core::Incarnation;

use crate::store::{Refusals, WholeBatch};

/// What became of one batch of a committed group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied for the first time.
    New,
    /// Applied before.
    Duplicate,
    /// Refused whole for good, and recorded as seen for the first time
    /// (a redelivery of it is a [`Outcome::Duplicate`]).
    Refused(WholeBatch),
}

/// What a group's batches add to the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) new: u64,
    pub(crate) duplicate: u64,
    pub(crate) partials: u64,
    pub(crate) readings: u64,
    pub(crate) bytes: u64,
    pub(crate) unmergeable: u64,
    pub(crate) store_failed: u64,
}

/// What to send after a commit: every PUBACK in arrival order, then the
/// confirmations per agent incarnation; and the readings each agent
/// reported dropped in its new batches.
#[derive(Debug)]
pub(crate) struct Settled<A> {
    pub(crate) acks: Vec<A>,
    pub(crate) confirms: BTreeMap<(String, Incarnation), Vec<u64>>,
    pub(crate) tally: Tally,
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// The messages awaiting the next commit; `A` is what a PUBACK needs.
#[derive(Debug)]
pub(crate) struct Group<A> {
    /// The messages gathered since the last [`Group::take`].
    gathering: Taken<A>,
    /// Whether a group taken before this one is still committing.
    committing: bool,
    /// When the first message of the group committing arrived (ms).
    committing_since: Option<i64>,
}

impl<A> Default for Group<A> {
    fn default() -> Self {
        Group {
            gathering: Taken::default(),
            committing: false,
            committing_since: None,
        }
    }
}

impl<A> Group<A> {
    /// Adds a valid batch of `size` payload bytes, with what the checks
    /// took out of it, received at `now` (ms).
    pub(crate) fn push_valid(
        &mut self,
        ack: A,
        batch: Batch,
        refused: Refusals,
        size: usize,
        now: i64,
    ) {
        let g = &mut self.gathering;
        g.since.get_or_insert(now);
        g.acks.push(ack);
        g.batches.push(batch);
        g.refused.push(refused);
        g.sizes.push(size);
    }

    /// Adds a refused message received at `now` (ms); returns its ack
    /// when it may go at once (nothing waits before it, here or in the
    /// group committing).
    pub(crate) fn push_refused(&mut self, ack: A, now: i64) -> Option<A> {
        if self.is_empty() && !self.committing {
            return Some(ack);
        }
        self.gathering.since.get_or_insert(now);
        self.gathering.acks.push(ack);
        None
    }

    /// When the oldest message not yet acknowledged arrived (ms), if any:
    /// the committing group's first, else the gathering one's.
    pub(crate) fn oldest(&self) -> Option<i64> {
        self.committing_since.or(self.gathering.since)
    }

    /// Valid batches waiting.
    pub(crate) fn valid(&self) -> usize {
        self.gathering.valid()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.gathering.acks.is_empty()
    }

    /// Whether a taken group is committing.
    pub(crate) fn committing(&self) -> bool {
        self.committing
    }

    /// Takes the group to commit it, leaving an empty one to gather the
    /// next; until [`Group::settle`] or [`Group::restore`] no other may be
    /// taken.
    pub(crate) fn take(&mut self) -> Taken<A> {
        debug_assert!(!self.committing, "one group commits at a time");
        self.committing = true;
        let taken = std::mem::take(&mut self.gathering);
        self.committing_since = taken.since;
        taken
    }

    /// The taken group committed with `outcomes` (one per batch, in
    /// order): what to send for it.
    pub(crate) fn settle(&mut self, taken: Taken<A>, outcomes: &[Outcome]) -> Settled<A> {
        self.committing = false;
        self.committing_since = None;
        taken.settle(outcomes)
    }

    /// The taken group's commit failed: it goes back in front of what
    /// arrived meanwhile, to be committed again with it, in arrival order.
    pub(crate) fn restore(&mut self, mut taken: Taken<A>) {
        self.committing = false;
        self.committing_since = None;
        let g = &mut self.gathering;
        taken.since = taken.since.or(g.since);
        taken.acks.append(&mut g.acks);
        taken.batches.append(&mut g.batches);
        taken.refused.append(&mut g.refused);
        taken.sizes.append(&mut g.sizes);
        self.gathering = taken;
    }
}

/// Messages in arrival order: a group gathering, or taken to commit.
#[derive(Debug)]
pub(crate) struct Taken<A> {
    /// Every message's ack in arrival order.
    acks: Vec<A>,
    /// The valid batches in arrival order, as the store applies them.
    batches: Vec<Batch>,
    /// What the checks took out of each, stored with it.
    refused: Vec<Refusals>,
    /// Their payload sizes.
    sizes: Vec<usize>,
    /// When the first message arrived (ms).
    since: Option<i64>,
}

impl<A> Default for Taken<A> {
    fn default() -> Self {
        Taken {
            acks: Vec::new(),
            batches: Vec::new(),
            refused: Vec::new(),
            sizes: Vec::new(),
            since: None,
        }
    }
}

impl<A> Taken<A> {
    /// The batches taken, in arrival order, as the store applies them.
    pub(crate) fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// What the checks took out of each batch of [`Taken::batches`].
    pub(crate) fn refused(&self) -> &[Refusals] {
        &self.refused
    }

    /// Valid batches taken.
    pub(crate) fn valid(&self) -> usize {
        self.batches.len()
    }

    /// What to send once the commit gave `outcomes`.
    fn settle(self, outcomes: &[Outcome]) -> Settled<A> {
        let mut tally = Tally::default();
        let mut confirms: BTreeMap<(String, Incarnation), Vec<u64>> = BTreeMap::new();
        let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
        for ((b, size), outcome) in self.batches.iter().zip(&self.sizes).zip(outcomes) {
            match outcome {
                Outcome::New => {
                    tally.new += 1;
                    tally.partials += b.partials.len() as u64;
                    tally.readings += b.partials.iter().map(|p| p.summary.count()).sum::<u64>();
                    tally.bytes += *size as u64;
                }
                Outcome::Duplicate => tally.duplicate += 1,
                Outcome::Refused(WholeBatch::Unmergeable) => tally.unmergeable += 1,
                Outcome::Refused(WholeBatch::StoreFailed) => tally.store_failed += 1,
            }
            // What the agent dropped is counted with the batch's first
            // copy, applied or refused (the store counted it then too).
            if *outcome != Outcome::Duplicate && b.dropped_readings > 0 {
                let d = dropped.entry(b.agent.clone()).or_default();
                *d = d.saturating_add(b.dropped_readings);
            }
            confirms
                .entry((b.agent.clone(), b.incarnation))
                .or_default()
                .push(b.seq);
        }
        Settled {
            acks: self.acks,
            confirms,
            tally,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::batch::Partial;
    use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

    fn batch(agent: &str, seq: u64, readings: i64) -> Batch {
        batch_of(agent, Incarnation::default(), seq, readings)
    }

    fn batch_of(agent: &str, inc: Incarnation, seq: u64, readings: i64) -> Batch {
        let mut s = Summary::new(Quantum::new(0).unwrap());
        for v in 0..readings {
            s.insert(v, v).unwrap();
        }
        let partial = Partial {
            series: SeriesKey::new("m", "d", Default::default()).unwrap(),
            window: Window::containing(0, Width::new(60_000).unwrap()),
            summary: s,
        };
        Batch::new(agent, seq, 0, vec![partial]).with_identity(inc, 0)
    }

    #[test]
    fn a_refused_message_goes_at_once_only_when_nothing_waits() {
        let mut g: Group<u16> = Group::default();
        assert_eq!(g.push_refused(1, 100), Some(1));
        assert!(g.is_empty());
        assert_eq!(g.oldest(), None, "nothing waits for an ack");
        g.push_valid(2, batch("a", 1, 1), Refusals::default(), 10, 200);
        assert_eq!(
            g.push_refused(3, 300),
            None,
            "queued behind the valid batch"
        );
        g.push_valid(4, batch("a", 2, 1), Refusals::default(), 10, 400);
        assert_eq!(g.valid(), 2);
        assert_eq!(g.push_refused(5, 500), None, "still queued behind");
        assert_eq!(g.oldest(), Some(200));
        let taken = g.take();
        assert!(g.is_empty() && g.valid() == 0);
        assert_eq!(taken.batches().len(), 2);
        assert_eq!(
            g.push_refused(6, 600),
            None,
            "queued behind the committing group"
        );
        assert_eq!(g.oldest(), Some(200), "the committing group's first");
        let settled = g.settle(taken, &[Outcome::New, Outcome::New]);
        assert_eq!(settled.acks, [2, 3, 4, 5], "every ack, in arrival order");
        assert_eq!(g.oldest(), Some(600), "what waited behind it");
        let rest = g.take();
        let settled = g.settle(rest, &[]);
        assert_eq!(settled.acks, [6]);
        assert_eq!(g.oldest(), None);
        assert_eq!(g.push_refused(7, 700), Some(7), "nothing waits any more");
    }

    #[test]
    fn a_failed_commit_goes_back_in_front_of_what_arrived_meanwhile() {
        let mut g: Group<u16> = Group::default();
        g.push_valid(1, batch("a", 1, 1), Refusals::default(), 10, 100);
        g.push_valid(2, batch("a", 2, 1), Refusals::default(), 10, 200);
        let taken = g.take();
        assert!(g.committing());
        g.push_valid(3, batch("b", 1, 1), Refusals::default(), 10, 300);
        assert_eq!(g.push_refused(4, 400), None);
        assert_eq!(g.oldest(), Some(100));
        g.restore(taken);
        assert!(!g.committing());
        assert_eq!(g.valid(), 3);
        assert_eq!(
            g.oldest(),
            Some(100),
            "the failed group's first, in front again"
        );
        let taken = g.take();
        let order: Vec<(&str, u64)> = taken
            .batches()
            .iter()
            .map(|b| (b.agent.as_str(), b.seq))
            .collect();
        assert_eq!(order, [("a", 1), ("a", 2), ("b", 1)]);
        assert_eq!(taken.refused().len(), 3);
        let settled = g.settle(taken, &[Outcome::New; 3]);
        assert_eq!(settled.acks, [1, 2, 3, 4], "every ack, in arrival order");
    }

    #[test]
    fn outcomes_decide_confirmations_and_counts() {
        let mut g: Group<u16> = Group::default();
        g.push_valid(1, batch("a", 1, 3), Refusals::default(), 100, 100);
        g.push_valid(2, batch("b", 7, 2), Refusals::default(), 50, 200);
        g.push_valid(3, batch("a", 2, 5), Refusals::default(), 70, 300);
        let taken = g.take();
        let settled = g.settle(
            taken,
            &[
                Outcome::New,
                Outcome::Duplicate,
                Outcome::Refused(WholeBatch::Unmergeable),
            ],
        );
        assert_eq!(settled.acks, [1, 2, 3]);
        let confirms: Vec<(&str, &[u64])> = settled
            .confirms
            .iter()
            .map(|((a, _), s)| (a.as_str(), s.as_slice()))
            .collect();
        assert_eq!(confirms, [("a", &[1, 2][..]), ("b", &[7][..])]);
        assert_eq!(
            settled.tally,
            Tally {
                new: 1,
                duplicate: 1,
                partials: 1,
                readings: 3,
                bytes: 100,
                unmergeable: 1,
                store_failed: 0,
            }
        );
    }

    #[test]
    fn confirmations_name_the_incarnation_and_drops_count_once() {
        let (old, new) = (Incarnation::new(1), Incarnation::new(2));
        let mut g: Group<u16> = Group::default();
        let mut b = batch_of("a", old, 1, 1);
        b.dropped_readings = 4;
        g.push_valid(1, b.clone(), Refusals::default(), 10, 100);
        g.push_valid(2, b, Refusals::default(), 10, 200);
        let mut b = batch_of("a", new, 1, 1);
        b.dropped_readings = 3;
        g.push_valid(3, b, Refusals::default(), 10, 300);
        let taken = g.take();
        let settled = g.settle(taken, &[Outcome::New, Outcome::Duplicate, Outcome::New]);
        let confirms: Vec<((&str, Incarnation), &[u64])> = settled
            .confirms
            .iter()
            .map(|((a, i), s)| ((a.as_str(), *i), s.as_slice()))
            .collect();
        assert_eq!(
            confirms,
            [(("a", old), &[1, 1][..]), (("a", new), &[1][..])],
            "seq 1 of each incarnation, confirmed to each"
        );
        // The duplicate's drops were counted with its first copy.
        assert_eq!(settled.dropped, BTreeMap::from([("a".to_string(), 7)]));
    }
}
