//! The fixed-capacity summary of the microcontroller form.
//!
//! # Design
//! Same algebra as [`crate::summary::Summary`], in at most 512 bytes and with
//! no allocation: values are `i32` ticks, event times are `u32` milliseconds
//! from the start of the window the enclosing frame names, the moments are
//! kept relative to a per-channel *reference* offset r — Σ(v−r) in `i64`,
//! Σ(v−r)² in `u64` — which keeps them small when readings hover around a
//! typical value, and the sketch holds 304 `u8` buckets shared by both
//! signs, indexed through the channel's [`DeviceIndex`] (a boundary table of
//! its quantum in flash).
//!
//! Every overflow (a bucket past 255, a moment past its integer, and with
//! [`FixedSummary::insert_above`] a scale that would drop below a floor) is
//! reported as an error with the summary unchanged; the device then closes the
//! window early and starts a fresh summary, which the agent merges back
//! exactly. Two fixed summaries merge only if quantum and reference agree.
//! [`crate::summary::Summary::from_fixed`] widens losslessly.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::SummaryError;
use crate::extent::Extent;
use crate::index::{DeviceIndex, MIN_SCALE};
use crate::quantum::Quantum;
use crate::sketch::FixedSketch;

/// The device-side summary of one channel over one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixedSummary {
    quantum: Quantum,
    reference: i32,
    count: u32,
    sum: i64,
    sum_sq: u64,
    extent: Option<Extent<u32, i32>>,
    sketch: FixedSketch,
}

impl FixedSummary {
    /// The empty summary for a channel with `quantum` and `reference` offset.
    pub fn new(quantum: Quantum, reference: i32) -> Self {
        FixedSummary {
            quantum,
            reference,
            count: 0,
            sum: 0,
            sum_sq: 0,
            extent: None,
            sketch: FixedSketch::new(),
        }
    }

    /// Folds in a reading of `v` ticks taken `time` ms after the window start,
    /// bucketed by `index` (the table of this summary's quantum).
    /// On error nothing changes.
    #[inline]
    pub fn insert(&mut self, time: u32, v: i32, index: &DeviceIndex) -> Result<(), SummaryError> {
        self.insert_above(time, v, index, MIN_SCALE)
    }

    /// As [`Self::insert`], but refuses (an overflow error, nothing changed)
    /// a reading that would lower the sketch's scale below `floor`.
    #[inline]
    pub fn insert_above(
        &mut self,
        time: u32,
        v: i32,
        index: &DeviceIndex,
        floor: i8,
    ) -> Result<(), SummaryError> {
        if self.try_insert(time, v, index) {
            return Ok(());
        }
        self.insert_general(time, v, index, floor)
    }

    /// The device's per-reading path: folds in the reading if that needs no
    /// decision — the summary already holds a reading, the quantum matches,
    /// no count or moment overflows and the reading's bucket is already held
    /// at the current scale — and returns whether it did (`false`: nothing
    /// changed; [`Self::insert_above`] then takes the general path, which
    /// gives the same result whenever this one succeeds). A small leaf
    /// function on purpose: the general path (scale changes, errors) keeps a
    /// large stack frame and many registers, which cost every reading when
    /// both were one function.
    ///
    /// Built where there is room for a second copy of the per-reading path:
    /// with `alloc` (agent, collector, every test) and on Armv7-M (32-bit
    /// atomics mark it). The Armv6-M and freestanding x86 images (no
    /// `alloc`) keep one path within their 16 KiB budget: there this always
    /// returns `false`, is inlined away, and every reading takes the general
    /// path.
    #[cfg(any(feature = "alloc", all(target_arch = "arm", target_has_atomic = "32")))]
    #[inline(never)]
    pub fn try_insert(&mut self, time: u32, v: i32, index: &DeviceIndex) -> bool {
        let Some(e) = &mut self.extent else {
            return false;
        };
        if index.quantum() != self.quantum {
            return false;
        }
        let Some(count) = self.count.checked_add(1) else {
            return false;
        };
        // The bucket is looked up first (one value, its place, stays live
        // across the moments) and counted only when nothing can fail.
        let Some(slot) = self.sketch.place(index.bucket_at(v)) else {
            return false;
        };
        let d = i64::from(v) - i64::from(self.reference);
        let Some(sum) = self.sum.checked_add(d) else {
            return false;
        };
        // |d| ≤ 2³² − 1: one 32 × 32 → 64-bit multiplication.
        let m = d.unsigned_abs() as u32;
        let sq = u64::from(m) * u64::from(m);
        let Some(sum_sq) = self.sum_sq.checked_add(sq) else {
            return false;
        };
        self.sketch.count_at(slot);
        self.sum = sum;
        self.sum_sq = sum_sq;
        self.count = count;
        e.add(time, v);
        true
    }

