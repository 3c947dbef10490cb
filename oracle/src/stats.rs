//! The exact statistics of a set of readings, from the readings themselves.
//!
//! # Design
//! [`Stats`] keeps every reading's value, sorted, and the first and last
//! reading; everything else is computed from them when asked, in big
//! integers: Σv, Σv², the mean Σv·q/n and the sample variance
//! (nΣv² − (Σv)²)·q²/(n(n−1)) as exact rationals (q = 10^e, the quantum),
//! then turned into the nearest `f64` (ties to even, see [`crate::exact`]);
//! the standard deviation is the nearest `f64` to the square root of the
//! exact variance. `first` and `last` are the readings with the smallest and
//! largest (event time, value) — the tie rule the pipeline documents. The
//! quantile `pNN` is the reading of rank ⌊NN/100 · (n − 1)⌋ (0-based) in
//! ascending order, NN taken as the exact decimal it is written as — the
//! rank rule the pipeline's sketch documents; the pipeline's estimate must
//! lie in the bucket of that reading at the sketch's scale
//! ([`crate::bucket::contains`]).

use num_bigint::{BigInt, BigUint};
use num_traits::ToPrimitive;

use crate::bucket;
use crate::exact::Ratio;

/// A reading: event time (ms since the epoch) and value in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reading {
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// The value in ticks of the series' quantum.
    pub ticks: i64,
}

/// The exact statistics of a non-empty set of readings of one quantum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    exponent: i8,
    sorted: Vec<i64>,
    first: Reading,
    last: Reading,
}

impl Stats {
    /// The statistics of `readings` (values in ticks of 10^`exponent`);
    /// `None` when there are none.
    pub fn of(exponent: i8, readings: &[Reading]) -> Option<Stats> {
        let key = |r: &&Reading| (r.time_ms, r.ticks);
        let first = *readings.iter().min_by_key(key)?;
        let last = *readings.iter().max_by_key(key)?;
        let mut sorted: Vec<i64> = readings.iter().map(|r| r.ticks).collect();
        sorted.sort_unstable();
        Some(Stats {
            exponent,
            sorted,
            first,
            last,
        })
    }

    /// The quantum's decimal exponent.
    pub fn exponent(&self) -> i8 {
        self.exponent
    }
    /// The number of readings.
    pub fn count(&self) -> u64 {
        self.sorted.len() as u64
    }
    /// Σv in ticks.
    pub fn sum_ticks(&self) -> BigInt {
        self.sorted.iter().map(|&v| BigInt::from(v)).sum()
    }
    /// Σv² in ticks².
    pub fn sum_sq_ticks(&self) -> BigInt {
        self.sorted.iter().map(|&v| BigInt::from(v).pow(2)).sum()
    }
    /// The smallest value in ticks.
    pub fn min_ticks(&self) -> i64 {
        self.sorted[0]
    }
    /// The largest value in ticks.
    pub fn max_ticks(&self) -> i64 {
        self.sorted[self.sorted.len() - 1]
    }
    /// The reading with the smallest (time, value).
    pub fn first(&self) -> Reading {
        self.first
    }
    /// The reading with the largest (time, value).
    pub fn last(&self) -> Reading {
        self.last
    }

    /// `ticks` in the unit, exactly.
    pub fn exact(&self, ticks: impl Into<BigInt>) -> Ratio {
        Ratio::decimal(ticks, i32::from(self.exponent))
    }
    /// `ticks` in the unit, the nearest `f64`.
    pub fn value(&self, ticks: i64) -> f64 {
        self.exact(ticks).to_f64()
    }

    /// Σx in the unit, exactly.
    pub fn sum_ratio(&self) -> Ratio {
        self.exact(self.sum_ticks())
    }
    /// The mean Σv·q/n, exactly.
    pub fn mean_ratio(&self) -> Ratio {
        let s = self.sum_ratio();
        Ratio {
            num: s.num,
            den: s.den * BigUint::from(self.count()),
        }
    }
    /// The sample variance (nΣv² − (Σv)²)·q²/(n(n−1)) exactly; `None`
    /// below two readings.
    pub fn variance_ratio(&self) -> Option<Ratio> {
        let n = self.count();
        if n < 2 {
            return None;
        }
        let s = self.sum_ticks();
        let m2 = BigInt::from(n) * self.sum_sq_ticks() - &s * &s;
        let q2 = Ratio::decimal(1, 2 * i32::from(self.exponent));
        Some(Ratio {
            num: m2 * q2.num,
            den: q2.den * BigUint::from(n) * BigUint::from(n - 1),
        })
    }

    /// Σx, the nearest `f64`.
    pub fn sum(&self) -> f64 {
        self.sum_ratio().to_f64()
    }
    /// The mean, the nearest `f64`.
    pub fn mean(&self) -> f64 {
        self.mean_ratio().to_f64()
    }
    /// The sample variance, the nearest `f64`.
    pub fn variance(&self) -> Option<f64> {
        self.variance_ratio().map(|v| v.to_f64())
    }
    /// The sample standard deviation: the nearest `f64` to the square root
    /// of the exact variance.
    pub fn stddev(&self) -> Option<f64> {
        self.variance_ratio().and_then(|v| v.sqrt_to_f64())
    }

    /// The 0-based rank ⌊pct/100 · (n − 1)⌋ of the quantile `p{pct}`, with
    /// `pct` a decimal in 0..=100 (`"99.9"`); `None` if it is not one.
    pub fn rank(&self, pct: &str) -> Option<usize> {
        let q = percent(pct)?;
        let r = q.mul(&Ratio::int(self.count() - 1)).floor();
        r.to_usize()
    }

