//! The mergeable quantile sketch: a base-2 exponential histogram of the real
//! readings.
//!
//! # Design
//! Readings arrive as [`Bucket`]s: the index at [`START_SCALE`] of the real
//! value v·q (see [`crate::index`]), so bucket *i* at scale *s* holds exactly
//! the readings in (2^(i·2^−s), 2^((i+1)·2^−s)], as in an OpenTelemetry
//! exponential histogram. Zero has its own count; positive and negative
//! magnitudes go to dense bucket arrays (offset + counts) in a [`Store`]. One
//! scale is shared by both signs.
//!
//! **Invariants**, checked when a sketch is decoded from the wire:
//! - `MIN_SCALE ≤ scale ≤ START_SCALE`, the bucket arrays fit the store and
//!   no count exceeds its limit;
//! - every index lies in the range any reading of any quantum can reach;
//! - canonical form: a sign's bucket array is empty (offset 0) or has non-zero
//!   first and last counts.
//!
//! **Scale rule.** A sketch is always at the *highest* scale ≤ the scales of
//! its inputs at which its bucket arrays fit the store. Spans shrink
//! monotonically as the scale drops, so this scale depends only on the
//! multiset of values and the inputs' scales — never on insertion or merge
//! order. Together with canonical form this makes merge exact, commutative and
//! associative under `==`, and makes the merge of any split equal to the sketch
//! of the whole.
//!
//! Every mutation computes its result before touching `self`, so an overflow
//! error leaves the sketch unchanged.

mod store;
mod wire;

#[cfg(feature = "alloc")]
pub use store::WideCounts;
pub use store::{Range, SharedCounts, Side, Store};
pub use wire::WireStore;

use crate::index::{highest_possible, lowest_possible, Bucket, MIN_SCALE, SKETCH_SCALE};
use store::span;

/// The scale a sketch starts at, its highest ([`crate::index::SKETCH_SCALE`]).
pub const START_SCALE: i8 = SKETCH_SCALE;

/// A bucket or total count would exceed what the store can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sketch bucket count overflow")]
pub struct SketchOverflow;

/// A base-2 exponential histogram of real readings, generic over the storage
/// of its bucket counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpHistogram<S> {
    scale: i8,
    zero: u64,
    store: S,
}

/// The full sketch used by agent and collector: up to 2048 `u64` buckets per sign.
#[cfg(feature = "alloc")]
pub type Sketch = ExpHistogram<WideCounts>;

/// The fixed-capacity sketch of the device form: 304 `u8` buckets shared by
/// both signs.
pub type FixedSketch = ExpHistogram<SharedCounts>;

/// Where [`FixedSketch::place`] counts a reading: the zero count.
// Unused where `FixedSummary::try_insert` is the compact stand-in.
#[cfg_attr(
    not(any(feature = "alloc", all(target_arch = "arm", target_has_atomic = "32"))),
    allow(dead_code)
)]
const ZERO_SLOT: usize = usize::MAX;

#[cfg_attr(
    not(any(feature = "alloc", all(target_arch = "arm", target_has_atomic = "32"))),
    allow(dead_code)
)]
impl FixedSketch {
    /// Where the reading of `bucket` can be counted in place (its bucket
    /// held at the current scale with room, or the zero count below its
    /// limit), without changing anything; `None`: [`Self::insert_above`]
    /// must decide. For the device's per-reading path: the lookup comes
    /// before the moments, the count after them.
    #[inline(always)]
    pub(crate) fn place(&self, bucket: Bucket) -> Option<usize> {
        let shift = START_SCALE - self.scale;
        match bucket {
            Bucket::Zero => (self.zero < SharedCounts::MAX_ZERO).then_some(ZERO_SLOT),
            Bucket::Positive(i) => self.store.slot(Side::Positive, i >> shift),
            Bucket::Negative(i) => self.store.slot(Side::Negative, i >> shift),
        }
    }

    /// Counts one reading at `slot`, a place [`Self::place`] returned.
    #[inline(always)]
    pub(crate) fn count_at(&mut self, slot: usize) {
        if slot == ZERO_SLOT {
            self.zero += 1;
        } else {
            self.store.bump(slot);
        }
    }
}

/// One sign's buckets of a sketch, read-only.
#[derive(Debug, Clone, Copy)]
pub struct Buckets<'a, S> {
    store: &'a S,
    side: Side,
}

impl<'a, S: Store> Buckets<'a, S> {
    /// The inclusive index range held, if any.
    pub fn range(&self) -> Range {
        self.store.range(self.side)
    }

    /// Index of the first bucket (0 when empty).
    pub fn offset(&self) -> i32 {
        self.range().map_or(0, |r| r.0)
    }

