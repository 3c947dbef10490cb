//! Bucket indices of the base-2 exponential histogram, of the *real* reading.
//!
//! # Design
//! At scale *s* the bucket base is 2^(2^−s); bucket *i* holds real values in
//! (2^(i·2^−s), 2^((i+1)·2^−s)] — the OpenTelemetry exponential-histogram
//! layout (Prometheus native histograms number the same buckets one higher),
//! upper bound inclusive, so a reading equal to a boundary goes to the lower
//! bucket. The reading is x = v·10^e, the tick count v times the series'
//! quantum: the index is that of x, not of v, so sketches export bucket for
//! bucket and merge with sketches of any other quantum.
//!
//! No `log` and no floating point: per quantum, a table of the bucket
//! boundaries inside one octave of the tick's mantissa (see `index/bounds.rs` for the
//! arithmetic and why the comparison is exact at every boundary), and the
//! index is the octave times the buckets per octave plus the number of
//! boundaries below the mantissa — one lookup in a segment table and one
//! comparison. Two forms:
//! - [`QuantumIndex`]: any `u64` tick count, at every scale from
//!   [`MAX_SCALE`] (8) down to [`MIN_SCALE`] (−4), for agent and collector;
//!   the tables of all 37 quanta are computed at compile time
//!   ([`QuantumIndex::of`]);
//! - [`DeviceIndex`]: `u32` tick counts at the sketch's starting scale, 384 B
//!   for a channel's quantum, built by a `const fn` into flash.
//!
//! Lower scales follow by an arithmetic shift: buckets nest, so
//! `index(s) = index(MAX_SCALE) >> (MAX_SCALE − s)`.

mod bounds;

use core::num::{NonZeroU32, NonZeroU64};

use crate::quantum::Quantum;
use bounds::{bound, ceil_log};

/// The finest scale indexed (2^(1/256) ≈ 1.0027 base, as Prometheus' finest).
pub const MAX_SCALE: i8 = 8;
/// The coarsest scale (base 2¹⁶); every `u64` tick range of every quantum
/// fits a few buckets there.
pub const MIN_SCALE: i8 = -4;
/// The scale a sketch starts at, and the scale of [`Bucket`] indices
/// (2^(1/64) ≈ 1.011 base, ≈ 0.54 % relative error).
pub const SKETCH_SCALE: i8 = 6;

/// Where a reading goes in a sketch: the zero count, or the bucket at
/// [`SKETCH_SCALE`] of its magnitude on its sign's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// The reading is zero.
    Zero,
    /// A positive reading in this bucket.
    Positive(i32),
    /// A negative reading whose magnitude is in this bucket.
    Negative(i32),
}

/// The index at `scale` (≤ 8) of the magnitude 2^k ticks of quantum `e`:
/// ⌈2^scale·(k + e·log₂10)⌉ − 1, which is 2^scale·k + ⌈c⌉ − 1.
const fn power_of_two_index(e: i8, k: u32, scale: i8) -> i32 {
    (((k as i32) << MAX_SCALE) + ceil_log(e, MAX_SCALE as u32) - 1) >> (MAX_SCALE - scale)
}

/// The bucket of one tick of quantum `q` at `scale`, the lowest bucket any
/// reading of `q` can fall in.
pub const fn lowest(q: Quantum, scale: i8) -> i32 {
    power_of_two_index(q.exponent(), 0, scale)
}

/// The bucket of 2^`bits` ticks of quantum `q` at `scale`: no reading of
/// fewer ticks falls above it.
pub const fn highest(q: Quantum, bits: u32, scale: i8) -> i32 {
    power_of_two_index(q.exponent(), bits, scale)
}

/// The lowest bucket index at `scale` any reading can have (one tick of 10⁻¹⁸).
pub const fn lowest_possible(scale: i8) -> i32 {
    power_of_two_index(Quantum::MIN_EXPONENT, 0, scale)
}

/// The highest bucket index at `scale` any reading can have (2⁶⁴ ticks of 10¹⁸).
pub const fn highest_possible(scale: i8) -> i32 {
    power_of_two_index(Quantum::MAX_EXPONENT, 64, scale)
}