    /// The true value (ticks) at quantile `p{pct}`.
    pub fn quantile_ticks(&self, pct: &str) -> Option<i64> {
        self.sorted.get(self.rank(pct)?).copied()
    }

    /// Checks a quantile estimate from a sketch at `scale`: `p0` and `p100`
    /// must be the exact min and max; any other must lie in the closed
    /// bucket, at `scale`, of the reading of the documented rank.
    pub fn check_quantile(&self, pct: &str, estimate: f64, scale: i8) -> Result<(), String> {
        let truth = self
            .quantile_ticks(pct)
            .ok_or_else(|| format!("p{pct}: not a percentage in 0..=100"))?;
        let exact = self.exact(truth);
        let q = percent(pct).unwrap_or_else(|| Ratio::int(0));
        if q.is_zero() || q == Ratio::int(1) {
            let want = exact.to_f64();
            return (estimate == want)
                .then_some(())
                .ok_or_else(|| format!("p{pct}: {estimate} is not the exact {want}"));
        }
        if bucket::contains(&exact, estimate, scale) {
            return Ok(());
        }
        let lo = bucket::index(&exact, scale).map(|i| bucket::lower_bound(i, scale));
        Err(format!(
            "p{pct}: {estimate} is outside the bucket (from {lo:?}) of the true {} (rank {:?} of {}) at scale {scale} (relative error bound {:.2} %)",
            exact.to_f64(),
            self.rank(pct),
            self.count(),
            100.0 * bucket::relative_error(scale),
        ))
    }
}

/// `pct`/100 for a decimal `pct` in 0..=100.
fn percent(pct: &str) -> Option<Ratio> {
    let (int, frac) = pct.split_once('.').unwrap_or((pct, ""));
    let digits = format!("{int}{frac}");
    if int.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 30 {
        return None;
    }
    let n: BigInt = digits.parse().ok()?;
    let q = Ratio::new(n, BigUint::from(10u32).pow(frac.len() as u32 + 2))?;
    (q <= Ratio::int(1)).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(e: i8, values: &[i64]) -> Stats {
        let r: Vec<Reading> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Reading {
                time_ms: 1000 + i as i64,
                ticks: v,
            })
            .collect();
        Stats::of(e, &r).unwrap()
    }

    #[test]
    fn moments_mean_and_variance_are_exact() {
        let s = stats(-3, &[1500, -500, 2000, 1000]);
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_ticks(), BigInt::from(4000));
        assert_eq!(s.sum_sq_ticks(), BigInt::from(7_500_000));
        assert_eq!(s.sum(), 4.0);
        assert_eq!(s.mean(), 1.0);
        // Σ(x − 1)² = 0.25 + 2.25 + 1 + 0 = 3.5; / 3.
        assert_eq!(s.variance(), Some(3.5 / 3.0));
        assert_eq!(s.stddev(), Some((3.5f64 / 3.0).sqrt()));
        assert_eq!((s.min_ticks(), s.max_ticks()), (-500, 2000));
        assert_eq!(s.first().ticks, 1500);
        assert_eq!(s.last().ticks, 1000);
        assert_eq!(stats(0, &[7]).variance(), None);
    }

    #[test]
    fn the_issue_case_mean_and_variance() {
        let mut v = vec![0i64; 999_999];
        v.push(-1);
        let s = stats(-3, &v);
        assert_eq!(s.mean(), -1e-9);
        // (n·1 − 1)/(n(n−1)) · 10⁻⁶ = 10⁻⁶/n = 10⁻¹².
        assert_eq!(s.variance(), Some(1e-12));
        assert_eq!(s.stddev(), Some(1e-6));
    }

    #[test]
    fn first_and_last_break_time_ties_by_value() {
        let r = [
            Reading {
                time_ms: 5,
                ticks: 9,
            },
            Reading {
                time_ms: 5,
                ticks: 3,
            },
            Reading {
                time_ms: 9,
                ticks: 1,
            },
            Reading {
                time_ms: 9,
                ticks: 4,
            },
        ];
        let s = Stats::of(0, &r).unwrap();
        assert_eq!(s.first(), r[1]);
        assert_eq!(s.last(), r[3]);
    }

    #[test]
    fn quantile_ranks_follow_the_documented_rule() {
        let s = stats(0, &(1..=101).rev().collect::<Vec<_>>()); // 101 readings
        assert_eq!(s.rank("0"), Some(0));
        assert_eq!(s.rank("50"), Some(50));
        assert_eq!(s.rank("99"), Some(99));
        assert_eq!(s.rank("99.9"), Some(99), "⌊0.999 · 100⌋");
        assert_eq!(s.rank("100"), Some(100));
        assert_eq!(s.quantile_ticks("99"), Some(100));
        assert_eq!(s.rank("100.5"), None);
        assert_eq!(s.rank("-1"), None);
        assert_eq!(s.rank("x"), None);
        // p99.99 of 10,001 readings is rank 9999 exactly (a float product
        // 0.9999 · 10000 would give 9998.9999…).
        let big = stats(0, &(0..10_001).collect::<Vec<_>>());
        assert_eq!(big.rank("99.99"), Some(9999));
    }

    #[test]
    fn quantile_checks_use_the_bucket_of_the_true_value() {
        let s = stats(-3, &[1000, 21_500, 30_000]);
        assert!(s.check_quantile("50", 21.5, 6).is_ok());
        assert!(s.check_quantile("50", 21.45, 6).is_ok());
        assert!(s.check_quantile("50", 22.0, 6).is_err());
        assert!(s.check_quantile("0", 1.0, 6).is_ok());
        assert!(
            s.check_quantile("0", 1.001, 6).is_err(),
            "p0 is the exact min"
        );
        assert!(s.check_quantile("100", 30.0, 6).is_ok());
    }
}
