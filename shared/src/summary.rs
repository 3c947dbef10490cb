//! The full summary of a series over a window, used by agent and collector.
//!
//! # Design
//! Readings are integer ticks of the series' [`Quantum`]. The summary keeps the
//! count, the exact sums Σv (`i128`) and Σv² (`u128`), the [`Extent`] (min,
//! max, first, last) and a [`Sketch`]. Merging is integer addition plus the
//! sketch merge, so every field — and every statistic derived from them — is
//! bit-identical whatever the merge order or tree. Overflow of any sum is
//! detected and reported; on error the summary is unchanged.
//!
//! Statistics are computed only when asked for, and are `None` where they are
//! undefined (an empty summary, the variance of one reading) — never NaN.
//! Sum, mean, variance and standard deviation are the exact rationals of the
//! integer moments rounded once, to the nearest `f64` (ties to even; the
//! standard deviation is the nearest `f64` to the square root of the exact
//! variance): see `exact.rs`. Min, max, first and last are v·q rounded once.

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::error::SummaryError;
use crate::extent::Extent;
use crate::fixed::FixedSummary;
use crate::index::{self, QuantumIndex};
use crate::quantum::{Quantum, MAX_TICKS};
use crate::sketch::Sketch;

/// The exact, mergeable summary of a set of readings of one series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    quantum: Quantum,
    count: u64,
    sum: i128,
    sum_sq: u128,
    extent: Option<Extent<i64, i64>>,
    sketch: Sketch,
}

/// A quantile estimate with its guaranteed relative-error bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantile {
    /// The estimate, in the series' unit.
    pub value: f64,
    /// The bound on |estimate − true| / |true| of the sketch's scale.
    pub relative_error: f64,
}

impl Summary {
    /// The empty summary (the merge identity) for `quantum`.
    pub fn new(quantum: Quantum) -> Self {
        Summary {
            quantum,
            count: 0,
            sum: 0,
            sum_sq: 0,
            extent: None,
            sketch: Sketch::new(),
        }
    }

    /// Folds in a reading given in the series' unit.
    pub fn insert_value(&mut self, time: i64, x: f64) -> Result<(), SummaryError> {
        let v = self.quantum.ticks(x)?;
        self.insert(time, v)
    }

    /// Folds in a reading given in ticks. On error nothing changes.
    #[inline]
    pub fn insert(&mut self, time: i64, v: i64) -> Result<(), SummaryError> {
        if v.unsigned_abs() > MAX_TICKS.unsigned_abs() {
            return Err(SummaryError::OutOfRange(v));
        }
        let count = self
            .count
            .checked_add(1)
            .ok_or(SummaryError::Overflow("count"))?;
        let sum = self
            .sum
            .checked_add(i128::from(v))
            .ok_or(SummaryError::Overflow("sum"))?;
        let sq = u128::from(v.unsigned_abs()) * u128::from(v.unsigned_abs());
        let sum_sq = self
            .sum_sq
            .checked_add(sq)
            .ok_or(SummaryError::Overflow("sum of squares"))?;
        self.sketch
            .insert(QuantumIndex::of(self.quantum).bucket(v))?;
        self.count = count;
        self.sum = sum;
        self.sum_sq = sum_sq;
        let one = Extent::of(time, v);
        self.extent = Some(match self.extent {
            Some(e) => e.merge(&one),
            None => one,
        });
        Ok(())
    }

