//! Which batches are new: the de-duplication memory of each sender, kept
//! small, written once for both backends as plain synchronous code.
//!
//! # Design
//! A batch's identity is (agent, incarnation, seq) (DESIGN §4); a *sender*
//! is one agent incarnation — an agent database, which numbers its batches
//! from 1. Per sender the store keeps one row (`incarnations`) with its
//! mark, `applied_below`: every sequence below it was applied, or its agent
//! was confirmed it and will never send it again; and the keys applied at
//! or above the mark (`applied`). Nothing else: a batch is a duplicate iff
//! its sequence is below its sender's mark or its key is stored.
//!
//! A backend's transaction does, in this order:
//! 1. lock (creating) each sender's row, in (agent, incarnation) order
//!    ([`senders`]), and read its mark;
//! 2. claim the keys at or above their sender's mark ([`claim_keys`]; a key
//!    below it is a duplicate without a claim), learning which were new;
//! 3. [`dedupe`]: per batch in order, new or duplicate (a second copy of a
//!    key in the group is a duplicate);
//! 4. read the stored keys of the senders with new batches and
//!    [`advance`] their marks: up to the highest `first_unconfirmed` of the
//!    sender's batches in the group — the agent says every batch below it
//!    was confirmed, and the collector confirms a batch only once it is
//!    applied or refused for good — then over the stored keys that follow
//!    without a gap. The keys below the new mark are deleted; the new
//!    batches' count and dropped readings are added to the sender's row.
//!
//! So what is remembered per sender is one row plus the keys applied above
//! the mark: with an agent that says where its unconfirmed batches begin,
//! at most its batches in flight, however long it runs. A replay of a key
//! pruned long ago is below the mark, and still a duplicate. A sender that
//! claims nothing (`first_unconfirmed` 0: tools, tests) keeps a key above
//! the mark only while a gap below it stays open.
//!
//! With several instances sharing a database, the sender row's lock (taken
//! first, held to commit) makes steps 1–4 atomic per sender: an instance
//! applying a replay of a key waits while another moves the mark over it
//! and deletes it, then reads the moved mark. It is a lock per agent
//! incarnation, never a global one.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tributary_core::batch::Batch;
use tributary_core::Incarnation;

use crate::store::codec::corrupt;
use crate::store::{Applied, StoreError};

/// A sender: an agent and one incarnation of it.
pub(crate) type Sender<'a> = (&'a str, Incarnation);

/// A batch key: its sender and sequence (as a SQL integer).
pub(crate) type Key<'a> = (&'a str, Incarnation, i64);

/// Each sender's mark as the transaction read it (0 for a new sender).
pub(crate) type Marks<'a> = BTreeMap<Sender<'a>, i64>;

/// The sender of a batch.
pub(crate) fn sender(b: &Batch) -> Sender<'_> {
    (b.agent.as_str(), b.incarnation)
}

/// A sequence as a SQL integer (ingest refuses batches beyond it).
fn sql(what: &'static str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|e| corrupt(what, e))
}

/// The group's senders, each once, in lock order.
pub(crate) fn senders(batches: &[Batch]) -> Vec<Sender<'_>> {
    let set: BTreeSet<Sender<'_>> = batches.iter().map(sender).collect();
    set.into_iter().collect()
}

/// The mark of `s` in `marks` (0: nothing applied yet).
fn mark(marks: &Marks<'_>, s: Sender<'_>) -> i64 {
    marks.get(&s).copied().unwrap_or(0)
}

/// The group's keys at or above their sender's mark, each once, sorted:
/// the ones to claim.
pub(crate) fn claim_keys<'a>(
    batches: &'a [Batch],
    marks: &Marks<'a>,
) -> Result<Vec<Key<'a>>, StoreError> {
    let mut keys = BTreeSet::new();
    for b in batches {
        let seq = sql("batch sequence", b.seq)?;
        if seq >= mark(marks, sender(b)) {
            keys.insert((b.agent.as_str(), b.incarnation, seq));
        }
    }
    Ok(keys.into_iter().collect())
}

/// Per batch in order, whether it is new — the first copy of a key the
/// store accepted as new (`new`) — and the new batches.
pub(crate) fn dedupe<'a>(
    batches: &'a [Batch],
    mut new: HashSet<Key<'a>>,
) -> Result<(Vec<Applied>, Vec<&'a Batch>), StoreError> {
    let mut outcome = Vec::with_capacity(batches.len());
    let mut fresh = Vec::new();
    for b in batches {
        let key = (
            b.agent.as_str(),
            b.incarnation,
            sql("batch sequence", b.seq)?,
        );
        // `remove`: a second copy in the same group is a duplicate.
        if new.remove(&key) {
            outcome.push(Applied::New);
            fresh.push(b);
        } else {
            outcome.push(Applied::Duplicate);
        }
    }
    Ok((outcome, fresh))
}

/// What a group does to one sender's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SenderUpdate<'a> {
    /// The sender.
    pub(crate) sender: Sender<'a>,
    /// Its new mark.
    pub(crate) applied_below: i64,
    /// Whether stored keys lie below the new mark (to delete).
    pub(crate) prune: bool,
    /// Its batches applied by the group.
    pub(crate) batches: i64,
    /// The readings its agent reported dropped in those batches (each
    /// batch's count once: only new batches count).
    pub(crate) dropped_readings: i64,
}