/// Bucket indices of the tick counts of one quantum, at every scale from
/// [`MAX_SCALE`] to [`MIN_SCALE`]: 256 boundaries per octave at scale 8.
#[derive(Debug)]
pub struct QuantumIndex {
    quantum: Quantum,
    /// ⌈c⌉ − 1 at scale 8 (see `index/bounds.rs`).
    offset: i32,
    /// The boundaries inside an octave of the 64-bit mantissa, ascending.
    bounds: [u64; 256],
    /// For each of the 512 segments [2⁶³ + t·2⁵⁴, 2⁶³ + (t+1)·2⁵⁴): the
    /// number of bounds below its start. Bounds are ≥ 2⁶³·(2^(1/256) − 1) ≈
    /// 2^54.47 apart, so a segment holds at most one.
    segments: [u16; 512],
}

impl QuantumIndex {
    /// The table of quantum `q`, computed at compile time (`const fn`).
    pub const fn new(q: Quantum) -> Self {
        let e = q.exponent();
        let ceil = ceil_log(e, MAX_SCALE as u32);
        let mut bounds = [0u64; 256];
        let mut k = 0;
        while k < 256 {
            bounds[k] = bound(e, MAX_SCALE as u32, ceil, k as u32, 64);
            k += 1;
        }
        let mut segments = [0u16; 512];
        let (mut t, mut below) = (0, 0);
        while t < 512 {
            let start = (1u64 << 63) + ((t as u64) << 54);
            while below < 256 && bounds[below] < start {
                below += 1;
            }
            segments[t] = below as u16;
            t += 1;
        }
        let mut k = 1;
        while k < 256 {
            assert!(bounds[k] - bounds[k - 1] > 1 << 54);
            k += 1;
        }
        QuantumIndex {
            quantum: q,
            offset: ceil - 1,
            bounds,
            segments,
        }
    }

    /// The table of quantum `q`.
    #[cfg(feature = "alloc")]
    pub fn of(q: Quantum) -> &'static QuantumIndex {
        let i = (i32::from(q.exponent()) - i32::from(Quantum::MIN_EXPONENT)) as usize;
        // Every quantum's exponent is in range, so `i` is within the table.
        &ALL[i.min(ALL.len() - 1)]
    }

    /// The quantum of this table.
    pub fn quantum(&self) -> Quantum {
        self.quantum
    }

    /// The boundaries ⌊2⁶³·2^((k + ⌈c⌉ − c)/256)⌋ of one octave of the
    /// mantissa (see `index/bounds.rs`), for verification.
    pub fn bounds(&self) -> &[u64; 256] {
        &self.bounds
    }

    /// ⌈c⌉ − 1 at scale 8: the index of one tick.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// The bucket at `scale` (clamped to [`MIN_SCALE`]..=[`MAX_SCALE`]) of
    /// the real value of `magnitude` ticks.
    #[inline]
    pub fn index(&self, magnitude: NonZeroU64, scale: i8) -> i32 {
        let m = magnitude.get();
        let lz = m.leading_zeros();
        let n = m << lz;
        let below = self.segments[((n >> 54) & 0x1ff) as usize];
        let up = self.bounds.get(usize::from(below)).is_some_and(|&b| b < n);
        let finest =
            ((63 - lz as i32) << MAX_SCALE) + self.offset + i32::from(below) + i32::from(up);
        finest >> (MAX_SCALE - scale.clamp(MIN_SCALE, MAX_SCALE))
    }

    /// Where the reading of `v` ticks goes in a sketch.
    #[inline]
    pub fn bucket(&self, v: i64) -> Bucket {
        match NonZeroU64::new(v.unsigned_abs()) {
            None => Bucket::Zero,
            Some(m) if v > 0 => Bucket::Positive(self.index(m, SKETCH_SCALE)),
            Some(m) => Bucket::Negative(self.index(m, SKETCH_SCALE)),
        }
    }
}

/// The tables of every quantum, 10⁻¹⁸ first (3 KiB each).
#[cfg(feature = "alloc")]
static ALL: [QuantumIndex; 37] = {
    let mut e = Quantum::MIN_EXPONENT;
    let mut all = [const { QuantumIndex::new(Quantum::DEFAULT) }; 37];
    while e <= Quantum::MAX_EXPONENT {
        if let Ok(q) = Quantum::new(e) {
            all[(e - Quantum::MIN_EXPONENT) as usize] = QuantumIndex::new(q);
        }
        e += 1;
    }
    all
};

