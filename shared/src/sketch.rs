//! The mergeable quantile sketch: a base-2 exponential histogram.
//!
//! # Design
//! Values are integer ticks (see [`crate::quantum`]). Zero has its own count;
//! positive and negative magnitudes go to dense bucket arrays (`offset` +
//! counts) indexed as in [`crate::index`]. One scale is shared by both signs.
//!
//! **Invariants**, checked when a sketch is decoded from the wire:
//! - `MIN_SCALE ≤ scale ≤ MAX_SCALE`, each sign holds at most
//!   [`CountStore::LIMIT`] buckets and no count exceeds
//!   [`CountStore::MAX_COUNT`];
//! - canonical form: a sign's bucket array is empty (offset 0) or has non-zero
//!   first and last counts.
//!
//! **Scale rule.** A sketch is always at the *highest* scale ≤ the scales of
//! its inputs at which every bucket index of the data fits the limit. Spans
//! shrink monotonically as the scale drops, so this scale depends only on the
//! multiset of values and the inputs' scales — never on insertion or merge
//! order. Together with canonical form this makes merge exact, commutative and
//! associative under `==`, and makes the merge of any split equal to the sketch
//! of the whole.
//!
//! Every mutation computes its result before touching `self`, so an overflow
//! error leaves the sketch unchanged.

use core::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::index::{index_max_scale, MAX_SCALE, MIN_SCALE};

/// Storage for one sign's bucket counts.
pub trait CountStore: Clone + PartialEq + Eq + Default + fmt::Debug {
    /// The most buckets one sign may hold.
    const LIMIT: usize;
    /// The largest count one bucket (or the zero count) may hold.
    const MAX_COUNT: u64;
    /// A store of `len` (≤ `LIMIT`) zero counts.
    fn zeroed(len: usize) -> Self;
    /// The number of buckets held.
    fn len(&self) -> usize;
    /// Whether no bucket is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The count at `i` (0 when out of range).
    fn get(&self, i: usize) -> u64;
    /// Sets the count at `i` (< `len`) to `c` (≤ `MAX_COUNT`).
    fn set(&mut self, i: usize, c: u64);
}

#[cfg(feature = "alloc")]
impl CountStore for alloc::vec::Vec<u64> {
    const LIMIT: usize = 2048;
    const MAX_COUNT: u64 = u64::MAX;
    fn zeroed(len: usize) -> Self {
        alloc::vec![0; len]
    }
    fn len(&self) -> usize {
        alloc::vec::Vec::len(self)
    }
    fn get(&self, i: usize) -> u64 {
        self.as_slice().get(i).copied().unwrap_or(0)
    }
    fn set(&mut self, i: usize, c: u64) {
        if let Some(slot) = self.as_mut_slice().get_mut(i) {
            *slot = c;
        }
    }
}

/// The fixed-capacity store of the microcontroller form: 64 `u16` counts.
pub type FixedCounts = heapless::Vec<u16, 64, u8>;

impl CountStore for FixedCounts {
    const LIMIT: usize = 64;
    const MAX_COUNT: u64 = u16::MAX as u64;
    fn zeroed(len: usize) -> Self {
        let mut v = heapless::Vec::new();
        // Cannot fail: the length is clamped to the capacity.
        let _ = v.resize(len.min(Self::LIMIT), 0);
        v
    }
    // The accessors are on the device's per-reading path: inlined across
    // crates so the bucket increment is a few instructions, not three calls.
    #[inline]
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    #[inline]
    fn get(&self, i: usize) -> u64 {
        self.as_slice().get(i).map_or(0, |&c| u64::from(c))
    }
    #[inline]
    fn set(&mut self, i: usize, c: u64) {
        if let Some(slot) = self.as_mut_slice().get_mut(i) {
            *slot = u16::try_from(c).unwrap_or(u16::MAX);
        }
    }
}

/// A bucket or total count would exceed what the store can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sketch bucket count overflow")]
pub struct SketchOverflow;

/// One sign's dense bucket array.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Buckets<S> {
    /// Index of the first bucket.
    pub offset: i32,
    /// Counts of buckets `offset, offset + 1, …`.
    pub counts: S,
}

impl<S: CountStore> Buckets<S> {
    /// The inclusive index range held, if any.
    pub fn range(&self) -> Option<(i32, i32)> {
        (!self.counts.is_empty()).then(|| (self.offset, self.offset + self.counts.len() as i32 - 1))
    }