    /// See the other [`Self::try_insert`]: the compact builds' stand-in.
    #[cfg(not(any(feature = "alloc", all(target_arch = "arm", target_has_atomic = "32"))))]
    #[inline(always)]
    pub fn try_insert(&mut self, _time: u32, _v: i32, _index: &DeviceIndex) -> bool {
        false
    }

    /// [`Self::insert_above`] for every case: the first reading, a new
    /// bucket or a lower scale, and every error.
    #[cold]
    #[inline(never)]
    fn insert_general(
        &mut self,
        time: u32,
        v: i32,
        index: &DeviceIndex,
        floor: i8,
    ) -> Result<(), SummaryError> {
        if index.quantum() != self.quantum {
            return Err(SummaryError::QuantumMismatch {
                left: self.quantum,
                right: index.quantum(),
            });
        }
        let count = self
            .count
            .checked_add(1)
            .ok_or(SummaryError::Overflow("count"))?;
        let d = i64::from(v) - i64::from(self.reference);
        let sum = self
            .sum
            .checked_add(d)
            .ok_or(SummaryError::Overflow("sum"))?;
        let sq = d.unsigned_abs() * d.unsigned_abs(); // |d| < 2³², so no overflow
        let sum_sq = self
            .sum_sq
            .checked_add(sq)
            .ok_or(SummaryError::Overflow("sum of squares"))?;
        self.sketch.insert_above(index.bucket(v), floor)?;
        self.count = count;
        self.sum = sum;
        self.sum_sq = sum_sq;
        match &mut self.extent {
            Some(e) => e.add(time, v),
            None => self.extent = Some(Extent::of(time, v)),
        }
        Ok(())
    }

    /// Merges `other` (same quantum and reference, times on the same base).
    /// On error `self` is unchanged.
    pub fn merge(&mut self, other: &FixedSummary) -> Result<(), SummaryError> {
        if self.quantum != other.quantum {
            return Err(SummaryError::QuantumMismatch {
                left: self.quantum,
                right: other.quantum,
            });
        }
        if self.reference != other.reference {
            return Err(SummaryError::ReferenceMismatch {
                left: self.reference,
                right: other.reference,
            });
        }
        let count = self
            .count
            .checked_add(other.count)
            .ok_or(SummaryError::Overflow("count"))?;
        let sum = self
            .sum
            .checked_add(other.sum)
            .ok_or(SummaryError::Overflow("sum"))?;
        let sum_sq = self
            .sum_sq
            .checked_add(other.sum_sq)
            .ok_or(SummaryError::Overflow("sum of squares"))?;
        self.sketch.merge(&other.sketch)?; // atomic: unchanged on error
        self.count = count;
        self.sum = sum;
        self.sum_sq = sum_sq;
        self.extent = Extent::merge_opt(self.extent, other.extent);
        Ok(())
    }

    /// Moves every event time `delta` ms later, for merging a summary into a
    /// wider window that starts `delta` ms earlier.
    pub fn delay_times(&mut self, delta: u32) -> Result<(), SummaryError> {
        if let Some(e) = &mut self.extent {
            let first = e
                .first
                .time
                .checked_add(delta)
                .ok_or(SummaryError::Overflow("event time"))?;
            let last = e
                .last
                .time
                .checked_add(delta)
                .ok_or(SummaryError::Overflow("event time"))?;
            e.first.time = first;
            e.last.time = last;
        }
        Ok(())
    }

