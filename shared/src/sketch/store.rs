//! Storage of a sketch's bucket counts: [`WideCounts`] for agent and
//! collector, [`SharedCounts`] for the device.
//!
//! A store holds one dense bucket array per sign (an offset and the counts of
//! consecutive buckets). It decides how many buckets fit and how large a count
//! may grow; the sketch's algorithms are the same for every store.

use core::fmt;

/// One sign of the sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Negative readings, indexed by magnitude.
    Negative = 0,
    /// Positive readings.
    Positive = 1,
}

/// An inclusive range of bucket indices, if any.
pub type Range = Option<(i32, i32)>;

/// Storage for the bucket counts of both signs.
pub trait Store: Clone + PartialEq + Eq + Default + fmt::Debug {
    /// The type a count has on the wire.
    type Count: Copy + Into<u64> + TryFrom<u64> + serde::Serialize;
    /// The largest count one bucket may hold.
    const MAX_COUNT: u64;
    /// The largest zero count.
    const MAX_ZERO: u64;
    /// Whether bucket arrays of these lengths fit the store.
    fn fits(positive: usize, negative: usize) -> bool;
    /// Zero counts over the given ranges; `None` if they do not fit.
    fn zeroed(positive: Range, negative: Range) -> Option<Self>;
    /// The given offsets and counts; `None` if they do not fit.
    fn from_counts(
        positive: (i32, &[Self::Count]),
        negative: (i32, &[Self::Count]),
    ) -> Option<Self>;
    /// The inclusive index range held on `side`.
    fn range(&self, side: Side) -> Range;
    /// The count of bucket `offset + k` on `side` (0 when out of range).
    fn get(&self, side: Side, k: usize) -> u64;
    /// Sets the count of bucket `offset + k` (within range) to `c` (≤ `MAX_COUNT`).
    fn set(&mut self, side: Side, k: usize, c: u64);
    /// Adds one to bucket `index` on `side` if it is held and below
    /// `MAX_COUNT`; returns whether it did.
    #[inline]
    fn try_increment(&mut self, side: Side, index: i32) -> bool {
        let Some((lo, hi)) = self.range(side) else {
            return false;
        };
        if index < lo || index > hi {
            return false;
        }
        let k = (index - lo) as usize;
        let c = self.get(side, k);
        if c >= Self::MAX_COUNT {
            return false;
        }
        self.set(side, k, c + 1);
        true
    }
}

/// The number of buckets of a range.
pub(super) fn span(r: Range) -> usize {
    r.map_or(0, |(lo, hi)| (i64::from(hi) - i64::from(lo) + 1) as usize)
}

/// The full form's store: up to 2048 `u64` buckets per sign.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WideCounts {
    positive: (i32, alloc::vec::Vec<u64>),
    negative: (i32, alloc::vec::Vec<u64>),
}

#[cfg(feature = "alloc")]
impl WideCounts {
    /// The most buckets one sign may hold.
    pub const LIMIT: usize = 2048;

    fn side(&self, side: Side) -> &(i32, alloc::vec::Vec<u64>) {
        match side {
            Side::Positive => &self.positive,
            Side::Negative => &self.negative,
        }
    }
}

#[cfg(feature = "alloc")]
impl Store for WideCounts {
    type Count = u64;
    const MAX_COUNT: u64 = u64::MAX;
    const MAX_ZERO: u64 = u64::MAX;
    fn fits(positive: usize, negative: usize) -> bool {
        positive <= Self::LIMIT && negative <= Self::LIMIT
    }
    fn zeroed(positive: Range, negative: Range) -> Option<Self> {
        if !Self::fits(span(positive), span(negative)) {
            return None;
        }
        let side = |r: Range| (r.map_or(0, |r| r.0), alloc::vec![0; span(r)]);
        Some(WideCounts {
            positive: side(positive),
            negative: side(negative),
        })
    }
    fn from_counts(positive: (i32, &[u64]), negative: (i32, &[u64])) -> Option<Self> {
        Self::fits(positive.1.len(), negative.1.len()).then(|| WideCounts {
            positive: (positive.0, positive.1.to_vec()),
            negative: (negative.0, negative.1.to_vec()),
        })
    }
    fn range(&self, side: Side) -> Range {
        let (offset, counts) = self.side(side);
        (!counts.is_empty()).then(|| (*offset, offset + counts.len() as i32 - 1))
    }
    fn get(&self, side: Side, k: usize) -> u64 {
        self.side(side).1.get(k).copied().unwrap_or(0)
    }
    fn set(&mut self, side: Side, k: usize, c: u64) {
        let counts = match side {
            Side::Positive => &mut self.positive.1,
            Side::Negative => &mut self.negative.1,
        };
        if let Some(slot) = counts.get_mut(k) {
            *slot = c;
        }
    }
}

