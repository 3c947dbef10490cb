//! Exact rationals and the `f64` nearest to one.
//!
//! # Design
//! A statistic is an exact rational r = num/den (big integers). Its `f64` is
//! found by *guess and verify*, not by computing it digit by digit (which is
//! how the code under test does it): a guess from ordinary float arithmetic,
//! then exact comparisons of r with the midpoints between the guess and its
//! neighbours, stepping until r lies between them. The result is the `f64`
//! nearest r, ties to the one with an even significand — IEEE 754
//! roundTiesToEven, the rounding of every `f64` operation. Square roots are
//! found the same way, comparing r with the *squares* of the midpoints, so
//! √r is rounded once, from the exact r.

use core::cmp::Ordering;

use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{One, Signed, ToPrimitive, Zero};

/// An exact rational number; the denominator is positive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ratio {
    /// The numerator.
    pub num: BigInt,
    /// The denominator (> 0).
    pub den: BigUint,
}

impl Ratio {
    /// num/den; `None` when `den` is zero.
    pub fn new(num: BigInt, den: BigUint) -> Option<Ratio> {
        (!den.is_zero()).then_some(Ratio { num, den })
    }

    /// The integer `n`.
    pub fn int(n: impl Into<BigInt>) -> Ratio {
        Ratio {
            num: n.into(),
            den: BigUint::one(),
        }
    }

    /// The exact value of a finite `f64` (`None` for NaN and ±∞).
    pub fn of_f64(x: f64) -> Option<Ratio> {
        if !x.is_finite() {
            return None;
        }
        let bits = x.to_bits();
        let negative = bits >> 63 == 1;
        let exp = ((bits >> 52) & 0x7ff) as i32;
        let frac = bits & ((1 << 52) - 1);
        // Subnormals have no hidden bit and the exponent of the smallest normal.
        let (m, e) = if exp == 0 {
            (frac, -1074)
        } else {
            (frac | 1 << 52, exp - 1075)
        };
        let m = BigInt::from(m);
        let m = if negative { -m } else { m };
        Some(if e >= 0 {
            Ratio::int(m << e as u32)
        } else {
            Ratio {
                num: m,
                den: BigUint::one() << (-e) as u32,
            }
        })
    }

    /// v·10^`exponent`: a tick count in the unit of its quantum.
    pub fn decimal(v: impl Into<BigInt>, exponent: i32) -> Ratio {
        let p = BigUint::from(10u32).pow(exponent.unsigned_abs());
        if exponent >= 0 {
            Ratio::int(v.into() * BigInt::from(p))
        } else {
            Ratio {
                num: v.into(),
                den: p,
            }
        }
    }

    /// Whether this is zero.
    pub fn is_zero(&self) -> bool {
        self.num.is_zero()
    }

    /// Whether this is below zero.
    pub fn is_negative(&self) -> bool {
        self.num.is_negative()
    }

    /// |self|.
    pub fn abs(&self) -> Ratio {
        Ratio {
            num: self.num.abs(),
            den: self.den.clone(),
        }
    }

    /// self × other.
    pub fn mul(&self, other: &Ratio) -> Ratio {
        Ratio {
            num: &self.num * &other.num,
            den: &self.den * &other.den,
        }
    }

    /// self^`k`.
    pub fn pow(&self, k: u32) -> Ratio {
        Ratio {
            num: self.num.pow(k),
            den: self.den.pow(k),
        }
    }

    /// ⌊self⌋.
    pub fn floor(&self) -> BigInt {
        num_integer::Integer::div_floor(&self.num, &BigInt::from(self.den.clone()))
    }

    /// A float near the value (not necessarily the nearest): the start of a
    /// search. Big numerators and denominators are cut to their top 64 bits
    /// first, so neither overflows.
    fn approx(&self) -> f64 {
        let (n, ns) = top_bits(self.num.magnitude());
        let (d, ds) = top_bits(&self.den);
        let x = n / d * 2f64.powi(ns - ds);
        if self.num.is_negative() {
            -x
        } else {
            x
        }
    }

    /// The `f64` nearest this value, ties to even (see the module docs).
    pub fn to_f64(&self) -> f64 {
        if self.is_zero() {
            return 0.0;
        }
        let mut g = self.approx();
        if !g.is_finite() {
            return g;
        }
        loop {
            let (lo, hi) = (midpoint(next_down(g), g), midpoint(g, next_up(g)));
            match (self.cmp(&lo), self.cmp(&hi)) {
                (Ordering::Less, _) => g = next_down(g),
                (_, Ordering::Greater) => g = next_up(g),
                (Ordering::Equal, _) if odd(g) => return next_down(g),
                (_, Ordering::Equal) if odd(g) => return next_up(g),
                _ => return g,
            }
        }
    }