    /// The channel's quantum.
    pub fn quantum(&self) -> Quantum {
        self.quantum
    }
    /// The reference offset r of the moments.
    pub fn reference(&self) -> i32 {
        self.reference
    }
    /// The number of readings.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// Whether no reading was folded in.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Σ(v − r).
    pub fn offset_sum(&self) -> i64 {
        self.sum
    }
    /// Σ(v − r)².
    pub fn offset_sum_sq(&self) -> u64 {
        self.sum_sq
    }
    /// Min, max, first and last.
    pub fn extent(&self) -> Option<&Extent<u32, i32>> {
        self.extent.as_ref()
    }
    /// The quantile sketch.
    pub fn sketch(&self) -> &FixedSketch {
        &self.sketch
    }

    /// A summary from its wire fields, checked as a decoded one is
    /// ([`Self::validate`]). For decoders that parse the wire form by hand
    /// (the firmware's own, smaller than serde's).
    pub fn from_parts(
        quantum: Quantum,
        reference: i32,
        count: u32,
        sum: i64,
        sum_sq: u64,
        extent: Option<Extent<u32, i32>>,
        sketch: FixedSketch,
    ) -> Result<Self, &'static str> {
        let s = FixedSummary {
            quantum,
            reference,
            count,
            sum,
            sum_sq,
            extent,
            sketch,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the invariants a decoded summary must satisfy. With `alloc`
    /// (agent side) also that every bucket is one a reading of this quantum
    /// can reach; a device reads back only frames it wrote itself.
    pub fn validate(&self) -> Result<(), &'static str> {
        self.sketch.validate()?;
        if self.sketch.count() != u64::from(self.count) {
            return Err("fixed summary: sketch count differs from count");
        }
        #[cfg(feature = "alloc")]
        {
            let scale = self.sketch.scale();
            let (lo, hi) = (
                crate::index::lowest(self.quantum, scale),
                crate::index::highest(self.quantum, 31, scale),
            );
            for r in [
                self.sketch.positive().range(),
                self.sketch.negative().range(),
            ]
            .into_iter()
            .flatten()
            {
                if r.0 < lo || r.1 > hi {
                    return Err(
                        "fixed summary: sketch bucket no reading of this quantum can reach",
                    );
                }
            }
        }
        match &self.extent {
            None if self.count == 0 => {
                if self.sum != 0 || self.sum_sq != 0 {
                    return Err("fixed summary: empty summary with non-zero sums");
                }
                Ok(())
            }
            None => Err("fixed summary: readings without min/max/first/last"),
            Some(_) if self.count == 0 => Err("fixed summary: min/max/first/last without readings"),
            Some(e) => {
                e.validate()?;
                let n = i128::from(self.count);
                let r = i128::from(self.reference);
                let s = i128::from(self.sum);
                let (a, b) = (i128::from(e.min) - r, i128::from(e.max) - r);
                if s < n * a || s > n * b {
                    return Err("fixed summary: sum outside count·[min, max]");
                }
                // Σd² of n values d ∈ [a, b] with Σd = s lies in
                // [s²/n, (a+b)·s − n·a·b] (Cauchy–Schwarz; Σ(d−a)(d−b) ≤ 0).
                // Without this, widening an inconsistent payload could give a
                // negative or oversized Σv² (all terms < 2¹²⁷).
                let q = i128::from(self.sum_sq);
                if q * n < s * s || q > (a + b) * s - n * a * b {
                    return Err(
                        "fixed summary: sum of squares inconsistent with count, sum and [min, max]",
                    );
                }
                Ok(())
            }
        }
    }
}

