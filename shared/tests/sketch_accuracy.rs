//! Accuracy of the quantile sketch against exact quantiles (DESIGN §2):
//! ≥ 100 000 values each from uniform, normal, lognormal and Pareto data
//! mixed with negatives and zeros, and a very wide range that forces the
//! scale down — in the full and the fixed form.
//!
//! The exact quantile uses the sketch's rank definition: the element of rank
//! ⌊q·(n−1)⌋ of the sorted (quantized) readings. The judge is the oracle's
//! (`tributary-oracle`, no code shared with this crate): readings quantized
//! by exact rationals, the relative-error bound of the scale, and the
//! bucket of the true value that the estimate must lie in.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use num_bigint::BigInt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, Pareto, Uniform};
use tributary_core::index::{relative_error, DeviceIndex, MIN_SCALE};
use tributary_core::{FixedSummary, Quantum, Summary};
use tributary_oracle::{bucket, Ratio};

const N: usize = 100_000;
const QS: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Draws `N` readings from `dist`, negating ~25 % and replacing ~5 % by zero.
fn mixed(seed: u64, dist: impl Distribution<f64>) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..N)
        .map(|_| {
            let x = dist.sample(&mut rng);
            let u: f64 = rng.random();
            if u < 0.05 {
                0.0
            } else if u < 0.30 {
                -x
            } else {
                x
            }
        })
        .collect()
}

/// Checks every quantile of `summary` against the exact one of `ticks`;
/// returns the largest relative error seen (over non-zero exact values).
fn check(name: &str, summary: &Summary, mut ticks: Vec<i64>) -> f64 {
    ticks.sort_unstable();
    let n = ticks.len();
    assert_eq!(summary.count(), n as u64, "{name}");
    let e = i32::from(summary.quantum().exponent());
    let half_quantum = Ratio::decimal(5, e - 1).to_f64();
    let scale = summary.sketch().scale();
    // The bound of the scale, by the oracle; the one reported must be it.
    let bound = bucket::relative_error(scale);
    let mut worst: f64 = 0.0;
    for q in QS {
        let rank = ((q * (n - 1) as f64).floor() as usize).min(n - 1);
        let truth = Ratio::decimal(ticks[rank], e);
        let exact = truth.to_f64();
        let got = summary.quantile(q).unwrap();
        assert!(
            (got.relative_error - bound).abs() <= bound * 1e-12,
            "{name}: reported bound {} at scale {scale}, the oracle's {bound}",
            got.relative_error
        );
        assert!(
            bucket::contains(&truth, got.value, scale),
            "{name} q={q}: estimate {} is outside the bucket of the exact {exact} at scale {scale}",
            got.value
        );
        let err = (got.value - exact).abs();
        // The bound, with a hair of slack for the final f64 rounding.
        let allowed = bound * exact.abs() * (1.0 + 1e-9) + half_quantum;
        assert!(
            err <= allowed,
            "{name} q={q}: estimate {} vs exact {exact}: error {err} > allowed {allowed} \
             (scale {})",
            got.value,
            summary.sketch().scale()
        );
        if exact != 0.0 {
            worst = worst.max((err - half_quantum).max(0.0) / exact.abs());
        }
    }
    worst
}

/// The ticks of `x` at the quantum 10^`e` by the oracle: x's exact value
/// over the quantum, rounded half away from zero (the documented rule).
fn oracle_ticks(x: f64, e: i32) -> i64 {
    let r = Ratio::of_f64(x).unwrap().mul(&Ratio::decimal(1, -e));
    let twice = r.abs().mul(&Ratio::int(2));
    let m = i64::try_from((twice.floor() + BigInt::from(1)) / BigInt::from(2)).unwrap();
    if x < 0.0 {
        -m
    } else {
        m
    }
}

/// Folds readings (in the unit) into a full summary with quantum 1e-6 and
/// returns it with their exact ticks (the oracle's, not `Quantum::ticks`).
fn full(values: &[f64]) -> (Summary, Vec<i64>) {
    let mut s = Summary::new(Quantum::DEFAULT);
    let e = i32::from(Quantum::DEFAULT.exponent());
    let mut ticks = Vec::with_capacity(values.len());
    for (i, &x) in values.iter().enumerate() {
        s.insert_value(i as i64, x).unwrap();
        ticks.push(oracle_ticks(x, e));
    }
    s.validate().unwrap();
    (s, ticks)
}

fn assert_accurate_at_high_scale(name: &str, seed: u64, dist: impl Distribution<f64>) {
    let values = mixed(seed, dist);
    assert!(values.len() >= 100_000);
    assert!(values.iter().any(|&x| x < 0.0) && values.contains(&0.0));
    let (s, ticks) = full(&values);
    let scale = s.sketch().scale();
    assert!(scale >= 5, "{name}: full form fell to scale {scale}");
    let worst = check(name, &s, ticks);
    eprintln!("{name}: scale {scale}, worst relative error {worst:.5}");
    assert!(worst <= 0.011, "{name}: relative error {worst} > 1.1 %");
    // The bound of scale ≥ 5 is itself within 1.1 %.
    assert!(s.quantile(0.5).unwrap().relative_error <= 0.011);
}

#[test]
fn uniform() {
    assert_accurate_at_high_scale("uniform", 1, Uniform::new(0.0, 1000.0).unwrap());
}