    /// The number of buckets held (including empty ones between).
    pub fn len(&self) -> usize {
        span(self.range())
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.range().is_none()
    }

    /// The counts of buckets `offset, offset + 1, …`.
    pub fn counts(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + 'a {
        let (store, side) = (self.store, self.side);
        (0..self.len()).map(move |k| store.get(side, k))
    }

    /// `(index, count)` of every non-empty bucket, ascending.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + 'a {
        let offset = self.offset();
        self.counts()
            .enumerate()
            .map(move |(k, c)| (offset + k as i32, c))
            .filter(|&(_, c)| c != 0)
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.counts().fold(0u64, |acc, c| acc.saturating_add(c))
    }
}

/// Range `r` after lowering the scale by `shift`.
fn shifted(r: Range, shift: u8) -> Range {
    r.map(|(lo, hi)| (lo >> shift, hi >> shift))
}

/// Whether range `outer` contains range `inner` (an empty inner always fits).
fn covers(outer: Range, inner: Range) -> bool {
    match (outer, inner) {
        (_, None) => true,
        (Some((l1, h1)), Some((l2, h2))) => l1 <= l2 && h2 <= h1,
        (None, Some(_)) => false,
    }
}

fn union(a: Range, b: Range) -> Range {
    match (a, b) {
        (Some((l1, h1)), Some((l2, h2))) => Some((l1.min(l2), h1.max(h2))),
        (x, None) | (None, x) => x,
    }
}

const SIDES: [Side; 2] = [Side::Positive, Side::Negative];

/// The lowest and highest index any reading of any quantum can have, per
/// scale from `MIN_SCALE` up (computed at compile time).
const POSSIBLE: [(i32, i32); (START_SCALE - MIN_SCALE + 1) as usize] = {
    let mut t = [(0, 0); (START_SCALE - MIN_SCALE + 1) as usize];
    let mut k = 0;
    while k < t.len() {
        let scale = MIN_SCALE + k as i8;
        t[k] = (lowest_possible(scale), highest_possible(scale));
        k += 1;
    }
    t
};

impl<S: Store> Default for ExpHistogram<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Store> ExpHistogram<S> {
    /// An empty sketch at [`START_SCALE`].
    pub fn new() -> Self {
        ExpHistogram {
            scale: START_SCALE,
            zero: 0,
            store: S::default(),
        }
    }

    /// The current scale.
    pub fn scale(&self) -> i8 {
        self.scale
    }

    /// The count of zero values.
    pub fn zero_count(&self) -> u64 {
        self.zero
    }

