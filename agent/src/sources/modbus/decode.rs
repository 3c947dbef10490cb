//! From register words to ticks of the series' quantum: the words read as
//! the register's type ([`raw`]), then scaled by
//! [`crate::sources::scaling`] ([`ticks`]): exact for integer registers,
//! rounded once for `float32`/`float64`.

use crate::sources::scaling::{DecodeError, Scaling};

use super::config::{DataType, Order};

/// The raw value in `words` (exactly `t.words()` of them, as read).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    /// An integer type.
    Int(i128),
    /// A float type.
    Float(f64),
}

/// Reads `words` as `t` with the given byte order (within each word) and
/// word order (within the value); `None` if the count is not `t.words()`.
pub fn raw(words: &[u16], t: DataType, bytes: Order, order: Order) -> Option<Raw> {
    if words.len() != usize::from(t.words()) {
        return None;
    }
    let fix = |w: u16| match bytes {
        Order::Big => w,
        Order::Little => w.swap_bytes(),
    };
    let mut bits: u64 = 0;
    let mut push = |w: u16| bits = (bits << 16) | u64::from(fix(w));
    match order {
        Order::Big => words.iter().copied().for_each(&mut push),
        Order::Little => words.iter().rev().copied().for_each(&mut push),
    }
    // Truncating casts reinterpret the value's own bits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    Some(match t {
        DataType::Int16 => Raw::Int(i128::from(bits as u16 as i16)),
        DataType::Uint16 => Raw::Int(i128::from(bits as u16)),
        DataType::Int32 => Raw::Int(i128::from(bits as u32 as i32)),
        DataType::Uint32 => Raw::Int(i128::from(bits as u32)),
        DataType::Int64 => Raw::Int(i128::from(bits as i64)),
        DataType::Uint64 => Raw::Int(i128::from(bits)),
        DataType::Float32 => Raw::Float(f64::from(f32::from_bits(bits as u32))),
        DataType::Float64 => Raw::Float(f64::from_bits(bits)),
    })
}

/// Ticks of `raw` under `scaling`.
pub fn ticks(raw: Raw, scaling: &Scaling) -> Result<i64, DecodeError> {
    match raw {
        Raw::Int(v) => scaling.int(v),
        Raw::Float(v) => scaling.float(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_core::Quantum;

    fn q(e: i8) -> Quantum {
        Quantum::new(e).unwrap()
    }

    #[test]
    fn words_read_in_every_order() {
        use DataType::*;
        use Order::*;
        let w = [0x1234, 0x5678];
        let r = |t, b, o| raw(&w, t, b, o).unwrap();
        assert_eq!(r(Uint32, Big, Big), Raw::Int(0x1234_5678));
        assert_eq!(r(Uint32, Big, Little), Raw::Int(0x5678_1234));
        assert_eq!(r(Uint32, Little, Big), Raw::Int(0x3412_7856));
        assert_eq!(r(Uint32, Little, Little), Raw::Int(0x7856_3412));
        assert_eq!(raw(&[0xFFFE], Int16, Big, Big), Some(Raw::Int(-2)));
        assert_eq!(raw(&[0xFFFE], Uint16, Big, Big), Some(Raw::Int(65534)));
        let f = 21.5f32.to_bits();
        let words = [(f >> 16) as u16, f as u16];
        assert_eq!(raw(&words, Float32, Big, Big), Some(Raw::Float(21.5)));
        let words = [0xFFFF; 4];
        assert_eq!(raw(&words, Int64, Big, Big), Some(Raw::Int(-1)));
        assert_eq!(
            raw(&words, Uint64, Big, Big),
            Some(Raw::Int(i128::from(u64::MAX)))
        );
        assert_eq!(raw(&w, Int16, Big, Big), None, "wrong word count");
    }

    #[test]
    fn float_registers_round_once_to_the_quantum() {
        let s = Scaling::new(0.5, 1.0, q(-2), true).unwrap();
        assert_eq!(ticks(Raw::Float(21.5), &s), Ok(1175));
        assert!(ticks(Raw::Float(f64::NAN), &s).is_err());
    }
}
