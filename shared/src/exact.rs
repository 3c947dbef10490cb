//! Exact integer statistics turned into `f64` with one rounding.
//!
//! # Design
//! A summary's statistics are exact rationals of its integer moments: the
//! mean Σv·q/n, the variance (nΣv² − (Σv)²)·q²/(n(n−1)), with q = 10^e. Each
//! is formed here as a numerator and a denominator in [`Wide`] (512-bit
//! unsigned integers, no allocation), and only the final quotient is
//! rounded: binary long division yields 54–55 quotient bits and a sticky
//! bit for the remainder, which round to the nearest `f64`, ties to even
//! (IEEE 754 roundTiesToEven, the rounding of every `f64` operation). The
//! standard deviation is the integer square root of the same quotient
//! scaled by 4^k, rounded the same way: the nearest `f64` to the square root
//! of the exact variance.
//!
//! Bounds: n < 2⁶⁴, |Σv| < 2¹²⁸, Σv² < 2¹²⁸ and |e| ≤ 18 keep every
//! numerator below 2³¹³ and every denominator below 2²⁴⁹, well inside 512
//! bits, and every result between 2⁻²⁴⁸ and 2³¹³, a normal `f64`, so the
//! final scaling by a power of two is exact.

use core::cmp::Ordering;

const LIMBS: usize = 8;

/// An unsigned integer of 512 bits (little-endian 64-bit limbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wide([u64; LIMBS]);

impl Wide {
    pub(crate) const ZERO: Wide = Wide([0; LIMBS]);

    pub(crate) fn from_u128(x: u128) -> Wide {
        let mut w = [0; LIMBS];
        w[0] = x as u64;
        w[1] = (x >> 64) as u64;
        Wide(w)
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.0.iter().all(|&l| l == 0)
    }

    /// The number of significant bits (0 for zero).
    pub(crate) fn bits(&self) -> u32 {
        for i in (0..LIMBS).rev() {
            if self.0[i] != 0 {
                return 64 * i as u32 + 64 - self.0[i].leading_zeros();
            }
        }
        0
    }

    /// self × o, `None` past 512 bits.
    pub(crate) fn checked_mul(&self, o: &Wide) -> Option<Wide> {
        if self.bits() + o.bits() > 64 * LIMBS as u32 {
            return None;
        }
        let mut out = [0u64; LIMBS];
        for i in 0..LIMBS {
            if self.0[i] == 0 {
                continue;
            }
            let mut carry = 0u128;
            for j in 0..LIMBS - i {
                let t = u128::from(self.0[i]) * u128::from(o.0[j]) + u128::from(out[i + j]) + carry;
                out[i + j] = t as u64;
                carry = t >> 64;
            }
        }
        Some(Wide(out))
    }

    /// self − o, `None` below zero.
    pub(crate) fn checked_sub(&self, o: &Wide) -> Option<Wide> {
        if *self < *o {
            return None;
        }
        let mut out = [0u64; LIMBS];
        let mut borrow = false;
        for (i, slot) in out.iter_mut().enumerate() {
            let (d, b1) = self.0[i].overflowing_sub(o.0[i]);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            *slot = d;
            borrow = b1 || b2;
        }
        Some(Wide(out))
    }

    /// self · 2^n, `None` past 512 bits.
    fn checked_shl(&self, n: u32) -> Option<Wide> {
        if self.is_zero() {
            return Some(*self);
        }
        if self.bits() + n > 64 * LIMBS as u32 {
            return None;
        }
        let (limbs, bits) = ((n / 64) as usize, n % 64);
        let mut out = [0u64; LIMBS];
        for i in (limbs..LIMBS).rev() {
            let src = i - limbs;
            out[i] = self.0[src] << bits;
            if bits > 0 && src > 0 {
                out[i] |= self.0[src - 1] >> (64 - bits);
            }
        }
        Some(Wide(out))
    }

    /// ⌊self / 2⌋.
    fn shr1(&self) -> Wide {
        let mut out = [0u64; LIMBS];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.0[i] >> 1 | self.0.get(i + 1).map_or(0, |h| h << 63);
        }
        Wide(out)
    }
}