    /// The buckets of `side`.
    pub fn side(&self, side: Side) -> Buckets<'_, S> {
        Buckets {
            store: &self.store,
            side,
        }
    }

    /// The positive buckets.
    pub fn positive(&self) -> Buckets<'_, S> {
        self.side(Side::Positive)
    }

    /// The negative buckets (indexed by magnitude).
    pub fn negative(&self) -> Buckets<'_, S> {
        self.side(Side::Negative)
    }

    /// The number of values held.
    pub fn count(&self) -> u64 {
        self.zero
            .saturating_add(self.positive().total())
            .saturating_add(self.negative().total())
    }

    /// Adds one reading, given as its bucket at [`START_SCALE`] (from
    /// [`crate::index::QuantumIndex::bucket`] or
    /// [`crate::index::DeviceIndex::bucket`]). On overflow the sketch is
    /// unchanged.
    #[inline]
    pub fn insert(&mut self, bucket: Bucket) -> Result<(), SketchOverflow> {
        self.insert_above(bucket, MIN_SCALE)
    }

    /// As [`Self::insert`], but fails (leaving the sketch unchanged) rather
    /// than lower the scale below `floor`: for a device that would rather
    /// send what it has and start afresh than lose resolution.
    #[inline]
    pub fn insert_above(&mut self, bucket: Bucket, floor: i8) -> Result<(), SketchOverflow> {
        if self.try_increment(bucket) {
            return Ok(());
        }
        match bucket {
            Bucket::Zero => Err(SketchOverflow),
            Bucket::Positive(i) => self.insert_slow(Side::Positive, i, floor),
            Bucket::Negative(i) => self.insert_slow(Side::Negative, i, floor),
        }
    }

    /// The common case of [`Self::insert`]: adds one to the bucket of
    /// `bucket` if it is held at the current scale and below its limit (or
    /// to the zero count); returns whether it did. When it returns `false`
    /// nothing changed and [`Self::insert_above`] decides (a new bucket, a
    /// lower scale, or an overflow).
    #[inline]
    pub fn try_increment(&mut self, bucket: Bucket) -> bool {
        let (side, index) = match bucket {
            Bucket::Zero => {
                if self.zero >= S::MAX_ZERO {
                    return false;
                }
                self.zero += 1;
                return true;
            }
            Bucket::Positive(i) => (Side::Positive, i),
            Bucket::Negative(i) => (Side::Negative, i),
        };
        self.store
            .try_increment(side, index >> (START_SCALE - self.scale))
    }

    #[cold]
    fn insert_slow(&mut self, side: Side, index: i32, floor: i8) -> Result<(), SketchOverflow> {
        let mut scale = self.scale;
        loop {
            let d = (self.scale - scale) as u8;
            let i = index >> (START_SCALE - scale);
            let [p, n] = SIDES.map(|s| {
                let r = shifted(self.store.range(s), d);
                if s == side {
                    union(r, Some((i, i)))
                } else {
                    r
                }
            });
            if S::fits(span(p), span(n)) || scale == MIN_SCALE {
                break;
            }
            scale -= 1;
        }
        if scale < floor {
            return Err(SketchOverflow);
        }
        let d = (self.scale - scale) as u8;
        let i = index >> (START_SCALE - scale);
        self.store = rebuild(&[(self, d)], Some((side, i)))?;
        self.scale = scale;
        Ok(())
    }

    /// Merges `other` into `self`: both are lowered to the common scale (and
    /// further if the union would not fit) and counts are added.
    /// On overflow `self` is unchanged.
    pub fn merge(&mut self, other: &Self) -> Result<(), SketchOverflow> {
        let zero = self
            .zero
            .checked_add(other.zero)
            .filter(|&z| z <= S::MAX_ZERO)
            .ok_or(SketchOverflow)?;
        if self.scale == other.scale
            && SIDES
                .iter()
                .all(|&s| covers(self.store.range(s), other.store.range(s)))
        {
            // Fast path, no rebuild: `other` fits inside `self`'s buckets.
            let fits = SIDES.iter().all(|&s| {
                let lo = self.store.range(s).map_or(0, |r| r.0);
                other.side(s).iter().all(|(i, c)| {
                    self.store
                        .get(s, (i - lo) as usize)
                        .checked_add(c)
                        .is_some_and(|sum| sum <= S::MAX_COUNT)
                })
            });
            if !fits {
                return Err(SketchOverflow);
            }
            for s in SIDES {
                let lo = self.store.range(s).map_or(0, |r| r.0);
                for (i, c) in other.side(s).iter() {
                    let k = (i - lo) as usize;
                    self.store.set(s, k, self.store.get(s, k) + c);
                }
            }
            self.zero = zero;
            return Ok(());
        }
        *self = self.merged_with(other)?;
        Ok(())
    }

    /// The merge of `self` and `other`, leaving both unchanged.
    pub fn merged_with(&self, other: &Self) -> Result<Self, SketchOverflow> {
        let zero = self
            .zero
            .checked_add(other.zero)
            .filter(|&z| z <= S::MAX_ZERO)
            .ok_or(SketchOverflow)?;
        let mut scale = self.scale.min(other.scale);
        loop {
            let (da, db) = ((self.scale - scale) as u8, (other.scale - scale) as u8);
            let [p, n] = SIDES.map(|s| {
                union(
                    shifted(self.store.range(s), da),
                    shifted(other.store.range(s), db),
                )
            });
            if S::fits(span(p), span(n)) || scale == MIN_SCALE {
                break;
            }
            scale -= 1;
        }
        let (da, db) = ((self.scale - scale) as u8, (other.scale - scale) as u8);
        Ok(ExpHistogram {
            scale,
            zero,
            store: rebuild(&[(self, da), (other, db)], None)?,
        })
    }

    /// This sketch lowered to `scale` (no change if it is already at or below
    /// it). Lowering only merges buckets, so it fails only if a merged count
    /// would exceed the store's limit; then it returns an unchanged copy.
    pub fn downscaled_to(&self, scale: i8) -> Self {
        let scale = scale.clamp(MIN_SCALE, self.scale);
        let d = (self.scale - scale) as u8;
        match rebuild(&[(self, d)], None) {
            Ok(store) => ExpHistogram {
                scale,
                zero: self.zero,
                store,
            },
            Err(_) => self.clone(),
        }
    }

    /// Copies this sketch into another storage form (e.g. fixed → full).
    /// Fails if the target cannot hold it.
    pub fn convert<T: Store>(&self) -> Result<ExpHistogram<T>, SketchOverflow> {
        if self.zero > T::MAX_ZERO {
            return Err(SketchOverflow);
        }
        let mut store = T::zeroed(
            self.store.range(Side::Positive),
            self.store.range(Side::Negative),
        )
        .ok_or(SketchOverflow)?;
        for s in SIDES {
            for (k, c) in self.side(s).counts().enumerate() {
                if c > T::MAX_COUNT {
                    return Err(SketchOverflow);
                }
                store.set(s, k, c);
            }
        }
        Ok(ExpHistogram {
            scale: self.scale,
            zero: self.zero,
            store,
        })
    }

    /// A sketch from its wire fields — scale, zero count, and each sign's
    /// offset and counts — checked as a decoded one is ([`Self::validate`]).
    /// For decoders that parse the wire form by hand (the firmware's own,
    /// smaller than serde's).
    pub fn from_parts(
        scale: i8,
        zero: u64,
        positive: (i32, &[S::Count]),
        negative: (i32, &[S::Count]),
    ) -> Result<Self, &'static str> {
        for (offset, counts) in [positive, negative] {
            if counts.is_empty() && offset != 0 {
                return Err("empty bucket array with a non-zero offset");
            }
            if i64::from(offset) + counts.len() as i64 > i64::from(i32::MAX) {
                return Err("bucket index out of range");
            }
        }
        let store =
            S::from_counts(positive, negative).ok_or("more buckets than the form allows")?;
        let h = ExpHistogram { scale, zero, store };
        h.validate()?;
        Ok(h)
    }

    /// Checks the invariants listed in the module documentation.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(MIN_SCALE..=START_SCALE).contains(&self.scale) {
            return Err("sketch scale out of range");
        }
        if self.zero > S::MAX_ZERO {
            return Err("zero count exceeds the form's limit");
        }
        let k = (self.scale - MIN_SCALE) as usize;
        let (lowest, highest) = POSSIBLE.get(k).copied().unwrap_or((0, -1));
        for s in SIDES {
            if let Some((lo, hi)) = self.store.range(s) {
                let last = (hi - lo) as usize;
                if self.store.get(s, 0) == 0 || self.store.get(s, last) == 0 {
                    return Err("bucket array not trimmed (zero count at an end)");
                }
                if lo < lowest || hi > highest {
                    return Err("bucket index outside the possible range at this scale");
                }
                for k in 0..=last {
                    if self.store.get(s, k) > S::MAX_COUNT {
                        return Err("bucket count exceeds the form's limit");
                    }
                }
            }
        }
        Ok(())
    }

    /// The estimated value at quantile `q` ∈ [0, 1], taking the element of
    /// rank ⌊q·(n−1)⌋, with the bucket it came from (`None` for the zero
    /// count); `None` for an empty sketch or a `q` outside [0, 1]. The
    /// relative error is at most
    /// [`crate::index::relative_error`]`(self.scale())`.
    #[cfg(feature = "std")]
    pub fn quantile(&self, q: f64) -> Option<(f64, Option<Bucket>)> {
        use crate::index::bucket_estimate;
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * (n - 1) as f64).floor() as u64).min(n - 1);
        let mut seen = 0u64;
        for (index, c) in self.negative().iter().rev() {
            seen += c;
            if rank < seen {
                let b = Bucket::Negative(index);
                return Some((-bucket_estimate(index, self.scale), Some(b)));
            }
        }
        seen += self.zero;
        if rank < seen {
            return Some((0.0, None));
        }
        for (index, c) in self.positive().iter() {
            seen += c;
            if rank < seen {
                let b = Bucket::Positive(index);
                return Some((bucket_estimate(index, self.scale), Some(b)));
            }
        }
        None
    }
}