/// The device form's store: one array of [`SharedCounts::LIMIT`] `u8`
/// counts shared by both signs — negative buckets first, then positive ones
/// — so data of either sign, or of both, can use all of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedCounts {
    /// Negative buckets in `counts[..len[0]]`, positive ones after them;
    /// every count past the two is zero (so `==` compares contents).
    counts: [u8; SharedCounts::LIMIT],
    /// The first index of each sign, by [`Side`] as `usize`.
    offset: [i32; 2],
    /// The number of buckets of each sign, by [`Side`] as `usize`.
    len: [u16; 2],
}

impl SharedCounts {
    /// The most buckets both signs together may hold.
    pub const LIMIT: usize = 304;

    /// Where `side`'s buckets start in `counts`, how many and the first index.
    #[inline(always)]
    fn base(&self, side: Side) -> (usize, usize, i32) {
        let s = side as usize;
        (
            usize::from(self.len[0]) * s,
            usize::from(self.len[s]),
            self.offset[s],
        )
    }
}

impl SharedCounts {
    /// Where bucket `index` of `side` is held with room for one more count:
    /// its position in the shared array (`None`: not held, or full). The
    /// one lookup of both per-reading paths: [`Store::try_increment`], and
    /// `FixedSketch::place` with [`Self::bump`].
    #[inline(always)]
    pub(crate) fn slot(&self, side: Side, index: i32) -> Option<usize> {
        let (start, len, offset) = self.base(side);
        let k = index.wrapping_sub(offset) as u32 as usize;
        if k >= len {
            return None;
        }
        match self.counts.get(start + k) {
            Some(&c) if c < u8::MAX => Some(start + k),
            _ => None,
        }
    }

    /// Adds one to the count at `pos`, a position [`Self::slot`] returned.
    #[inline(always)]
    pub(crate) fn bump(&mut self, pos: usize) {
        if let Some(c) = self.counts.get_mut(pos) {
            *c = c.saturating_add(1);
        }
    }
}

impl Default for SharedCounts {
    fn default() -> Self {
        SharedCounts {
            counts: [0; SharedCounts::LIMIT],
            offset: [0; 2],
            len: [0; 2],
        }
    }
}

impl fmt::Debug for SharedCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, p) = (usize::from(self.len[0]), usize::from(self.len[1]));
        f.debug_struct("SharedCounts")
            .field("negative_offset", &self.offset[0])
            .field("negative", &self.counts.get(..n))
            .field("positive_offset", &self.offset[1])
            .field("positive", &self.counts.get(n..n + p))
            .finish()
    }
}

impl Store for SharedCounts {
    type Count = u8;
    const MAX_COUNT: u64 = u8::MAX as u64;
    const MAX_ZERO: u64 = u32::MAX as u64;
    fn fits(positive: usize, negative: usize) -> bool {
        positive + negative <= Self::LIMIT
    }
    fn zeroed(positive: Range, negative: Range) -> Option<Self> {
        let (p, n) = (span(positive), span(negative));
        if !Self::fits(p, n) {
            return None;
        }
        Some(SharedCounts {
            counts: [0; SharedCounts::LIMIT],
            offset: [negative.map_or(0, |r| r.0), positive.map_or(0, |r| r.0)],
            len: [n as u16, p as u16],
        })
    }
    fn from_counts(positive: (i32, &[u8]), negative: (i32, &[u8])) -> Option<Self> {
        let (n, p) = (negative.1.len(), positive.1.len());
        if !Self::fits(p, n) {
            return None;
        }
        let mut counts = [0; SharedCounts::LIMIT];
        counts.get_mut(..n)?.copy_from_slice(negative.1);
        counts.get_mut(n..n + p)?.copy_from_slice(positive.1);
        Some(SharedCounts {
            counts,
            offset: [negative.0, positive.0],
            len: [n as u16, p as u16],
        })
    }
    #[inline]
    fn range(&self, side: Side) -> Range {
        let (_, len, offset) = self.base(side);
        (len > 0).then(|| (offset, offset + len as i32 - 1))
    }
    #[inline]
    fn get(&self, side: Side, k: usize) -> u64 {
        let (start, len, _) = self.base(side);
        if k < len {
            self.counts.get(start + k).map_or(0, |&c| u64::from(c))
        } else {
            0
        }
    }
    #[inline]
    fn set(&mut self, side: Side, k: usize, c: u64) {
        let (start, len, _) = self.base(side);
        if k < len {
            if let Some(slot) = self.counts.get_mut(start + k) {
                *slot = u8::try_from(c).unwrap_or(u8::MAX);
            }
        }
    }
    /// The device's per-reading path: one range check and one increment.
    #[inline(always)]
    fn try_increment(&mut self, side: Side, index: i32) -> bool {
        match self.slot(side, index) {
            Some(pos) => {
                self.bump(pos);
                true
            }
            None => false,
        }
    }
}