/// The updates of the senders of the new batches `fresh` of `batches`,
/// given their marks as read (`marks`) and their keys stored now, this
/// group's claims included (`stored`), in lock order.
pub(crate) fn advance<'a>(
    batches: &'a [Batch],
    fresh: &[&'a Batch],
    marks: &Marks<'a>,
    stored: &BTreeMap<Sender<'a>, BTreeSet<i64>>,
) -> Result<Vec<SenderUpdate<'a>>, StoreError> {
    let mut out: BTreeMap<Sender<'a>, SenderUpdate<'a>> = BTreeMap::new();
    for b in fresh {
        let s = sender(b);
        let u = out.entry(s).or_insert_with(|| SenderUpdate {
            sender: s,
            applied_below: mark(marks, s),
            prune: false,
            batches: 0,
            dropped_readings: 0,
        });
        u.batches = u.batches.saturating_add(1);
        let dropped = i64::try_from(b.dropped_readings).unwrap_or(i64::MAX);
        u.dropped_readings = u.dropped_readings.saturating_add(dropped);
    }
    // Every batch of the sender in the group says where its agent's
    // unconfirmed batches began, duplicates too (a resend says it again).
    for b in batches {
        if let Some(u) = out.get_mut(&sender(b)) {
            let first = sql("first unconfirmed sequence", b.first_unconfirmed)?;
            u.applied_below = u.applied_below.max(first);
        }
    }
    let none = BTreeSet::new();
    for u in out.values_mut() {
        let keys = stored.get(&u.sender).unwrap_or(&none);
        while keys.contains(&u.applied_below) {
            u.applied_below += 1;
        }
        u.prune = keys.first().is_some_and(|&k| k < u.applied_below);
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: Incarnation = Incarnation::new(0xa);
    const B: Incarnation = Incarnation::new(0xb);

    fn batch(agent: &str, inc: Incarnation, seq: u64, first: u64) -> Batch {
        Batch::new(agent, seq, 0, vec![]).with_identity(inc, first)
    }

    #[test]
    fn keys_below_a_mark_are_duplicates_without_a_claim() {
        let group = [
            batch("gw", A, 3, 3),
            batch("gw", A, 7, 3),
            batch("gw", B, 1, 1),
            batch("gw", A, 7, 3),
        ];
        assert_eq!(senders(&group), [("gw", A), ("gw", B)]);
        let marks: Marks<'_> = [(("gw", A), 5)].into_iter().collect();
        assert_eq!(
            claim_keys(&group, &marks).unwrap(),
            [("gw", A, 7), ("gw", B, 1)],
            "3 is below gw/A's mark; B is new"
        );
        // The store found both claims new.
        let new = [("gw", A, 7), ("gw", B, 1)].into_iter().collect();
        let (outcome, fresh) = dedupe(&group, new).unwrap();
        assert_eq!(
            outcome,
            [
                Applied::Duplicate,
                Applied::New,
                Applied::New,
                Applied::Duplicate
            ]
        );
        assert_eq!(fresh.len(), 2);
    }

    #[test]
    fn the_mark_moves_to_where_the_agent_says_and_over_what_follows() {
        let mut group = vec![batch("gw", A, 9, 4), batch("gw", A, 6, 2)];
        group[0].dropped_readings = 5;
        group[1].dropped_readings = u64::MAX;
        let fresh: Vec<&Batch> = group.iter().collect();
        let marks: Marks<'_> = [(("gw", A), 2)].into_iter().collect();
        // Stored now: 3 (applied earlier), 4, 5, 6, 9 (6 and 9 claimed now).
        let stored = [(("gw", A), [3, 4, 5, 6, 9].into_iter().collect())]
            .into_iter()
            .collect();
        let u = advance(&group, &fresh, &marks, &stored).unwrap();
        assert_eq!(
            u,
            [SenderUpdate {
                sender: ("gw", A),
                // Up to 4 on the agent's word, then over 4, 5 and 6.
                applied_below: 7,
                prune: true,
                batches: 2,
                dropped_readings: i64::MAX,
            }]
        );
    }

    #[test]
    fn a_sender_that_claims_nothing_moves_only_over_what_follows() {
        let group = [batch("gw", B, 2, 0)];
        let fresh: Vec<&Batch> = group.iter().collect();
        let stored = [(("gw", B), [2].into_iter().collect())]
            .into_iter()
            .collect();
        let u = advance(&group, &fresh, &Marks::new(), &stored).unwrap();
        assert_eq!((u[0].applied_below, u[0].prune), (0, false), "0, 1 open");
        let stored = [(("gw", B), [0, 1, 2].into_iter().collect())]
            .into_iter()
            .collect();
        let u = advance(&group, &fresh, &Marks::new(), &stored).unwrap();
        assert_eq!((u[0].applied_below, u[0].prune), (3, true));
    }

    #[test]
    fn only_senders_with_new_batches_are_updated() {
        let group = [batch("a", A, 5, 5), batch("b", A, 5, 5)];
        let fresh = vec![&group[1]];
        let u = advance(&group, &fresh, &Marks::new(), &BTreeMap::new()).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].sender, u[0].applied_below), (("b", A), 5));
    }
}
