//! Per-(device, boot) de-duplication of link frames (DESIGN §4).
//!
//! # Design
//! A device numbers its frames per boot and resends what is not acked, in
//! order. The agent remembers a high-water mark `hwm` (every sequence ≤ hwm
//! is applied) plus the few applied sequences above it (frames that overtook
//! a lost one). A frame is a duplicate iff it is ≤ hwm or in that set. The
//! state is persisted in the same transaction as the frame's effect, so a
//! frame is applied exactly once across crashes and restarts.
//!
//! The first frame seen of a boot sets `hwm = seq − 1`: frames of a boot from
//! before the agent first heard of it are not expected again. The set above
//! the mark is bounded; past [`MAX_ABOVE`] the mark jumps to the oldest entry
//! (the gap is given up and counted by the caller).

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

    /// The mark (every sequence ≤ it is applied).
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

    /// Records `seq` as applied; returns how many sequences were given up
    /// because the set above the mark overflowed.
    pub fn record(&mut self, seq: u32) -> u64 {
        let hwm = match self.hwm {
            Some(h) => h,
            None => {
                self.hwm = seq.checked_sub(1);
                if seq == 0 {
                    self.hwm = Some(0);
                    return 0;
                }
                seq - 1
            }
        };
        if seq <= hwm && self.hwm.is_some() {
            return 0;
        }
        self.above.insert(seq);
        let mut h = hwm;
        while self.above.first() == Some(&(h.wrapping_add(1))) {
            self.above.pop_first();
            h += 1;
        }
        self.hwm = Some(h);
        let mut gave_up = 0;
        while self.above.len() > MAX_ABOVE {
            if let Some(first) = self.above.pop_first() {
                gave_up += u64::from(first - h - 1);
                h = first;
                while self.above.first() == Some(&(h + 1)) {
                    self.above.pop_first();
                    h += 1;
                }
            }
        }
        self.hwm = Some(h);
        gave_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_keeps_only_a_mark() {
        let mut d = Dedupe::default();
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
        let mut d = Dedupe::default();
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
    fn first_frame_of_a_known_later_boot_sets_the_mark() {
        let mut d = Dedupe::default();
        d.record(42);
        assert_eq!(d.hwm(), Some(42));
        assert!(d.seen(41));
        assert!(!d.seen(43));
    }

    proptest! {
        #[test]
        fn applies_each_sequence_once(seqs in prop::collection::vec(0u32..200, 1..500)) {
            let mut d = Dedupe::default();
            d.record(0);
            let mut applied = BTreeSet::new();
            applied.insert(0);
            for s in seqs {
                if !d.seen(s) {
                    prop_assert!(applied.insert(s), "applied twice: {}", s);
                    d.record(s);
                }
                prop_assert!(d.seen(s));
            }
            let restored = Dedupe::from_parts(d.hwm(), d.above().collect::<Vec<_>>());
            prop_assert_eq!(restored, d);
        }
    }
}
