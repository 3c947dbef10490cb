//! The quantum of a series: readings become exact integers.
//!
//! Every series has a quantum *q* = 10^e of its unit (default 10⁻⁶). A reading
//! *x* is held as the integer tick count *v* = round(*x*/*q*), rounded half away
//! from zero — once, from the exact binary value of *x* (scaling *x* in
//! floating point first would round twice and miss by a tick above ~10¹⁴). Everything downstream — sums, squares, sketch indices — is then
//! integer arithmetic, which is what makes merged results bit-identical
//! whatever the merge order (DESIGN §2).
//!
//! Conversion refuses NaN, infinities and values whose tick count would exceed
//! [`MAX_TICKS`] (2⁵³, the largest range in which every integer is exactly
//! representable as an `f64`).

use core::fmt;

use serde::{Deserialize, Serialize};

/// The largest tick magnitude a summary accepts: 2⁵³.
pub const MAX_TICKS: i64 = 1 << 53;

/// Powers of ten that are exact in `f64` (10⁰ ..= 10²²).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Why a reading could not be turned into ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The reading was NaN.
    #[error("reading is NaN")]
    NaN,
    /// The reading was +∞ or −∞.
    #[error("reading is infinite")]
    Infinite,
    /// The reading is too large for the series' quantum.
    #[error("reading is out of range for the quantum: |ticks| would exceed 2^53")]
    OutOfRange,
}

/// A quantum 10^`exponent` of a series' unit; `exponent` lies in
/// [`Quantum::MIN_EXPONENT`, `Quantum::MAX_EXPONENT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i8", into = "i8")]
pub struct Quantum(i8);

/// A quantum exponent outside the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("quantum exponent {0} is outside -18..=18")]
pub struct QuantumError(pub i8);

impl Quantum {
    /// Smallest exponent (10⁻¹⁸).
    pub const MIN_EXPONENT: i8 = -18;
    /// Largest exponent (10¹⁸).
    pub const MAX_EXPONENT: i8 = 18;
    /// The default quantum, 10⁻⁶ of the unit.
    pub const DEFAULT: Quantum = Quantum(-6);

    /// The quantum 10^`exponent`.
    pub const fn new(exponent: i8) -> Result<Self, QuantumError> {
        if exponent < Self::MIN_EXPONENT || exponent > Self::MAX_EXPONENT {
            Err(QuantumError(exponent))
        } else {
            Ok(Quantum(exponent))
        }
    }

    /// The decimal exponent.
    pub const fn exponent(self) -> i8 {
        self.0
    }

    /// Converts a reading in the series' unit to ticks: round(x / q), half away
    /// from zero, rounded once from the exact value of `x` (see
    /// [`exact_ticks`]).
    pub fn ticks(self, x: f64) -> Result<i64, ValueError> {
        if x.is_nan() {
            return Err(ValueError::NaN);
        }
        if x.is_infinite() {
            return Err(ValueError::Infinite);
        }
        let t = exact_ticks(x, self.0).ok_or(ValueError::OutOfRange)?;
        if t > MAX_TICKS.unsigned_abs() {
            return Err(ValueError::OutOfRange);
        }
        // t ≤ 2^53, so the cast is exact.
        Ok(if x < 0.0 { -(t as i64) } else { t as i64 })
    }

    /// Converts ticks back to the series' unit (correctly rounded).
    pub fn value(self, ticks: i64) -> f64 {
        self.scale(ticks as f64)
    }

    /// Multiplies a tick-valued `f64` (a mean, a quantile) by the quantum.
    pub fn scale(self, ticks: f64) -> f64 {
        let p = POW10[usize::from(self.0.unsigned_abs())];
        if self.0 <= 0 {
            ticks / p
        } else {
            ticks * p
        }
    }
}

impl Default for Quantum {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<i8> for Quantum {
    type Error = QuantumError;
    fn try_from(e: i8) -> Result<Self, QuantumError> {
        Quantum::new(e)
    }
}

impl From<Quantum> for i8 {
    fn from(q: Quantum) -> i8 {
        q.0
    }
}

impl fmt::Display for Quantum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1e{}", self.0)
    }
}

/// |x|·10^−`e` rounded half away from zero, computed exactly: a finite `x`
/// is m·2^E with an integer m < 2⁵³, so |x|·10^−e is the rational
/// m·2^E·10^−e, whose quotient and remainder in `u128` decide the rounding
/// (one rounding, where scaling `x` in floating point first would round
/// twice). `None` when the result exceeds 2¹²⁸ (far out of any range).
fn exact_ticks(x: f64, e: i8) -> Option<u64> {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = u128::from(bits & ((1 << 52) - 1));
    let (m, exp2) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | 1 << 52, biased - 1075)
    };
    if m == 0 {
        return Some(0);
    }
    let p = 10u128.pow(u32::from(e.unsigned_abs()));
    let (mut num, mut den) = (m, 1u128);
    if exp2 >= 0 {
        num = num.checked_shl(exp2 as u32).filter(|n| n >> exp2 == m)?;
    } else if exp2 < -115 {
        // |x|·10^−e < 2⁵³·10¹⁸·2⁻¹¹⁵ < ½.
        return Some(0);
    } else {
        den <<= exp2.unsigned_abs();
    }
    if e <= 0 {
        num = num.checked_mul(p)?;
    } else {
        match den.checked_mul(p) {
            Some(d) => den = d,
            // den ≥ 2¹²⁸ with num < 2⁵³ (exp2 < 0 here): below ½.
            None if exp2 < 0 => return Some(0),
            None => return None,
        }
    }
    let (q, r) = (num / den, num % den);
    let q = if r >= den - r { q.checked_add(1)? } else { q };
    u64::try_from(q).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_rounds_half_away_from_zero() {
        let q = Quantum::new(-3).unwrap();
        assert_eq!(q.ticks(21.5).unwrap(), 21_500);
        assert_eq!(q.ticks(0.0005).unwrap(), 1);
        assert_eq!(q.ticks(-0.0005).unwrap(), -1);
        assert_eq!(q.ticks(0.00049).unwrap(), 0);
        assert_eq!(q.ticks(-12.3456).unwrap(), -12_346);
        let coarse = Quantum::new(2).unwrap();
        assert_eq!(coarse.ticks(1250.0).unwrap(), 13);
        assert_eq!(coarse.value(13), 1300.0);
        assert_eq!(q.value(21_500), 21.5);
    }

    #[test]
    fn refuses_nan_infinite_and_out_of_range() {
        let q = Quantum::DEFAULT;
        assert_eq!(q.ticks(f64::NAN), Err(ValueError::NaN));
        assert_eq!(q.ticks(f64::INFINITY), Err(ValueError::Infinite));
        assert_eq!(q.ticks(f64::NEG_INFINITY), Err(ValueError::Infinite));
        assert_eq!(q.ticks(1e10), Err(ValueError::OutOfRange));
        assert_eq!(q.ticks(-1e10), Err(ValueError::OutOfRange));
        assert!(q.ticks(9.0e9).is_ok());
    }

    #[test]
    fn exponent_range_is_enforced() {
        assert_eq!(Quantum::new(19), Err(QuantumError(19)));
        assert_eq!(Quantum::new(-19), Err(QuantumError(-19)));
        assert!(serde_json::from_str::<Quantum>("-40").is_err());
        assert_eq!(
            serde_json::from_str::<Quantum>("-6").unwrap(),
            Quantum::DEFAULT
        );
    }
}