/// Builds the store holding `parts` (each lowered by its shift) plus one
/// reading in `extra` (a side and an index at the target scale).
fn rebuild<S: Store>(
    parts: &[(&ExpHistogram<S>, u8)],
    extra: Option<(Side, i32)>,
) -> Result<S, SketchOverflow> {
    let [p, n] = SIDES.map(|s| {
        let mut r = extra.filter(|e| e.0 == s).map(|(_, i)| (i, i));
        for (h, d) in parts {
            r = union(r, shifted(h.store.range(s), *d));
        }
        r
    });
    let mut out = S::zeroed(p, n).ok_or(SketchOverflow)?;
    let mut add = |s: Side, index: i32, c: u64| -> Result<(), SketchOverflow> {
        let lo = out.range(s).map_or(0, |r| r.0);
        let k = (index - lo) as usize;
        let sum = out
            .get(s, k)
            .checked_add(c)
            .filter(|&sum| sum <= S::MAX_COUNT)
            .ok_or(SketchOverflow)?;
        out.set(s, k, sum);
        Ok(())
    };
    for (h, d) in parts {
        for s in SIDES {
            for (index, c) in h.side(s).iter() {
                add(s, index >> d, c)?;
            }
        }
    }
    if let Some((s, i)) = extra {
        add(s, i, 1)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
