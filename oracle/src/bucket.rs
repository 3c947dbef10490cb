//! The buckets of a base-2 exponential histogram, from their definition.
//!
//! # Design
//! At scale *s* bucket *i* holds the magnitudes in (2^(i/2^s), 2^((i+1)/2^s)]
//! (the OpenTelemetry layout the pipeline's sketch documents). For a positive
//! rational x and s ≥ 0 that is the largest *i* with 2^i < x^(2^s) — an
//! exact comparison of big integers, with a float logarithm only as the
//! first guess. Buckets nest, so a negative scale is the index at scale 0
//! shifted right. A quantile estimate is right when it lies in the closed
//! bucket of the true value at the sketch's scale: then its relative error is
//! at most base − 1 with base = 2^(2^−s); the pipeline's midpoint estimate is
//! promised (base − 1)/(base + 1) — 0.54 % at scale 6, 1.08 % at 5, 2.17 %
//! at 4 — and [`relative_error`] gives that bound.

use core::cmp::Ordering;

use num_bigint::BigInt;

use crate::exact::Ratio;

/// The lowest scale the check supports (as the pipeline's sketch).
pub const MIN_SCALE: i8 = -4;
/// The highest scale the check supports.
pub const MAX_SCALE: i8 = 8;

/// Compares x^(2^s) with 2^i for a positive x, exactly.
fn cmp_power(x: &Ratio, s: u32, i: i64) -> Ordering {
    let x = x.pow(1 << s);
    let (mut l, mut r) = (x.num, BigInt::from(x.den));
    if i >= 0 {
        r <<= i as u64;
    } else {
        l <<= i.unsigned_abs();
    }
    l.cmp(&r)
}

/// The bucket index of the magnitude |x| (non-zero) at `scale` (clamped to
/// [`MIN_SCALE`]..=[`MAX_SCALE`]); `None` for zero.
pub fn index(x: &Ratio, scale: i8) -> Option<i64> {
    if x.is_zero() {
        return None;
    }
    let x = x.abs();
    let scale = scale.clamp(MIN_SCALE, MAX_SCALE);
    let s = scale.max(0) as u32;
    let n = f64::from(1u32 << s);
    let mut i = (x.to_f64().log2() * n).ceil() as i64 - 1;
    // The guess is off by at most a step or two; move until 2^i < x^N ≤ 2^(i+1).
    while cmp_power(&x, s, i) != Ordering::Greater {
        i -= 1;
    }
    while cmp_power(&x, s, i + 1) == Ordering::Greater {
        i += 1;
    }
    Some(if scale < 0 { i >> (-scale) } else { i })
}

/// Whether the magnitude |y| lies in the closed bucket `i` at `scale`,
/// [2^(i/2^s), 2^((i+1)/2^s)].
fn in_closed_bucket(y: &Ratio, i: i64, scale: i8) -> bool {
    if y.is_zero() {
        return false;
    }
    let y = y.abs();
    let scale = scale.clamp(MIN_SCALE, MAX_SCALE);
    if scale < 0 {
        // Bucket i at scale −k spans buckets i·2^k ..= (i+1)·2^k − 1 at scale 0.
        let k = (-scale) as u32;
        let (lo, hi) = (i << k, ((i + 1) << k) - 1);
        return cmp_power(&y, 0, lo) != Ordering::Less
            && cmp_power(&y, 0, hi + 1) != Ordering::Greater;
    }
    let s = scale as u32;
    cmp_power(&y, s, i) != Ordering::Less && cmp_power(&y, s, i + 1) != Ordering::Greater
}

/// Whether `estimate` may stand for the true value `truth` in a sketch at
/// `scale`: zero for zero, otherwise the same sign and inside the closed
/// bucket of the true value.
pub fn contains(truth: &Ratio, estimate: f64, scale: i8) -> bool {
    let Some(e) = Ratio::of_f64(estimate) else {
        return false;
    };
    match index(truth, scale) {
        None => e.is_zero(),
        Some(i) => e.is_negative() == truth.is_negative() && in_closed_bucket(&e, i, scale),
    }
}

/// The relative-error bound (base − 1)/(base + 1) of a bucket's midpoint
/// estimate at `scale`, base = 2^(2^−scale).
pub fn relative_error(scale: i8) -> f64 {
    let base = 2f64.powf(2f64.powi(-i32::from(scale)));
    (base - 1.0) / (base + 1.0)
}

/// The lower bound 2^(i/2^s) of bucket `i`, as a float (for messages).
pub fn lower_bound(i: i64, scale: i8) -> f64 {
    2f64.powf(i as f64 * 2f64.powi(-i32::from(scale)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_of_two_are_upper_bounds() {
        // 2^k is the inclusive upper bound of bucket k·2^s − 1.
        for s in [0i8, 3, 6] {
            for k in [-5i64, 0, 1, 7] {
                let x = Ratio::of_f64(2f64.powi(k as i32)).unwrap();
                assert_eq!(index(&x, s), Some(k * (1 << s) - 1), "2^{k} at scale {s}");
                let above = Ratio::of_f64(crate::exact::next_up(2f64.powi(k as i32))).unwrap();
                assert_eq!(index(&above, s), Some(k * (1 << s)), "just above 2^{k}");
            }
        }
    }

    #[test]
    fn decimal_values_and_negative_scales() {
        // 1.5 = 2^0.585: at scale 6, ⌈64·0.58496⌉ − 1 = 37.
        assert_eq!(index(&Ratio::decimal(15, -1), 6), Some(37));
        assert_eq!(index(&Ratio::decimal(-15, -1), 6), Some(37), "by magnitude");
        // 1000 = 2^9.97: scale 0 → 9; scale −2 → 9 >> 2 = 2.
        assert_eq!(index(&Ratio::int(1000), 0), Some(9));
        assert_eq!(index(&Ratio::int(1000), -2), Some(2));
        assert_eq!(index(&Ratio::int(0), 6), None);
    }

    #[test]
    fn containment_is_exact_and_signed() {
        let x = Ratio::decimal(21_500, -3); // 21.5
        assert!(contains(&x, 21.5, 6));
        assert!(contains(&x, 21.45, 6), "same bucket at 0.54 %");
        assert!(!contains(&x, 22.0, 6), "two buckets up");
        assert!(contains(&x, 22.0, 3), "one wide bucket at scale 3");
        assert!(!contains(&x, -21.5, 6), "sign");
        assert!(contains(&Ratio::int(0), 0.0, 6));
        assert!(!contains(&Ratio::int(0), 1e-9, 6));
        assert!((relative_error(6) - 0.005415).abs() < 1e-6);
        assert!((relative_error(4) - 0.021657).abs() < 1e-6);
        assert_eq!(lower_bound(64, 6), 2.0);
    }
}