    /// `(index, count)` of every non-empty bucket, ascending.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        (0..self.counts.len())
            .map(move |k| (self.offset + k as i32, self.counts.get(k)))
            .filter(|&(_, c)| c != 0)
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        (0..self.counts.len()).fold(0u64, |acc, k| acc.saturating_add(self.counts.get(k)))
    }

    /// Adds one to bucket `index` if it lies in the held range and the count
    /// has room. Returns whether it did.
    #[inline]
    fn try_increment(&mut self, index: i32) -> bool {
        let k = index.wrapping_sub(self.offset);
        if k < 0 || k as usize >= self.counts.len() {
            return false;
        }
        let c = self.counts.get(k as usize);
        if c >= S::MAX_COUNT {
            return false;
        }
        self.counts.set(k as usize, c + 1);
        true
    }

    /// Whether adding `other`'s counts (whose range lies within ours) stays
    /// within `MAX_COUNT`.
    fn can_add(&self, other: &Buckets<S>) -> bool {
        other.iter().all(|(index, c)| {
            let k = (index - self.offset) as usize;
            self.counts
                .get(k)
                .checked_add(c)
                .is_some_and(|s| s <= S::MAX_COUNT)
        })
    }

    /// Adds `other`'s counts, whose range lies within ours and which
    /// [`Self::can_add`] approved.
    fn add_within(&mut self, other: &Buckets<S>) {
        for (index, c) in other.iter() {
            let k = (index - self.offset) as usize;
            self.counts.set(k, self.counts.get(k).saturating_add(c));
        }
    }

    fn validate(&self) -> Result<(), &'static str> {
        if self.counts.len() > S::LIMIT {
            return Err("more buckets than the form allows");
        }
        if self.counts.is_empty() {
            return if self.offset == 0 {
                Ok(())
            } else {
                Err("empty bucket array with a non-zero offset")
            };
        }
        if self.counts.get(0) == 0 || self.counts.get(self.counts.len() - 1) == 0 {
            return Err("bucket array not trimmed (zero count at an end)");
        }
        let hi = i64::from(self.offset) + self.counts.len() as i64 - 1;
        if i64::from(self.offset) < -1 || hi > i64::from(index_max_scale(u64::MAX)) {
            return Err("bucket index outside the possible range");
        }
        Ok(())
    }
}

/// Range of `b` after lowering the scale by `shift`.
fn shifted(range: Option<(i32, i32)>, shift: u8) -> Option<(i32, i32)> {
    range.map(|(lo, hi)| (lo >> shift, hi >> shift))
}

/// Whether range `outer` contains range `inner` (an empty inner always fits).
fn covers(outer: Option<(i32, i32)>, inner: Option<(i32, i32)>) -> bool {
    match (outer, inner) {
        (_, None) => true,
        (Some((l1, h1)), Some((l2, h2))) => l1 <= l2 && h2 <= h1,
        (None, Some(_)) => false,
    }
}

fn union(a: Option<(i32, i32)>, b: Option<(i32, i32)>) -> Option<(i32, i32)> {
    match (a, b) {
        (Some((l1, h1)), Some((l2, h2))) => Some((l1.min(l2), h1.max(h2))),
        (x, None) | (None, x) => x,
    }
}

fn span(r: Option<(i32, i32)>) -> usize {
    r.map_or(0, |(lo, hi)| (hi - lo + 1) as usize)
}

/// Builds the bucket array holding `parts` (each lowered by its shift) plus
/// `extra` (an index at the target scale and a count).
fn rebuild<S: CountStore>(
    parts: &[(&Buckets<S>, u8)],
    extra: Option<(i32, u64)>,
) -> Result<Buckets<S>, SketchOverflow> {
    let mut range = extra.map(|(i, _)| (i, i));
    for (b, d) in parts {
        range = union(range, shifted(b.range(), *d));
    }
    let Some((lo, hi)) = range else {
        return Ok(Buckets::default());
    };
    let mut out = Buckets {
        offset: lo,
        counts: S::zeroed((hi - lo + 1) as usize),
    };
    let mut add = |index: i32, c: u64| -> Result<(), SketchOverflow> {
        let k = (index - lo) as usize;
        let sum = out
            .counts
            .get(k)
            .checked_add(c)
            .filter(|&s| s <= S::MAX_COUNT)
            .ok_or(SketchOverflow)?;
        out.counts.set(k, sum);
        Ok(())
    };
    for (b, d) in parts {
        for (index, c) in b.iter() {
            add(index >> d, c)?;
        }
    }
    if let Some((index, c)) = extra {
        add(index, c)?;
    }
    Ok(out)
}

