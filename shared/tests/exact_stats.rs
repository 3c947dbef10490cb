//! A summary holds the exact count and integer moments of its readings, its
//! sum, mean, variance and standard deviation are the exact rationals of
//! those moments rounded once to the nearest `f64`, and a reading becomes
//! ticks by one rounding of its exact value: checked against the oracle's
//! big-integer rationals (`tributary-oracle`, which shares no code with this
//! crate), on the issue's case and on random cases near the edges — huge
//! counts, sums near the limits, means in (−1, 0) ticks, every quantum.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use num_bigint::{BigInt, BigUint};
use proptest::prelude::*;
use tributary_core::{Quantum, Summary};
use tributary_oracle::Ratio;

/// What the oracle says sum, mean, variance and stddev must be for `n`
/// readings of the quantum 10^`e` whose integer moments are `sum` = Σv and
/// `sum_sq` = Σv² — moments taken from the raw readings ([`moments`]),
/// never from the summary under test.
fn oracle(e: i8, n: u64, sum: &BigInt, sum_sq: &BigInt) -> (f64, f64, Option<f64>, Option<f64>) {
    let e = i32::from(e);
    let total = Ratio::decimal(sum.clone(), e);
    let mean = Ratio::new(total.num.clone(), total.den.clone() * BigUint::from(n)).unwrap();
    let var = (n >= 2).then(|| {
        let m2 = BigInt::from(n) * sum_sq - sum.pow(2);
        let q2 = Ratio::decimal(1, 2 * e);
        Ratio::new(
            m2 * q2.num,
            q2.den * BigUint::from(n) * BigUint::from(n - 1),
        )
        .unwrap()
    });
    (
        total.to_f64(),
        mean.to_f64(),
        var.as_ref().map(Ratio::to_f64),
        var.as_ref().and_then(Ratio::sqrt_to_f64),
    )
}

/// The exact moments (n, Σv, Σv²) of `values` taken 2^`doublings` times,
/// in big integers from the raw values.
fn moments(values: &[i64], doublings: u32) -> (BigInt, BigInt, BigInt) {
    let times = BigInt::from(1) << doublings;
    let sum: BigInt = values.iter().map(|&v| BigInt::from(v)).sum();
    let sum_sq: BigInt = values.iter().map(|&v| BigInt::from(v).pow(2)).sum();
    (
        BigInt::from(values.len()) * &times,
        sum * &times,
        sum_sq * &times,
    )
}

/// Checks that `s`, the summary of `values` taken 2^`doublings` times,
/// holds their exact count and moments and that its statistics are the
/// oracle's for those moments.
fn check(s: &Summary, values: &[i64], doublings: u32) {
    let (n, sum, sum_sq) = moments(values, doublings);
    let what = format!("n={n} Σv={sum} Σv²={sum_sq} q={}", s.quantum());
    assert_eq!(BigInt::from(s.count()), n, "count: {what}");
    assert_eq!(BigInt::from(s.sum_ticks()), sum, "Σv: {what}");
    assert_eq!(BigInt::from(s.sum_sq_ticks()), sum_sq, "Σv²: {what}");
    let n = u64::try_from(n).unwrap();
    let (want_sum, mean, var, sd) = oracle(s.quantum().exponent(), n, &sum, &sum_sq);
    assert_eq!(s.sum(), Some(want_sum), "sum: {what}");
    assert_eq!(s.mean(), Some(mean), "mean: {what}");
    assert_eq!(s.variance(), var, "variance: {what}");
    assert_eq!(s.stddev(), sd, "stddev: {what}");
}

/// Whether moments this large fit no summary: a count past u64, Σv past
/// i128 or Σv² past u128 (DESIGN §2's wide integers).
fn beyond_the_summary(n: &BigInt, sum: &BigInt, sum_sq: &BigInt) -> bool {
    *n > BigInt::from(u64::MAX)
        || *sum > BigInt::from(i128::MAX)
        || *sum < BigInt::from(i128::MIN)
        || *sum_sq > BigInt::from(u128::MAX)
}

/// A summary of `values` doubled up to `doublings` times by merging it
/// with itself (counts up to 2^40 without inserting them all), and the
/// number of doublings applied: it stops before a refused (overflowing)
/// merge.
fn doubled(q: Quantum, values: &[i64], doublings: u32) -> (Summary, u32) {
    let mut s = Summary::new(q);
    for (t, &v) in values.iter().enumerate() {
        s.insert(t as i64, v).unwrap();
    }
    for applied in 0..doublings {
        let copy = s.clone();
        if s.merge(&copy).is_err() {
            return (s, applied);
        }
    }
    (s, doublings)
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
    let mut values = vec![0i64; 999_999];
    values.push(-1);
    check(&s, &values, 0);
}

#[test]
fn means_in_minus_one_to_zero_ticks_are_exact() {
    for e in [-18i8, -9, -6, -3, -1, 0, 2, 18] {
        let q = Quantum::new(e).unwrap();
        for (zeros, minus) in [(1u32, 1u32), (9, 1), (999, 1), (99_999, 3), (7, 5)] {
            let mut v = vec![0i64; zeros as usize];
            v.extend(std::iter::repeat_n(-1, minus as usize));
            let (s, applied) = doubled(q, &v, 20);
            assert_eq!(applied, 20, "far from any limit");
            check(&s, &v, applied);
        }
    }
}

#[test]
fn sums_beyond_two_to_the_53_are_rounded_once() {
    // Σv = 90,771,615,935,544,260 (not an f64): `sum as f64 / 1000` rounds
    // twice and gives 90771615935544.25; the nearest is …544.27.
    let q = Quantum::new(-3).unwrap();
    let mut values = vec![1i64 << 53; 10];
    values.push(699_623_388_134_340);
    let mut s = Summary::new(q);
    for (t, &v) in values.iter().enumerate() {
        s.insert(t as i64, v).unwrap();
    }
    assert_eq!(s.sum_ticks(), 90_771_615_935_544_260);
    assert_eq!(s.sum(), Some(90_771_615_935_544.27));
    check(&s, &values, 0);
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
        let (s, applied) = doubled(Quantum::new(e).unwrap(), &values, doublings);
        if applied < doublings {
            // The summary refused the next doubling: it must be past a limit.
            let (n, sum, sum_sq) = moments(&values, applied + 1);
            prop_assert!(beyond_the_summary(&n, &sum, &sum_sq), "refused at {applied} doublings");
        }
        check(&s, &values, applied);
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
