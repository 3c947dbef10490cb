//! Per-(device, boot) de-duplication of link frames (DESIGN §4).
//!
//! # Design
//! A device numbers its frames per boot and resends what is not acked. The
//! agent remembers a high-water mark `hwm` (every sequence ≤ hwm is applied,
//! or given up by the device and never sent again) plus the few applied
//! sequences above it (frames that overtook a lost one). A frame is a
//! duplicate iff it is ≤ hwm or in that set. The state is persisted in the
//! same transaction as the frame's effect, so a frame is applied exactly
//! once across crashes and restarts.
//!
//! Where a boot's unacknowledged frames begin is learnt from the device
//! itself, never guessed from the first frame that happens to arrive: its
//! Hello carries `first_unacked`, and every frame below it was acked (so
//! applied) or given up by the device (dropped from its full ring, merged
//! into an older frame). A boot starts there ([`Dedupe::starting_at`]) and
//! each later Hello moves the mark up to it ([`Dedupe::advance`]; a stale
//! Hello never moves it back), which also drains the set above the mark
//! across sequences the device gave up. A data frame never moves the mark
//! past a sequence it has not seen: if a boot's first data frame is
//! corrupted on the wire and the next one arrives first, the first one's
//! resend still applies; a sequence that jumps ahead (5 after 1–2) is
//! applied and the frames in the gap still apply when they come.
//!
//! JSON messages carry (boot, seq) but there is no Hello to say where a
//! boot's messages begin; a JSON boot starts at the first message seen
//! (`starting_at(seq)`): MQTT hands one publisher's QoS 1 messages to the
//! agent in order, and the broker keeps what the agent has not PUBACKed.
//!
//! The set above the mark is bounded; past [`MAX_ABOVE`] the mark jumps to
//! the oldest entry (the gap is given up and counted by the caller). A
//! device whose Hello keeps the mark current never comes near it.

use std::collections::BTreeSet;

/// The most out-of-order sequences remembered above the mark.
pub const MAX_ABOVE: usize = 4096;

/// The applied sequences of one (device, boot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dedupe {
    hwm: Option<u32>,
    above: BTreeSet<u32>,
}

impl Dedupe {
    /// State restored from a stored mark and set.
    pub fn from_parts(hwm: Option<u32>, above: impl IntoIterator<Item = u32>) -> Self {
        Dedupe {
            hwm,
            above: above.into_iter().collect(),
        }
    }

    /// A boot whose frames below `first` are all done (a Hello's
    /// `first_unacked`, or a JSON boot's first message): nothing applied
    /// from `first` on.
    pub fn starting_at(first: u32) -> Self {
        Dedupe {
            hwm: first.checked_sub(1),
            above: BTreeSet::new(),
        }
    }

    /// The mark (every sequence ≤ it is applied or never sent again).
    pub fn hwm(&self) -> Option<u32> {
        self.hwm
    }