/// A base-2 exponential histogram over integer ticks, generic over the
/// storage of its bucket counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpHistogram<S> {
    scale: i8,
    zero: u64,
    positive: Buckets<S>,
    negative: Buckets<S>,
}

/// The full sketch used by agent and collector: up to 2048 `u64` buckets per sign.
#[cfg(feature = "alloc")]
pub type Sketch = ExpHistogram<alloc::vec::Vec<u64>>;

/// The fixed-capacity sketch of the device form: 64 `u16` buckets per sign.
pub type FixedSketch = ExpHistogram<FixedCounts>;

impl<S: CountStore> Default for ExpHistogram<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: CountStore> ExpHistogram<S> {
    /// An empty sketch at [`MAX_SCALE`].
    pub fn new() -> Self {
        ExpHistogram {
            scale: MAX_SCALE,
            zero: 0,
            positive: Buckets::default(),
            negative: Buckets::default(),
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

    /// The positive buckets.
    pub fn positive(&self) -> &Buckets<S> {
        &self.positive
    }

    /// The negative buckets (indexed by magnitude).
    pub fn negative(&self) -> &Buckets<S> {
        &self.negative
    }

    /// The number of values held.
    pub fn count(&self) -> u64 {
        self.zero
            .saturating_add(self.positive.total())
            .saturating_add(self.negative.total())
    }

    /// Adds one value. On overflow the sketch is unchanged.
    #[inline]
    pub fn insert(&mut self, v: i64) -> Result<(), SketchOverflow> {
        if v == 0 {
            if self.zero >= S::MAX_COUNT {
                return Err(SketchOverflow);
            }
            self.zero += 1;
            return Ok(());
        }
        let index6 = index_max_scale(v.unsigned_abs());
        let index = index6 >> (MAX_SCALE - self.scale);
        let side = if v > 0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        if side.try_increment(index) {
            return Ok(());
        }
        self.insert_slow(v > 0, index6)
    }

    #[cold]
    fn insert_slow(&mut self, positive: bool, index6: i32) -> Result<(), SketchOverflow> {
        let mut scale = self.scale;
        loop {
            let d = (self.scale - scale) as u8;
            let i = index6 >> (MAX_SCALE - scale);
            let (same, other) = if positive {
                (&self.positive, &self.negative)
            } else {
                (&self.negative, &self.positive)
            };
            let fits = span(union(shifted(same.range(), d), Some((i, i)))) <= S::LIMIT
                && span(shifted(other.range(), d)) <= S::LIMIT;
            if fits || scale == MIN_SCALE {
                break;
            }
            scale -= 1;
        }
        let d = (self.scale - scale) as u8;
        let i = index6 >> (MAX_SCALE - scale);
        let (same, other) = if positive {
            (&self.positive, &self.negative)
        } else {
            (&self.negative, &self.positive)
        };
        let new_same = rebuild(&[(same, d)], Some((i, 1)))?;
        let new_other = if d == 0 {
            None
        } else {
            Some(rebuild(&[(other, d)], None)?)
        };
        let (same, other) = if positive {
            (&mut self.positive, &mut self.negative)
        } else {
            (&mut self.negative, &mut self.positive)
        };
        *same = new_same;
        if let Some(o) = new_other {
            *other = o;
        }
        self.scale = scale;
        Ok(())
    }

    /// Merges `other` into `self`: both are lowered to the common scale (and
    /// further if the union would exceed the limit) and counts are added.
    /// On overflow `self` is unchanged.
    pub fn merge(&mut self, other: &Self) -> Result<(), SketchOverflow> {
        if self.scale == other.scale
            && covers(self.positive.range(), other.positive.range())
            && covers(self.negative.range(), other.negative.range())
        {
            // Fast path, no allocation: `other` fits inside `self`'s buckets.
            let zero = self
                .zero
                .checked_add(other.zero)
                .filter(|&z| z <= S::MAX_COUNT)
                .ok_or(SketchOverflow)?;
            if !(self.positive.can_add(&other.positive) && self.negative.can_add(&other.negative)) {
                return Err(SketchOverflow);
            }
            self.positive.add_within(&other.positive);
            self.negative.add_within(&other.negative);
            self.zero = zero;
            return Ok(());
        }
        let merged = self.merged_with(other)?;
        *self = merged;
        Ok(())
    }

    /// The merge of `self` and `other`, leaving both unchanged.
    pub fn merged_with(&self, other: &Self) -> Result<Self, SketchOverflow> {
        let zero = self
            .zero
            .checked_add(other.zero)
            .filter(|&z| z <= S::MAX_COUNT)
            .ok_or(SketchOverflow)?;
        let mut scale = self.scale.min(other.scale);
        loop {
            let (da, db) = ((self.scale - scale) as u8, (other.scale - scale) as u8);
            let pos = union(
                shifted(self.positive.range(), da),
                shifted(other.positive.range(), db),
            );
            let neg = union(
                shifted(self.negative.range(), da),
                shifted(other.negative.range(), db),
            );
            if (span(pos) <= S::LIMIT && span(neg) <= S::LIMIT) || scale == MIN_SCALE {
                break;
            }
            scale -= 1;
        }
        let (da, db) = ((self.scale - scale) as u8, (other.scale - scale) as u8);
        Ok(ExpHistogram {
            scale,
            zero,
            positive: rebuild(&[(&self.positive, da), (&other.positive, db)], None)?,
            negative: rebuild(&[(&self.negative, da), (&other.negative, db)], None)?,
        })
    }

    /// This sketch lowered to `scale` (no change if it is already at or below it).
    pub fn downscaled_to(&self, scale: i8) -> Self {
        let scale = scale.clamp(MIN_SCALE, self.scale);
        let d = (self.scale - scale) as u8;
        // Lowering only merges buckets of one sign, so the sums cannot exceed
        // what the wider store held when summed — except in a u16 store, where
        // it saturates the total into one bucket; fall back to an unchanged copy.
        match (
            rebuild(&[(&self.positive, d)], None),
            rebuild(&[(&self.negative, d)], None),
        ) {
            (Ok(positive), Ok(negative)) => ExpHistogram {
                scale,
                zero: self.zero,
                positive,
                negative,
            },
            _ => self.clone(),
        }
    }

    /// Copies this sketch into another storage form (e.g. fixed → full).
    /// Fails if the target cannot hold it.
    pub fn convert<T: CountStore>(&self) -> Result<ExpHistogram<T>, SketchOverflow> {
        let copy = |b: &Buckets<S>| -> Result<Buckets<T>, SketchOverflow> {
            if b.counts.len() > T::LIMIT {
                return Err(SketchOverflow);
            }
            let mut counts = T::zeroed(b.counts.len());
            for k in 0..b.counts.len() {
                let c = b.counts.get(k);
                if c > T::MAX_COUNT {
                    return Err(SketchOverflow);
                }
                counts.set(k, c);
            }
            Ok(Buckets {
                offset: b.offset,
                counts,
            })
        };
        if self.zero > T::MAX_COUNT {
            return Err(SketchOverflow);
        }
        Ok(ExpHistogram {
            scale: self.scale,
            zero: self.zero,
            positive: copy(&self.positive)?,
            negative: copy(&self.negative)?,
        })
    }

    /// A sketch from its wire fields, checked as a decoded one is
    /// ([`Self::validate`]). For decoders that parse the wire form by hand
    /// (the firmware's own, smaller than serde's).
    pub fn from_parts(
        scale: i8,
        zero: u64,
        positive: Buckets<S>,
        negative: Buckets<S>,
    ) -> Result<Self, &'static str> {
        let h = ExpHistogram {
            scale,
            zero,
            positive,
            negative,
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the invariants listed in the module documentation.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&self.scale) {
            return Err("sketch scale out of range");
        }
        if self.zero > S::MAX_COUNT {
            return Err("zero count exceeds the form's limit");
        }
        self.positive.validate()?;
        self.negative.validate()?;
        for k in 0..self.positive.counts.len().max(self.negative.counts.len()) {
            if self.positive.counts.get(k) > S::MAX_COUNT
                || self.negative.counts.get(k) > S::MAX_COUNT
            {
                return Err("bucket count exceeds the form's limit");
            }
        }
        // At a scale below MAX_SCALE the possible index range shrinks too.
        let top = index_max_scale(u64::MAX) >> (MAX_SCALE - self.scale);
        for r in [self.positive.range(), self.negative.range()]
            .into_iter()
            .flatten()
        {
            if r.1 > top {
                return Err("bucket index outside the possible range at this scale");
            }
        }
        Ok(())
    }

    /// The estimated value (in ticks) at quantile `q` ∈ [0, 1], taking the
    /// element of rank ⌊q·(n−1)⌋; `None` for an empty sketch or a `q` outside
    /// [0, 1]. The relative error is at most
    /// [`crate::index::relative_error`]`(self.scale())`.
    #[cfg(feature = "std")]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        use crate::index::bucket_estimate;
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * (n - 1) as f64).floor() as u64).min(n - 1);
        let mut seen = 0u64;
        for (index, c) in self.negative.iter().rev() {
            seen += c;
            if rank < seen {
                return Some(-bucket_estimate(index, self.scale));
            }
        }
        seen += self.zero;
        if rank < seen {
            return Some(0.0);
        }
        for (index, c) in self.positive.iter() {
            seen += c;
            if rank < seen {
                return Some(bucket_estimate(index, self.scale));
            }
        }
        None
    }
}

