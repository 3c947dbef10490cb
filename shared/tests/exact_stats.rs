//! Sum, mean, variance and standard deviation are the exact rationals of the
//! integer moments rounded once to the nearest `f64`, and a reading becomes
//! ticks by one rounding of its exact value: checked against the oracle's
//! big-integer rationals (`tributary-oracle`, which shares no code with this
//! crate), on the issue's case and on random cases near the edges — huge
//! counts, sums near the limits, means in (−1, 0) ticks, every quantum.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use num_bigint::{BigInt, BigUint};
use proptest::prelude::*;
use tributary_core::{Quantum, Summary};
use tributary_oracle::Ratio;

/// What the oracle says sum, mean, variance and stddev of `s` must be, from
/// its count and integer moments.
fn oracle(s: &Summary) -> (f64, f64, Option<f64>, Option<f64>) {
    let e = i32::from(s.quantum().exponent());
    let n = s.count();
    let sum = Ratio::decimal(s.sum_ticks(), e);
    let mean = Ratio::new(sum.num.clone(), sum.den.clone() * BigUint::from(n)).unwrap();
    let var = (n >= 2).then(|| {
        let m2 =
            BigInt::from(n) * BigInt::from(s.sum_sq_ticks()) - BigInt::from(s.sum_ticks()).pow(2);
        let q2 = Ratio::decimal(1, 2 * e);
        Ratio::new(
            m2 * q2.num,
            q2.den * BigUint::from(n) * BigUint::from(n - 1),
        )
        .unwrap()
    });
    (
        sum.to_f64(),
        mean.to_f64(),
        var.as_ref().map(Ratio::to_f64),
        var.as_ref().and_then(Ratio::sqrt_to_f64),
    )
}

fn check(s: &Summary) {
    let (sum, mean, var, sd) = oracle(s);
    let what = format!(
        "n={} Σv={} Σv²={} q={}",
        s.count(),
        s.sum_ticks(),
        s.sum_sq_ticks(),
        s.quantum()
    );
    assert_eq!(s.sum(), Some(sum), "sum: {what}");
    assert_eq!(s.mean(), Some(mean), "mean: {what}");
    assert_eq!(s.variance(), var, "variance: {what}");
    assert_eq!(s.stddev(), sd, "stddev: {what}");
}

/// A summary of `values` doubled `doublings` times by merging it with
/// itself (counts up to 2^40 without inserting them all); stops doubling
/// before an overflow.
fn doubled(q: Quantum, values: &[i64], doublings: u32) -> Summary {
    let mut s = Summary::new(q);
    for (t, &v) in values.iter().enumerate() {
        s.insert(t as i64, v).unwrap();
    }
    for _ in 0..doublings {
        let copy = s.clone();
        if s.merge(&copy).is_err() {
            break;
        }
    }
    s
}

/// The issue: 999,999 zeros and one −0.001 at a 0.001 quantum have the mean
/// −1e-9 (main gave −1.0000000000287558e-09, 139,000 ulps off).
#[test]
fn the_issue_case_is_exact() {
    let q = Quantum::new(-3).unwrap();
    let mut s = Summary::new(q);
    for t in 0..999_999 {
        s.insert(t, 0).unwrap();
    }
    s.insert(1_000_000, -1).unwrap();
    assert_eq!(s.mean(), Some(-1e-9));
    assert_eq!(s.variance(), Some(1e-12));
    assert_eq!(s.stddev(), Some(1e-6));
    assert_eq!(s.sum(), Some(-0.001));
    check(&s);
}

#[test]
fn means_in_minus_one_to_zero_ticks_are_exact() {
    for e in [-18i8, -9, -6, -3, -1, 0, 2, 18] {
        let q = Quantum::new(e).unwrap();
        for (zeros, minus) in [(1u32, 1u32), (9, 1), (999, 1), (99_999, 3), (7, 5)] {
            let mut v = vec![0i64; zeros as usize];
            v.extend(std::iter::repeat_n(-1, minus as usize));
            check(&doubled(q, &v, 20));
        }
    }
}

#[test]
fn sums_beyond_two_to_the_53_are_rounded_once() {
    // Σv = 90,771,615,935,544,260 (not an f64): `sum as f64 / 1000` rounds
    // twice and gives 90771615935544.25; the nearest is …544.27.
    let q = Quantum::new(-3).unwrap();
    let mut s = Summary::new(q);
    for t in 0..10 {
        s.insert(t, 1 << 53).unwrap();
    }
    s.insert(10, 699_623_388_134_340).unwrap();
    assert_eq!(s.sum_ticks(), 90_771_615_935_544_260);
    assert_eq!(s.sum(), Some(90_771_615_935_544.27));
    check(&s);
}

fn edge_value() -> impl Strategy<Value = i64> {
    let max = 1i64 << 53;
    prop_oneof![
        -3i64..=3,
        (max - 1000)..=max,
        -max..=(-max + 1000),
        -max..=max,
        -1_000_000i64..1_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn statistics_are_the_nearest_floats_to_the_exact_rationals(
        e in -18i8..=18,
        values in prop::collection::vec(edge_value(), 1..12),
        doublings in 0u32..40,
    ) {
        check(&doubled(Quantum::new(e).unwrap(), &values, doublings));
    }

    #[test]
    fn ticks_round_once_half_away_from_zero(
        e in -18i8..=18,
        ticks in -(1i64 << 53)..=(1i64 << 53),
        wiggle in -4i64..=4,
        half in any::<bool>(),
    ) {
        // A float near (ticks ± ½)·q, where double rounding shows.
        let q = Quantum::new(e).unwrap();
        let target = Ratio::decimal(2 * i128::from(ticks) + i128::from(half), i32::from(e) ).to_f64() / 2.0;
        let x = f64::from_bits((target.to_bits() as i64 + wiggle) as u64);
        prop_assume!(x.is_finite());
        // round(|x|/q) half away from zero, from x's exact value.
        let r = Ratio::of_f64(x).unwrap().mul(&Ratio::decimal(1, -i32::from(e)));
        let twice = r.abs().mul(&Ratio::int(2));
        let want: BigInt = (twice.floor() + BigInt::from(1)) / BigInt::from(2); // ⌊|r| + ½⌋
        let want = if x < 0.0 { -want } else { want };
        let got = q.ticks(x);
        if want.magnitude() > &BigUint::from(1u64 << 53) {
            prop_assert!(got.is_err());
        } else {
            prop_assert_eq!(got.map(BigInt::from), Ok(want), "x = {:e}", x);
        }
    }
}

/// Inputs where scaling in floating point first (main's `Quantum::ticks`)
/// lands a tick off: 8349185244583.8125 × 1000 is 8349185244583812.5 exactly
/// (a tie, away from zero: …813), but the float product rounds to …812.
#[test]
fn ticks_of_large_readings_are_not_a_tick_off() {
    let q = Quantum::new(-3).unwrap();
    assert_eq!(q.ticks(8_349_185_244_583.812_5), Ok(8_349_185_244_583_813));
    assert_eq!(
        q.ticks(-8_349_185_244_583.812_5),
        Ok(-8_349_185_244_583_813)
    );
    assert_eq!(q.ticks(146_432_819_809.945_5), Ok(146_432_819_809_945));
    let q6 = Quantum::new(-6).unwrap();
    assert_eq!(q6.ticks(1_445_743_417.556_305_4), Ok(1_445_743_417_556_305));
    let q2 = Quantum::new(2).unwrap();
    assert_eq!(
        q2.ticks(1.130_807_299_512_557_4e17),
        Ok(1_130_807_299_512_557)
    );
}