    /// Applied sequences above the mark.
    pub fn above(&self) -> impl Iterator<Item = u32> + '_ {
        self.above.iter().copied()
    }

    /// Whether `seq` was applied already.
    pub fn seen(&self, seq: u32) -> bool {
        self.hwm.is_some_and(|h| seq <= h) || self.above.contains(&seq)
    }

    /// The device says every frame below `first` is done (a Hello's
    /// `first_unacked`): the mark moves up to `first − 1` — never down —
    /// and the applied sequences up to it are forgotten. Returns whether
    /// the state changed.
    pub fn advance(&mut self, first: u32) -> bool {
        let Some(new) = first.checked_sub(1) else {
            return false;
        };
        if self.hwm.is_some_and(|h| h >= new) {
            return false;
        }
        self.hwm = Some(new);
        self.above = self.above.split_off(&first);
        self.compact();
        true
    }

    /// Moves the mark over the applied sequences that follow it.
    fn compact(&mut self) {
        loop {
            let next = self.hwm.map_or(Some(0), |h| h.checked_add(1));
            match next {
                Some(n) if self.above.first() == Some(&n) => {
                    self.above.pop_first();
                    self.hwm = Some(n);
                }
                _ => return,
            }
        }
    }

    /// Records `seq` as applied; returns how many sequences were given up
    /// because the set above the mark overflowed.
    pub fn record(&mut self, seq: u32) -> u64 {
        if self.seen(seq) {
            return 0;
        }
        self.above.insert(seq);
        self.compact();
        let mut gave_up = 0;
        while self.above.len() > MAX_ABOVE {
            let Some(first) = self.above.pop_first() else {
                break;
            };
            let below = self.hwm.map_or(0, |h| u64::from(h) + 1);
            gave_up += u64::from(first) - below;
            self.hwm = Some(first);
            self.compact();
        }
        gave_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_keeps_only_a_mark() {
        let mut d = Dedupe::starting_at(0);
        for s in 0..10 {
            assert!(!d.seen(s));
            d.record(s);
            assert!(d.seen(s));
        }
        assert_eq!(d.hwm(), Some(9));
        assert_eq!(d.above().count(), 0);
    }

    #[test]
    fn out_of_order_is_remembered_until_the_gap_fills() {
        let mut d = Dedupe::starting_at(0);
        d.record(0);
        d.record(1);
        d.record(3);
        assert!(!d.seen(2));
        assert!(d.seen(3));
        assert_eq!(d.hwm(), Some(1));
        d.record(2);
        assert_eq!(d.hwm(), Some(3));
        assert_eq!(d.above().count(), 0);
    }

    #[test]
    fn a_boot_starts_where_its_hello_says() {
        let mut d = Dedupe::starting_at(42);
        assert!(d.seen(41), "acked before the Hello");
        assert!(!d.seen(42));
        // The first data frame seen sets no mark: 42 was corrupted, 43
        // arrived first, and 42's resend still applies.
        d.record(43);
        assert!(!d.seen(42));
        d.record(42);
        assert_eq!(d.hwm(), Some(43));
    }

    #[test]
    fn a_jump_ahead_is_applied_and_the_gap_still_applies() {
        // Seq 5 after 1–2: applied; 3 and 4 apply when they come.
        let mut d = Dedupe::starting_at(1);
        for s in [1, 2, 5] {
            assert!(!d.seen(s), "{s}");
            d.record(s);
        }
        assert!(!d.seen(3) && !d.seen(4));
        d.record(4);
        d.record(3);
        assert_eq!((d.hwm(), d.above().count()), (Some(5), 0));
    }

    #[test]
    fn a_hello_moves_the_mark_up_over_what_the_device_gave_up() {
        // The device merged 3 into 2 and dropped 5: the set above the mark
        // would wait for them for ever.
        let mut d = Dedupe::starting_at(0);
        for s in [0, 1, 2, 4, 6, 7] {
            d.record(s);
        }
        assert_eq!(d.hwm(), Some(2));
        assert_eq!(d.above().collect::<Vec<_>>(), [4, 6, 7]);
        // Its Hello: the oldest frame waiting is 8.
        assert!(d.advance(8));
        assert_eq!((d.hwm(), d.above().count()), (Some(7), 0));
        // An older (stale) Hello moves nothing back.
        assert!(!d.advance(3));
        assert_eq!(d.hwm(), Some(7));
        // A Hello below applied frames above the mark keeps those.
        d.record(10);
        assert!(d.advance(9));
        assert_eq!(
            (d.hwm(), d.above().collect::<Vec<_>>()),
            (Some(8), vec![10])
        );
        assert!(d.advance(10));
        assert_eq!((d.hwm(), d.above().count()), (Some(10), 0));
    }

    #[test]
    fn the_set_above_the_mark_is_bounded() {
        let mut d = Dedupe::starting_at(0);
        let mut gave_up = 0;
        // Every other sequence: the gaps never fill.
        for k in 0..=MAX_ABOVE as u32 {
            gave_up += d.record(2 * k + 1);
        }
        assert_eq!(d.above().count(), MAX_ABOVE);
        assert_eq!(gave_up, 1, "sequence 0 was given up");
        assert_eq!(d.hwm(), Some(1));
    }

    proptest! {
        #[test]
        fn applies_each_sequence_once(
            first in 0u32..20,
            seqs in prop::collection::vec(0u32..200, 1..500),
            hellos in prop::collection::vec((0usize..500, 0u32..200), 0..5),
        ) {
            // Frames arrive in any order, repeated; now and then a Hello
            // says everything below `h` is done (applied, or given up).
            let mut d = Dedupe::starting_at(first);
            // The reference: what was applied, and below what all is done.
            let mut applied = BTreeSet::new();
            let mut done_below = first;
            for (i, &s) in seqs.iter().enumerate() {
                for &(_, h) in hellos.iter().filter(|(at, _)| *at == i) {
                    d.advance(h);
                    done_below = done_below.max(h);
                }
                let expect_seen = s < done_below || applied.contains(&s);
                prop_assert_eq!(d.seen(s), expect_seen, "seq {}", s);
                if !expect_seen {
                    applied.insert(s);
                    d.record(s);
                }
                prop_assert!(d.seen(s));
            }
            let restored = Dedupe::from_parts(d.hwm(), d.above().collect::<Vec<_>>());
            prop_assert_eq!(restored, d);
        }
    }
}