/// The wire mirror of [`ExpHistogram`], validated into it on decode.
#[derive(Deserialize)]
struct RawHistogram<S> {
    scale: i8,
    zero: u64,
    positive: Buckets<S>,
    negative: Buckets<S>,
}

impl<'de, S: CountStore + Deserialize<'de>> Deserialize<'de> for ExpHistogram<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawHistogram::<S>::deserialize(d)?;
        Self::from_parts(raw.scale, raw.zero, raw.positive, raw.negative)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_counts_by_sign_and_zero() {
        let mut s = Sketch::new();
        for v in [-5, 0, 0, 3, 3, 1000] {
            s.insert(v).unwrap();
        }
        assert_eq!(s.count(), 6);
        assert_eq!(s.zero_count(), 2);
        assert_eq!(s.negative().total(), 1);
        assert_eq!(s.positive().total(), 3);
        assert_eq!(s.scale(), MAX_SCALE);
    }

    #[test]
    fn wide_range_lowers_scale_instead_of_dropping() {
        let mut s = FixedSketch::new();
        for e in 0..60 {
            s.insert(1i64 << e).unwrap();
            s.insert(-(3i64 << e)).unwrap();
        }
        assert_eq!(s.count(), 120);
        assert!(s.scale() < 1, "scale {}", s.scale());
        assert!(s.positive().counts.len() <= 64 && s.negative().counts.len() <= 64);
        s.validate().unwrap();
    }

    #[test]
    fn fixed_bucket_overflow_is_reported_and_leaves_state() {
        let mut s = FixedSketch::new();
        for _ in 0..u16::MAX {
            s.insert(7).unwrap();
        }
        let before = s.clone();
        assert_eq!(s.insert(7), Err(SketchOverflow));
        assert_eq!(s, before);
        let mut t = s.clone();
        assert_eq!(t.merge(&before), Err(SketchOverflow));
        assert_eq!(t, before);
    }

    #[test]
    fn decode_rejects_non_canonical_and_out_of_range() {
        let bad = r#"{"scale":6,"zero":0,"positive":{"offset":3,"counts":[0,1]},"negative":{"offset":0,"counts":[]}}"#;
        assert!(serde_json::from_str::<Sketch>(bad).is_err());
        let bad_scale = r#"{"scale":9,"zero":0,"positive":{"offset":0,"counts":[]},"negative":{"offset":0,"counts":[]}}"#;
        assert!(serde_json::from_str::<Sketch>(bad_scale).is_err());
        let too_many = format!(
            r#"{{"scale":6,"zero":0,"positive":{{"offset":0,"counts":[{}]}},"negative":{{"offset":0,"counts":[]}}}}"#,
            vec!["1"; 65].join(",")
        );
        assert!(serde_json::from_str::<FixedSketch>(&too_many).is_err());
        assert!(serde_json::from_str::<Sketch>(&too_many).is_ok());
    }
}