/// The wire mirror of [`FixedSummary`], validated into it on decode.
#[derive(Deserialize)]
struct RawFixed {
    quantum: Quantum,
    reference: i32,
    count: u32,
    sum: i64,
    sum_sq: u64,
    extent: Option<Extent<u32, i32>>,
    sketch: FixedSketch,
}

impl<'de> Deserialize<'de> for FixedSummary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawFixed::deserialize(d)?;
        Self::from_parts(
            r.quantum,
            r.reference,
            r.count,
            r.sum,
            r.sum_sq,
            r.extent,
            r.sketch,
        )
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Summary;

    const MILLI: DeviceIndex = DeviceIndex::new(match Quantum::new(-3) {
        Ok(q) => q,
        Err(_) => Quantum::DEFAULT,
    });
    const MICRO: DeviceIndex = DeviceIndex::new(Quantum::DEFAULT);

    #[test]
    fn fits_the_device_budget() {
        assert!(
            core::mem::size_of::<FixedSummary>() <= 512,
            "{}",
            core::mem::size_of::<FixedSummary>()
        );
    }

    #[test]
    fn widening_is_lossless() {
        let q = Quantum::new(-3).unwrap();
        let mut f = FixedSummary::new(q, 21_000);
        let mut full = Summary::new(q);
        for (i, v) in [20_950, 21_010, 21_400, -5, 0, 21_000, 2_000_000_000]
            .into_iter()
            .enumerate()
        {
            f.insert(i as u32 * 100, v, &MILLI).unwrap();
            full.insert(1_000_000 + i as i64 * 100, i64::from(v))
                .unwrap();
        }
        let widened = Summary::from_fixed(&f, 1_000_000);
        assert_eq!(widened, full.with_sketch_scale(f.sketch().scale()));
    }

    #[test]
    fn in_place_extent_equals_merged_single_readings() {
        // Times out of order, ties on time broken by value, repeats.
        let readings = [
            (50, 3),
            (10, 7),
            (90, -2),
            (10, 5),
            (90, 4),
            (0, 3),
            (70, 9),
            (0, 3),
            (95, -8),
        ];
        let mut f = FixedSummary::new(Quantum::DEFAULT, 0);
        let mut expected: Option<Extent<u32, i32>> = None;
        for (k, &(t, v)) in readings.iter().enumerate() {
            f.insert(t, v, &MICRO).unwrap();
            expected = Extent::merge_opt(expected, Some(Extent::of(t, v)));
            assert_eq!(f.extent(), expected.as_ref());
            // And both are the extent of the readings so far, from the
            // readings: min and max value, first and last by (time, value).
            let seen = &readings[..=k];
            let e = f.extent().unwrap();
            let values = seen.iter().map(|r| r.1);
            assert_eq!(e.min, values.clone().min().unwrap());
            assert_eq!(e.max, values.max().unwrap());
            assert_eq!((e.first.time, e.first.value), *seen.iter().min().unwrap());
            assert_eq!((e.last.time, e.last.value), *seen.iter().max().unwrap());
        }
    }

    #[test]
    fn merge_refuses_other_reference_or_quantum() {
        let q = Quantum::new(-3).unwrap();
        let mut a = FixedSummary::new(q, 0);
        a.insert(0, 5, &MILLI).unwrap();
        let b = FixedSummary::new(q, 1);
        assert!(matches!(
            a.merge(&b),
            Err(SummaryError::ReferenceMismatch { .. })
        ));
        let c = FixedSummary::new(Quantum::new(-2).unwrap(), 0);
        assert!(matches!(
            a.merge(&c),
            Err(SummaryError::QuantumMismatch { .. })
        ));
        assert_eq!(a.count(), 1);
    }

    #[test]
    fn moment_overflow_is_reported_and_leaves_state() {
        let mut a = FixedSummary::new(Quantum::DEFAULT, i32::MIN);
        let mut n = 0;
        let err = loop {
            match a.insert(0, i32::MAX, &MICRO) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, SummaryError::Overflow("sum of squares"));
        assert_eq!(a.count(), n);
    }
}