#[test]
fn normal() {
    assert_accurate_at_high_scale("normal", 2, Normal::new(20.0, 8.0).unwrap());
}

#[test]
fn lognormal() {
    assert_accurate_at_high_scale("lognormal", 3, LogNormal::new(0.0, 2.0).unwrap());
}

#[test]
fn pareto() {
    assert_accurate_at_high_scale("pareto", 4, Pareto::new(1e-3, 1.2).unwrap());
}

/// Magnitudes log-uniform over `lo..hi` (decimal exponents), both signs, with zeros.
fn log_uniform(seed: u64, lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let e = Uniform::new(lo, hi).unwrap();
    (0..n)
        .map(|_| {
            let m = 10f64.powf(e.sample(&mut rng));
            match rng.random_range(0..20) {
                0 => 0.0,
                1..=8 => -m,
                _ => m,
            }
        })
        .collect()
}

#[test]
fn very_wide_range_lowers_the_scale_and_the_bound_still_holds() {
    // 1e-6 ..= 1e9 at quantum 1e-6: 1 ..= 1e15 ticks, ~50 octaves.
    let values = log_uniform(5, -6.0, 9.0, N);
    let (s, ticks) = full(&values);
    let scale = s.sketch().scale();
    assert!(scale < 6, "scale stayed at {scale}");
    assert!(s.sketch().positive().len() <= 2048);
    check("wide full", &s, ticks);
}

/// Folds `ticks` into fixed summaries as a device does: when one is full (a
/// bucket past 255, or a scale below `floor`) it is widened and merged into
/// the result, and a fresh one takes the reading. Returns the merge and the
/// number of parts.
fn device(q: Quantum, reference: i32, ticks: &[i64], floor: i8) -> (Summary, usize) {
    let ix = DeviceIndex::new(q);
    let mut whole = Summary::new(q);
    let mut part = FixedSummary::new(q, reference);
    let mut parts = 1;
    for (i, &v) in ticks.iter().enumerate() {
        let v = i32::try_from(v).unwrap();
        if part.insert_above(i as u32, v, &ix, floor).is_err() {
            whole.merge(&Summary::from_fixed(&part, 0)).unwrap();
            part = FixedSummary::new(q, reference);
            parts += 1;
            part.insert_above(i as u32, v, &ix, floor).unwrap();
        }
    }
    part.validate().unwrap();
    whole.merge(&Summary::from_fixed(&part, 0)).unwrap();
    (whole, parts)
}

#[test]
fn fixed_form_wide_range_bound_holds() {
    // The fixed form holds i32 ticks; magnitudes 1 ..= 2^22 of both signs
    // (22 octaves) — 304 shared buckets force scale 2.
    let mut rng = StdRng::seed_from_u64(6);
    let e = Uniform::new(0.0, 22.0).unwrap();
    let ticks: Vec<i64> = (0..N)
        .map(|_| {
            let m = 2f64.powf(e.sample(&mut rng)) as i64;
            match rng.random_range(0..20) {
                0 => 0,
                1..=8 => -m,
                _ => m,
            }
        })
        .collect();
    let (widened, parts) = device(Quantum::DEFAULT, 0, &ticks, MIN_SCALE);
    let scale = widened.sketch().scale();
    assert_eq!(scale, 2, "fixed form at scale {scale}");
    // Only full buckets (255) end a part: ~1,200 readings per part at least.
    assert!(parts < N / 1_000, "{parts} parts");
    check("wide fixed", &widened, ticks);
}

#[test]
fn fixed_form_narrow_range_keeps_a_fine_scale() {
    // Temperatures 15..25 °C at 1e-3: one octave-ish, so the fixed form keeps
    // its starting scale and the 0.54 % bound.
    let q = Quantum::new(-3).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let d = Normal::new(20.0, 2.0).unwrap();
    let ticks: Vec<i64> = (0..20_000)
        .map(|_| q.ticks(d.sample(&mut rng)).unwrap())
        .collect();
    let (widened, _) = device(q, 20_000, &ticks, MIN_SCALE);
    assert_eq!(widened.sketch().scale(), 6);
    let worst = check("narrow fixed", &widened, ticks);
    assert!(worst <= 0.0055);
}

#[test]
fn a_bucket_that_holds_one_tick_gives_it_exactly() {
    // At 10⁻² and scale 6 a bucket is ~1.1 % wide: below ~90 ticks each
    // bucket holds at most one tick, so the estimate is the reading itself.
    let q = Quantum::new(-2).unwrap();
    let mut s = Summary::new(q);
    for (t, v) in [3i64, 3, 3, -7, -7, 85, 4_000, 4_001]
        .into_iter()
        .enumerate()
    {
        s.insert(t as i64, v).unwrap();
    }
    assert_eq!(s.sketch().scale(), 6);
    assert_eq!(s.quantile(0.3).unwrap().value, 0.03);
    assert_eq!(s.quantile(0.1).unwrap().value, -0.07);
    assert_eq!(s.quantile(0.75).unwrap().value, 0.85);
    // A wide bucket's estimate stays among its ticks (40.00 and 40.01 share
    // bucket 340, (39.739…, 40.172…], of ticks 3 974..=4 017): within the
    // bound, not exact.
    let p = s.quantile(0.9).unwrap().value;
    assert!((p - 40.0).abs() <= 40.0 * relative_error(6), "{p}");
    assert!((39.74..=40.17).contains(&p), "{p}");
}