    /// Merges `other` into `self`. On error `self` is unchanged.
    pub fn merge(&mut self, other: &Summary) -> Result<(), SummaryError> {
        if self.quantum != other.quantum {
            return Err(SummaryError::QuantumMismatch {
                left: self.quantum,
                right: other.quantum,
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

    /// The merge of `self` and `other`.
    pub fn merged_with(&self, other: &Summary) -> Result<Summary, SummaryError> {
        let mut out = self.clone();
        out.merge(other)?;
        Ok(out)
    }

    /// Widens a device summary whose times are offsets from `time_base` (ms).
    /// Lossless: every field carries over exactly.
    pub fn from_fixed(fixed: &FixedSummary, time_base: i64) -> Summary {
        let n = i128::from(fixed.count());
        let r = i128::from(fixed.reference());
        let s = i128::from(fixed.offset_sum());
        // Σv = Σ(v−r) + n·r and Σv² = Σ(v−r)² + 2r·Σ(v−r) + n·r²; all terms fit
        // an i128 comfortably (n < 2³², |r| < 2³¹, |s| < 2⁶³).
        let sum = s + n * r;
        let sum_sq = (i128::from(fixed.offset_sum_sq()) + 2 * r * s + n * r * r).unsigned_abs();
        let extent = fixed.extent().map(|e| Extent {
            min: i64::from(e.min),
            max: i64::from(e.max),
            first: crate::extent::Point {
                time: time_base.saturating_add(i64::from(e.first.time)),
                value: i64::from(e.first.value),
            },
            last: crate::extent::Point {
                time: time_base.saturating_add(i64::from(e.last.time)),
                value: i64::from(e.last.value),
            },
        });
        // 304 buckets of u8 always fit the full form's 2048 per sign of u64.
        let sketch = fixed.sketch().convert().unwrap_or_default();
        Summary {
            quantum: fixed.quantum(),
            count: u64::from(fixed.count()),
            sum,
            sum_sq,
            extent,
            sketch,
        }
    }

    /// This summary with every event time moved by `by` ms (e.g. from device
    /// ticks since boot to wall-clock time). Only first/last carry times.
    pub fn shifted(&self, by: i64) -> Summary {
        let mut out = self.clone();
        if let Some(e) = out.extent.as_mut() {
            e.first.time = e.first.time.saturating_add(by);
            e.last.time = e.last.time.saturating_add(by);
        }
        out
    }

    /// The series' quantum.
    pub fn quantum(&self) -> Quantum {
        self.quantum
    }
    /// The number of readings.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Whether no reading was folded in.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Σv in ticks.
    pub fn sum_ticks(&self) -> i128 {
        self.sum
    }
    /// Σv² in ticks².
    pub fn sum_sq_ticks(&self) -> u128 {
        self.sum_sq
    }
    /// Min, max, first and last in ticks (`None` when empty).
    pub fn extent(&self) -> Option<&Extent<i64, i64>> {
        self.extent.as_ref()
    }
    /// The quantile sketch.
    pub fn sketch(&self) -> &Sketch {
        &self.sketch
    }

    /// This summary with its sketch lowered to `scale` (for comparing a
    /// summary with one whose sketch had to coarsen further).
    pub fn with_sketch_scale(&self, scale: i8) -> Summary {
        Summary {
            sketch: self.sketch.downscaled_to(scale),
            ..self.clone()
        }
    }

    /// A summary from its fields, checked as a decoded one is
    /// ([`Summary::validate`]): for the binary batch decoder and serde.
    pub(crate) fn from_parts(
        quantum: Quantum,
        (count, sum, sum_sq): (u64, i128, u128),
        extent: Option<Extent<i64, i64>>,
        sketch: Sketch,
    ) -> Result<Summary, &'static str> {
        let s = Summary {
            quantum,
            count,
            sum,
            sum_sq,
            extent,
            sketch,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the invariants a decoded summary must satisfy.
    pub fn validate(&self) -> Result<(), &'static str> {
        self.sketch.validate()?;
        if self.sketch.count() != self.count {
            return Err("summary: sketch count differs from count");
        }
        let scale = self.sketch.scale();
        let (lo, hi) = (
            index::lowest(self.quantum, scale),
            index::highest(self.quantum, 53, scale),
        );
        for r in [
            self.sketch.positive().range(),
            self.sketch.negative().range(),
        ]
        .into_iter()
        .flatten()
        {
            if r.0 < lo || r.1 > hi {
                return Err("summary: sketch bucket no reading of this quantum can reach");
            }
        }
        match &self.extent {
            None if self.count == 0 => {
                if self.sum != 0 || self.sum_sq != 0 {
                    return Err("summary: empty summary with non-zero sums");
                }
                Ok(())
            }
            None => Err("summary: readings without min/max/first/last"),
            Some(_) if self.count == 0 => Err("summary: min/max/first/last without readings"),
            Some(e) => {
                e.validate()?;
                if e.min.unsigned_abs() > MAX_TICKS.unsigned_abs()
                    || e.max.unsigned_abs() > MAX_TICKS.unsigned_abs()
                {
                    return Err("summary: min/max out of range");
                }
                let n = i128::from(self.count);
                if self.sum < n * i128::from(e.min) || self.sum > n * i128::from(e.max) {
                    return Err("summary: sum outside count·[min, max]");
                }
                let m = u128::from(e.min.unsigned_abs().max(e.max.unsigned_abs()));
                if let Some(bound) = (m * m).checked_mul(u128::from(self.count)) {
                    if self.sum_sq > bound {
                        return Err("summary: sum of squares larger than count·max²");
                    }
                }
                if !moments_consistent(self.count, self.sum, self.sum_sq) {
                    return Err(
                        "summary: sum of squares smaller than sum²/count (negative variance)",
                    );
                }
                Ok(())
            }
        }
    }
}

/// Cauchy–Schwarz: `count·Σv² ≥ (Σv)²`, which every real set of readings
/// meets (the variance is never negative). Exact in wide integers.
fn moments_consistent(count: u64, sum: i128, sum_sq: u128) -> bool {
    let n = u128::from(count);
    let s = sum.unsigned_abs();
    match (n.checked_mul(sum_sq), s.checked_mul(s)) {
        (Some(lhs), Some(rhs)) => lhs >= rhs,
        // count·Σv² is past u128, (Σv)² is not.
        (None, Some(_)) => true,
        // (Σv)² is past u128: Σv² must still reach ⌊|Σv|/n⌋·|Σv| ≤ (Σv)²/n.
        (_, None) => (s / n.max(1))
            .checked_mul(s)
            .is_some_and(|floor| sum_sq >= floor),
    }
}

#[cfg(feature = "std")]
use crate::exact::{self, Wide};

#[cfg(feature = "std")]
impl Summary {
    /// Σx in the series' unit: the nearest `f64` to Σv·q.
    pub fn sum(&self) -> Option<f64> {
        let num = Wide::from_u128(self.sum.unsigned_abs());
        (self.count > 0)
            .then(|| exact::ratio(self.sum < 0, num, Wide::from_u128(1), self.exp10()))?
    }

    /// The mean: the nearest `f64` to the exact Σv·q/n.
    pub fn mean(&self) -> Option<f64> {
        let num = Wide::from_u128(self.sum.unsigned_abs());
        let den = Wide::from_u128(u128::from(self.count));
        (self.count > 0).then(|| exact::ratio(self.sum < 0, num, den, self.exp10()))?
    }

    /// The quantum's exponent.
    fn exp10(&self) -> i32 {
        i32::from(self.quantum.exponent())
    }

    /// The sample variance in ticks² as the exact (nΣv² − (Σv)², n(n−1)).
    /// `None` below two readings. Never negative: a summary whose moments
    /// would make it so cannot be decoded (see [`Summary::validate`]); were
    /// one built, its variance would be 0.
    fn variance_ticks(&self) -> Option<(Wide, Wide)> {
        if self.count < 2 {
            return None;
        }
        let n = Wide::from_u128(u128::from(self.count));
        let s = Wide::from_u128(self.sum.unsigned_abs());
        let m2 = n
            .checked_mul(&Wide::from_u128(self.sum_sq))?
            .checked_sub(&s.checked_mul(&s)?)
            .unwrap_or(Wide::ZERO);
        let n = u128::from(self.count);
        Some((m2, Wide::from_u128(n * (n - 1))))
    }

    /// The sample variance (n − 1 denominator) in the unit²: the nearest
    /// `f64` to the exact (nΣv² − (Σv)²)·q²/(n(n−1)); `None` below two
    /// readings.
    pub fn variance(&self) -> Option<f64> {
        let (num, den) = self.variance_ticks()?;
        exact::ratio(false, num, den, 2 * self.exp10())
    }

    /// The sample standard deviation: the nearest `f64` to the square root
    /// of the exact variance; `None` below two readings.
    pub fn stddev(&self) -> Option<f64> {
        let (num, den) = self.variance_ticks()?;
        exact::sqrt_ratio(num, den, 2 * self.exp10())
    }

    /// The smallest reading.
    pub fn min(&self) -> Option<f64> {
        self.extent.map(|e| self.quantum.value(e.min))
    }
    /// The largest reading.
    pub fn max(&self) -> Option<f64> {
        self.extent.map(|e| self.quantum.value(e.max))
    }
    /// The earliest reading as (event time, value).
    pub fn first(&self) -> Option<(i64, f64)> {
        self.extent
            .map(|e| (e.first.time, self.quantum.value(e.first.value)))
    }
    /// The latest reading as (event time, value).
    pub fn last(&self) -> Option<(i64, f64)> {
        self.extent
            .map(|e| (e.last.time, self.quantum.value(e.last.value)))
    }

    /// The quantile `q` ∈ [0, 1] with its error bound; q = 0 and q = 1 give
    /// the exact min and max. Every estimate is clamped to the ticks its
    /// bucket can hold (so a bucket that holds one tick gives it exactly) and
    /// to [min, max].
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let e = self.extent?;
        let relative_error = index::relative_error(self.sketch.scale());
        let ticks = if q == 0.0 {
            e.min as f64
        } else if q == 1.0 {
            e.max as f64
        } else {
            let (value, bucket) = self.sketch.quantile(q)?;
            let ticks = value / self.quantum.scale(1.0);
            let ticks = match bucket {
                Some(index::Bucket::Positive(i)) => self.clamp_to_bucket(ticks, i),
                Some(index::Bucket::Negative(i)) => -self.clamp_to_bucket(-ticks, i),
                _ => ticks,
            };
            ticks.clamp(e.min as f64, e.max as f64)
        };
        Some(Quantile {
            value: self.quantum.scale(ticks),
            relative_error,
        })
    }

    /// `ticks` clamped to the tick magnitudes whose bucket at the sketch's
    /// scale is `index` (exactly, by the index itself; unchanged if the
    /// bucket holds none, which a non-empty bucket cannot).
    fn clamp_to_bucket(&self, ticks: f64, index: i32) -> f64 {
        let scale = self.sketch.scale();
        let ix = QuantumIndex::of(self.quantum);
        let of = |t: u64| core::num::NonZeroU64::new(t).map(|t| ix.index(t, scale));
        let unit = self.quantum.scale(1.0);
        // First guesses from the bucket's bounds, then exact steps (float
        // rounding moves a guess by at most a tick or two).
        let guess = |x: f64| (x / unit).clamp(1.0, MAX_TICKS as f64) as u64;
        let mut lo = guess(index::lower_bound(index, scale));
        let mut hi = guess(index::lower_bound(index + 1, scale));
        for _ in 0..4 {
            if of(lo).is_some_and(|i| i < index) {
                lo += 1;
            } else if of(lo - 1).is_some_and(|i| i >= index) {
                lo -= 1;
            }
            if of(hi).is_some_and(|i| i > index) {
                hi -= 1;
            } else if hi < MAX_TICKS as u64 && of(hi + 1).is_some_and(|i| i <= index) {
                hi += 1;
            }
        }
        // `lo` is the bucket's first tick, `hi` its last.
        let first = of(lo) == Some(index) && of(lo - 1).is_none_or(|i| i < index);
        let last = of(hi) == Some(index)
            && (hi >= MAX_TICKS as u64 || of(hi + 1).is_none_or(|i| i > index));
        if first && last {
            ticks.clamp(lo as f64, hi as f64)
        } else {
            ticks
        }
    }
}

/// The wire mirror of [`Summary`], validated into it on decode.
#[derive(Deserialize)]
struct RawSummary {
    quantum: Quantum,
    count: u64,
    sum: i128,
    sum_sq: u128,
    extent: Option<Extent<i64, i64>>,
    sketch: Sketch,
}

impl<'de> Deserialize<'de> for Summary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawSummary::deserialize(d)?;
        Summary::from_parts(r.quantum, (r.count, r.sum, r.sum_sq), r.extent, r.sketch)
            .map_err(serde::de::Error::custom)
    }
}