    /// The `f64` nearest √self, ties to even; `None` below zero.
    pub fn sqrt_to_f64(&self) -> Option<f64> {
        if self.is_negative() {
            return None;
        }
        if self.is_zero() {
            return Some(0.0);
        }
        let mut g = self.approx().sqrt();
        loop {
            // Midpoints of positive neighbours are positive, so comparing
            // squares compares the roots.
            let lo = midpoint(next_down(g), g).pow(2);
            let hi = midpoint(g, next_up(g)).pow(2);
            match (self.cmp(&lo), self.cmp(&hi)) {
                (Ordering::Less, _) => g = next_down(g),
                (_, Ordering::Greater) => g = next_up(g),
                (Ordering::Equal, _) if odd(g) => return Some(next_down(g)),
                (_, Ordering::Equal) if odd(g) => return Some(next_up(g)),
                _ => return Some(g),
            }
        }
    }
}

impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Ratio) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ratio {
    fn cmp(&self, other: &Ratio) -> Ordering {
        let l = &self.num * BigInt::from(other.den.clone());
        let r = &other.num * BigInt::from(self.den.clone());
        l.cmp(&r)
    }
}

/// The top 64 bits of `n` as a float and the shift they were taken at.
fn top_bits(n: &BigUint) -> (f64, i32) {
    let bits = n.bits();
    let shift = bits.saturating_sub(64);
    let top = (n >> shift).to_u64().unwrap_or(u64::MAX);
    (top as f64, shift as i32)
}

/// The exact midpoint of two finite floats.
fn midpoint(a: f64, b: f64) -> Ratio {
    let (Some(a), Some(b)) = (Ratio::of_f64(a), Ratio::of_f64(b)) else {
        // Only the neighbour of the largest finite float is infinite: a
        // value past it rounds to it, so an unreachable midpoint will do.
        return Ratio::int(BigInt::from_biguint(Sign::Plus, BigUint::one() << 2000));
    };
    Ratio {
        num: &a.num * BigInt::from(b.den.clone()) + &b.num * BigInt::from(a.den.clone()),
        den: (a.den * b.den) << 1,
    }
}

/// Whether the significand of `x` is odd.
fn odd(x: f64) -> bool {
    x.to_bits() & 1 == 1
}

/// The next float above `x` (finite `x`).
pub fn next_up(x: f64) -> f64 {
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// The next float below `x` (finite `x`).
pub fn next_down(x: f64) -> f64 {
    -next_up(-x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: i128, d: u128) -> Ratio {
        Ratio::new(BigInt::from(n), BigUint::from(d)).unwrap()
    }

    /// IEEE division and square root of exactly representable integers are
    /// correctly rounded by the hardware: an independent reference.
    #[test]
    fn matches_ieee_division_and_sqrt_of_exact_integers() {
        let mut s = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for i in 0..20_000 {
            let bits = 1 + (i % 53) as u32;
            let a = (next() >> (64 - bits)) as i64 * if i % 3 == 0 { -1 } else { 1 };
            let b = (next() >> (64 - 1 - (i % 53) as u32)).max(1);
            let want = a as f64 / b as f64;
            assert_eq!(r(a.into(), b.into()).to_f64(), want, "{a}/{b}");
            let want = (a.unsigned_abs() as f64).sqrt();
            assert_eq!(
                r(a.unsigned_abs().into(), 1).sqrt_to_f64(),
                Some(want),
                "√{a}"
            );
        }
    }

    #[test]
    fn ties_go_to_even() {
        // 2^53 + 1 lies halfway between 2^53 and 2^53 + 2.
        let two53 = 1i128 << 53;
        assert_eq!(r(two53 + 1, 1).to_f64(), two53 as f64);
        assert_eq!(r(two53 + 3, 1).to_f64(), (two53 + 4) as f64);
        assert_eq!(r(-(two53 + 3), 1).to_f64(), -(two53 + 4) as f64);
    }

    #[test]
    fn the_issue_mean_is_minus_one_billionth() {
        // 999,999 zeros and one −0.001 at a 0.001 quantum.
        let mean = r(-1, 1_000_000_000);
        assert_eq!(mean.to_f64(), -1e-9);
    }

    #[test]
    fn floats_convert_exactly() {
        for x in [0.1, -2.5, 1e-300, 5e-324, f64::MAX, -0.0] {
            let q = Ratio::of_f64(x).unwrap();
            assert_eq!(q.to_f64(), x);
        }
        assert_eq!(Ratio::decimal(-12_346, -3).to_f64(), -12.346);
        assert_eq!(Ratio::decimal(13, 2).to_f64(), 1300.0);
        assert!(Ratio::of_f64(f64::NAN).is_none());
        assert_eq!(r(-7, 2).floor(), BigInt::from(-4));
    }

    #[test]
    fn big_ratios_round_correctly() {
        // (2^200 + 1) / 2^100 is 2^100 (the +1 is far below half an ulp).
        let n = (BigInt::one() << 200u32) + 1;
        let q = Ratio::new(n, BigUint::one() << 100u32).unwrap();
        assert_eq!(q.to_f64(), 2f64.powi(100));
        // √(10^40 / 9) = 10^20 / 3.
        let q = Ratio::new(BigInt::from(10u32).pow(40), BigUint::from(9u32)).unwrap();
        assert_eq!(q.sqrt_to_f64(), Some(1e20 / 3.0));
    }
}