/// Bucket indices at [`SKETCH_SCALE`] of the `u32` tick counts of one
/// quantum: the device form, 64 boundaries of 32 bits and a 128-byte
/// segment table. Build it in a constant (`const CH: DeviceIndex =
/// DeviceIndex::new(q)`), so it lives in flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIndex {
    quantum: Quantum,
    /// ⌈c⌉ − 1 at the sketch's scale.
    offset: i32,
    /// The boundaries inside an octave of the 32-bit mantissa, ascending.
    bounds: [u32; 64],
    /// For each of the 128 segments [2³¹ + t·2²⁴, 2³¹ + (t+1)·2²⁴): the
    /// number of bounds below its start (bounds are ≥ 2^24.47 apart).
    segments: [u8; 128],
}

impl DeviceIndex {
    /// The table of quantum `q` (`const fn`: evaluate it in a constant).
    pub const fn new(q: Quantum) -> Self {
        let e = q.exponent();
        let scale = SKETCH_SCALE as u32;
        let ceil = ceil_log(e, scale);
        let mut bounds = [0u32; 64];
        let mut k = 0;
        while k < 64 {
            bounds[k] = bound(e, scale, ceil, k as u32, 32) as u32;
            k += 1;
        }
        let mut segments = [0u8; 128];
        let (mut t, mut below) = (0, 0);
        while t < 128 {
            let start = (1u32 << 31) + ((t as u32) << 24);
            while below < 64 && bounds[below] < start {
                below += 1;
            }
            segments[t] = below as u8;
            t += 1;
        }
        let mut k = 1;
        while k < 64 {
            assert!(bounds[k] - bounds[k - 1] > 1 << 24);
            k += 1;
        }
        DeviceIndex {
            quantum: q,
            offset: ceil - 1,
            bounds,
            segments,
        }
    }

    /// The quantum of this table.
    pub fn quantum(&self) -> Quantum {
        self.quantum
    }

    /// The boundaries ⌊2³¹·2^((k + ⌈c⌉ − c)/64)⌋ of one octave of the
    /// mantissa, for verification.
    pub fn bounds(&self) -> &[u32; 64] {
        &self.bounds
    }

    /// ⌈c⌉ − 1 at the sketch's scale: the index of one tick.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// The bucket at [`SKETCH_SCALE`] of the real value of `magnitude` ticks.
    #[inline(always)]
    pub fn index(&self, magnitude: NonZeroU32) -> i32 {
        let m = magnitude.get();
        let lz = m.leading_zeros();
        let n = m << lz;
        let below = self.segments[((n >> 24) & 0x7f) as usize];
        let up = self.bounds.get(usize::from(below)).is_some_and(|&b| b < n);
        ((31 - lz as i32) << SKETCH_SCALE) + self.offset + i32::from(below) + i32::from(up)
    }

    /// Where the reading of `v` ticks goes in a sketch.
    #[inline]
    pub fn bucket(&self, v: i32) -> Bucket {
        self.bucket_at(v)
    }

    /// [`Self::bucket`] always inlined: the device's per-reading path
    /// ([`crate::fixed::FixedSummary::try_insert`]).
    #[inline(always)]
    pub(crate) fn bucket_at(&self, v: i32) -> Bucket {
        match NonZeroU32::new(v.unsigned_abs()) {
            None => Bucket::Zero,
            Some(m) if v > 0 => Bucket::Positive(self.index(m)),
            Some(m) => Bucket::Negative(self.index(m)),
        }
    }
}

/// The largest relative error of a value estimated from a bucket at `scale`:
/// (base − 1) / (base + 1), with base = 2^(2^−scale).
#[cfg(feature = "std")]
pub fn relative_error(scale: i8) -> f64 {
    let base = base(scale);
    (base - 1.0) / (base + 1.0)
}

/// The bucket base 2^(2^−scale).
#[cfg(feature = "std")]
pub fn base(scale: i8) -> f64 {
    2f64.powf(2f64.powi(-i32::from(scale)))
}

/// The lower bound 2^(index·2^−scale) of bucket `index` at `scale`.
#[cfg(feature = "std")]
pub fn lower_bound(index: i32, scale: i8) -> f64 {
    2f64.powf(f64::from(index) * 2f64.powi(-i32::from(scale)))
}

/// The estimate for bucket `index` at `scale` that minimises the worst
/// relative error: the harmonic-style midpoint 2·L·U / (L + U) of (L, U].
#[cfg(feature = "std")]
pub fn bucket_estimate(index: i32, scale: i8) -> f64 {
    let base = base(scale);
    2.0 * lower_bound(index, scale) * base / (1.0 + base)
}

#[cfg(test)]
mod tests;
