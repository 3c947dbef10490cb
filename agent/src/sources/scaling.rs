//! Scale and offset into ticks of a series' quantum, shared by the polled
//! industrial inputs (Modbus registers, OPC UA monitored items).
//!
//! # Design
//! An integer value lands on the quantum exactly: `scale` and `offset` are
//! taken as the decimals they are written as (the shortest decimal that
//! reads back as the same `f64`, so `0.1` is one tenth, not the binary
//! float nearest it), and
//! `ticks = raw × scale_m × 10^(scale_e − q) + offset_m × 10^(offset_e − q)`
//! in checked 128-bit integers. A config whose scale or offset is finer than
//! the quantum (scale 0.001 with quantum 10⁻²) could not be exact for every
//! raw value and is refused at load, saying so. A result outside `i64` is
//! refused per reading ([`DecodeError::Overflow`]).
//!
//! A float value is computed as `raw × scale + offset` in `f64` and rounded
//! once to the quantum by [`Quantum::ticks`] (half away from zero); NaN and
//! infinities are refused per reading.

use tributary_core::Quantum;

/// Why one register's value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Scaled, it does not fit the quantum's 64-bit ticks.
    #[error("the scaled value does not fit 64-bit ticks")]
    Overflow,
    /// A float that is NaN, infinite or out of range.
    #[error("float value refused: {0}")]
    Float(String),
}

/// A decimal `m × 10^e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    /// Mantissa.
    pub m: i128,
    /// Exponent.
    pub e: i32,
}

impl Decimal {
    /// The shortest decimal that reads back as `x` (Rust's `Display` of an
    /// `f64`), trailing zeros folded into the exponent; `None` for NaN,
    /// infinities and more than 30 significant digits.
    pub fn of(x: f64) -> Option<Decimal> {
        if !x.is_finite() {
            return None;
        }
        let text = format!("{x}");
        let (neg, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all = format!("{int}{frac}");
        let all = all.trim_start_matches('0');
        if all.len() > 30 {
            return None;
        }
        let mut m: i128 = if all.is_empty() { 0 } else { all.parse().ok()? };
        let mut e = -i32::try_from(frac.len()).ok()?;
        while m != 0 && m % 10 == 0 {
            m /= 10;
            e += 1;
        }
        if m == 0 {
            e = 0;
        }
        Some(Decimal {
            m: if neg { -m } else { m },
            e,
        })
    }

    /// `m × 10^(e − q)` if that is an integer, i.e. `e ≥ q` (0 is always).
    fn in_ticks(self, q: i32) -> Option<i128> {
        if self.m == 0 {
            return Some(0);
        }
        let shift = u32::try_from(self.e.checked_sub(q)?).ok()?;
        self.m.checked_mul(10i128.checked_pow(shift)?)
    }
}

/// How a register's raw value becomes ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// Integer registers: `ticks = raw × mul + add`, exact.
    Exact {
        /// The scale in ticks per raw unit.
        mul: i128,
        /// The offset in ticks.
        add: i128,
    },
    /// Float registers: `raw × scale + offset`, rounded once to the quantum.
    Float {
        /// Scale.
        scale: f64,
        /// Offset.
        offset: f64,
        /// The series' quantum.
        quantum: Quantum,
    },
}

impl Scaling {
    /// The scaling of `raw × scale + offset` into ticks of `quantum`;
    /// refused where an integer register could not land on it exactly.
    pub fn new(scale: f64, offset: f64, quantum: Quantum, float: bool) -> Result<Scaling, String> {
        if float {
            if !scale.is_finite() || !offset.is_finite() {
                return Err("scale and offset must be finite".into());
            }
            return Ok(Scaling::Float {
                scale,
                offset,
                quantum,
            });
        }
        let q = i32::from(quantum.exponent());
        let exact = |what: &str, x: f64| {
            let d = Decimal::of(x).ok_or_else(|| format!("{what} {x} is not a usable decimal"))?;
            d.in_ticks(q).ok_or_else(|| {
                format!(
                    "{what} {x} is finer than the quantum 10^{q} (or too large): an integer \
                     register times it would not land on the quantum exactly; use quantum ≤ {}",
                    d.e
                )
            })
        };
        Ok(Scaling::Exact {
            mul: exact("scale", scale)?,
            add: exact("offset", offset)?,
        })
    }

    /// Ticks of an integer raw value.
    pub fn int(&self, raw: i128) -> Result<i64, DecodeError> {
        match *self {
            Scaling::Exact { mul, add } => raw
                .checked_mul(mul)
                .and_then(|v| v.checked_add(add))
                .and_then(|v| i64::try_from(v).ok())
                .ok_or(DecodeError::Overflow),
            // A float register's scaling never sees an integer raw value.
            Scaling::Float { .. } => self.float(raw as f64),
        }
    }

    /// Ticks of a float raw value.
    pub fn float(&self, raw: f64) -> Result<i64, DecodeError> {
        match *self {
            Scaling::Float {
                scale,
                offset,
                quantum,
            } => quantum
                .ticks(raw * scale + offset)
                .map_err(|e| DecodeError::Float(e.to_string())),
            Scaling::Exact { .. } => Err(DecodeError::Float("not a float register".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(e: i8) -> Quantum {
        Quantum::new(e).unwrap()
    }

    #[test]
    fn decimals_are_the_written_ones() {
        assert_eq!(Decimal::of(0.1), Some(Decimal { m: 1, e: -1 }));
        assert_eq!(Decimal::of(-2.5), Some(Decimal { m: -25, e: -1 }));
        assert_eq!(Decimal::of(1500.0), Some(Decimal { m: 15, e: 2 }));
        assert_eq!(Decimal::of(0.0), Some(Decimal { m: 0, e: 0 }));
        assert_eq!(Decimal::of(1e-7), Some(Decimal { m: 1, e: -7 }));
        assert_eq!(Decimal::of(f64::NAN), None);
    }

    #[test]
    fn integer_registers_land_on_the_quantum_exactly() {
        // 0.1 × raw − 40 in hundredths: raw 1234 → 83.4 → 8340 ticks.
        let s = Scaling::new(0.1, -40.0, q(-2), false).unwrap();
        assert_eq!(
            s,
            Scaling::Exact {
                mul: 10,
                add: -4000
            }
        );
        assert_eq!(s.int(1234), Ok(8340));
        assert_eq!(s.int(0), Ok(-4000));
        // A float multiply would give 0.1 × 3 = 0.30000000000000004.
        let s = Scaling::new(0.1, 0.0, q(-1), false).unwrap();
        assert_eq!(s.int(3), Ok(3));
        assert_eq!(s.int(i128::from(u64::MAX)), Err(DecodeError::Overflow));
    }

    #[test]
    fn scales_finer_than_the_quantum_are_refused() {
        let e = Scaling::new(0.001, 0.0, q(-2), false).unwrap_err();
        assert!(e.contains("finer than the quantum"), "{e}");
        assert!(Scaling::new(1.0, 0.05, q(-1), false).is_err());
        assert!(
            Scaling::new(0.001, 0.0, q(-2), true).is_ok(),
            "floats round"
        );
    }
}