impl PartialOrd for Wide {
    fn partial_cmp(&self, o: &Wide) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Wide {
    fn cmp(&self, o: &Wide) -> Ordering {
        self.0.iter().rev().cmp(o.0.iter().rev())
    }
}

/// 10^k for k ≤ 38.
pub(crate) fn pow10(k: u32) -> Wide {
    Wide::from_u128(10u128.pow(k.min(38)))
}

/// (⌊n / d⌋, n mod d) for a quotient of at most `qbits` (≤ 127) bits, by
/// binary long division; `None` if the quotient would be wider.
fn div_rem(n: Wide, d: Wide, qbits: u32) -> Option<(u128, Wide)> {
    if d.is_zero() || qbits == 0 || qbits > 127 {
        return None;
    }
    let mut ds = d.checked_shl(qbits - 1)?;
    if n.shr1() >= ds {
        return None; // n ≥ d·2^qbits
    }
    let (mut r, mut q) = (n, 0u128);
    for i in (0..qbits).rev() {
        if r >= ds {
            r = r.checked_sub(&ds)?;
            q |= 1 << i;
        }
        ds = ds.shr1();
    }
    Some((q, r))
}

/// The nearest `f64` to (q + f)·2^`exp2`, where q has at least 54 bits and
/// 0 ≤ f < 1 is non-zero exactly when `sticky`; ties to even.
fn round(q: u128, sticky: bool, exp2: i32) -> f64 {
    let extra = (128 - q.leading_zeros()).saturating_sub(53).max(1);
    let mut m = q >> extra;
    let half = (q >> (extra - 1)) & 1 == 1;
    let below = q & ((1u128 << (extra - 1)) - 1) != 0 || sticky;
    if half && (below || m & 1 == 1) {
        m += 1;
    }
    let mut e = exp2 + extra as i32;
    if m == 1 << 53 {
        m >>= 1;
        e += 1;
    }
    // m < 2^53 converts exactly; so does each power of two, and their
    // product is exact while it is a normal float (see the module docs).
    (m as f64) * pow2(e.clamp(-1000, 1000)) * pow2(e - e.clamp(-1000, 1000))
}

/// 2^e for −1022 ≤ e ≤ 1023 (0 or ∞ beyond).
fn pow2(e: i32) -> f64 {
    if e < -1022 {
        0.0
    } else if e > 1023 {
        f64::INFINITY
    } else {
        f64::from_bits(((e + 1023) as u64) << 52)
    }
}

/// The nearest `f64` to ±`num`·10^`exp10`/`den`; `None` if a term passes 512
/// bits or `den` is zero (neither happens within the bounds above).
pub(crate) fn ratio(negative: bool, num: Wide, den: Wide, exp10: i32) -> Option<f64> {
    let (num, den) = scale10(num, den, exp10)?;
    if num.is_zero() {
        return Some(0.0);
    }
    let (nb, db) = (num.bits() as i32, den.bits() as i32);
    // num·2^sh / den lies in (2^53, 2^55): 54 or 55 quotient bits.
    let sh = 54 - nb + db;
    let (n, d) = if sh >= 0 {
        (num.checked_shl(sh as u32)?, den)
    } else {
        (num, den.checked_shl(sh.unsigned_abs())?)
    };
    let (q, r) = div_rem(n, d, 55)?;
    let x = round(q, !r.is_zero(), -sh);
    Some(if negative { -x } else { x })
}

/// The nearest `f64` to √(`num`·10^`exp10`/`den`).
pub(crate) fn sqrt_ratio(num: Wide, den: Wide, exp10: i32) -> Option<f64> {
    let (num, den) = scale10(num, den, exp10)?;
    if num.is_zero() {
        return Some(0.0);
    }
    let (nb, db) = (num.bits() as i32, den.bits() as i32);
    // y = ⌊num·4^k / den⌋ gets 109–111 bits, so ⌊√y⌋ gets 55–56.
    let t = 109 - (nb - db);
    let k = t.div_euclid(2) + t.rem_euclid(2);
    let (n, d) = if k >= 0 {
        (num.checked_shl(2 * k as u32)?, den)
    } else {
        (num, den.checked_shl(2 * k.unsigned_abs())?)
    };
    let (y, r) = div_rem(n, d, 112)?;
    let s = y.isqrt();
    // √(y + f) for 0 ≤ f < 1 lies in [s, s + 1): exact only if both are.
    Some(round(s, s * s != y || !r.is_zero(), -k))
}

/// (num·10^e, den) or (num, den·10^−e).
fn scale10(num: Wide, den: Wide, exp10: i32) -> Option<(Wide, Wide)> {
    if den.is_zero() || exp10.unsigned_abs() > 38 {
        return None;
    }
    let p = pow10(exp10.unsigned_abs());
    Some(if exp10 >= 0 {
        (num.checked_mul(&p)?, den)
    } else {
        (num, den.checked_mul(&p)?)
    })
}

impl Wide {
    /// The low 128 bits, for tests.
    #[cfg(test)]
    pub(crate) fn low(&self) -> u128 {
        u128::from(self.0[0]) | u128::from(self.0[1]) << 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(x: u128) -> Wide {
        Wide::from_u128(x)
    }

    #[test]
    fn wide_arithmetic() {
        let a = w(u128::MAX);
        let sq = a.checked_mul(&a).unwrap();
        assert_eq!(sq.bits(), 256);
        assert_eq!(sq.checked_sub(&sq).unwrap(), Wide::ZERO);
        assert_eq!(w(5).checked_sub(&w(6)), None);
        assert_eq!(w(3).checked_shl(130).unwrap().shr1().bits(), 131);
        assert_eq!(w(1).checked_shl(511).unwrap().bits(), 512);
        assert_eq!(w(1).checked_shl(512), None);
        let (q, r) = div_rem(w(1000), w(7), 10).unwrap();
        assert_eq!((q, r.low()), (142, 6));
        assert_eq!(
            div_rem(w(1024), w(1), 10),
            None,
            "quotient wider than 10 bits"
        );
    }

    /// IEEE division and square root of exactly representable integers are
    /// correctly rounded: a reference for small operands.
    #[test]
    fn matches_ieee_on_small_operands() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u32 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let a = s >> (11 + i % 53);
            let b = (s.rotate_left(29) >> (11 + (i / 7) % 53)).max(1);
            assert_eq!(
                ratio(false, w(a.into()), w(b.into()), 0),
                Some(a as f64 / b as f64)
            );
            assert_eq!(sqrt_ratio(w(a.into()), w(1), 0), Some((a as f64).sqrt()));
        }
        assert_eq!(ratio(true, w(1), w(1), -9), Some(-1e-9));
        assert_eq!(ratio(false, w(13), w(1), 2), Some(1300.0));
    }
}
