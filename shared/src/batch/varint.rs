//! The primitives of the binary batch encoding: LEB128 varints (as
//! postcard writes them), zigzag for signed values, and a bounded reader
//! whose every read checks the bytes that remain.

use alloc::vec::Vec;

use super::BinaryError;

/// Appends `v` as an unsigned LEB128 varint (7 bits a byte, low first).
pub(super) fn put(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-coded (0, −1, 1, −2, … → 0, 1, 2, 3, …).
pub(super) fn put_signed(out: &mut Vec<u8>, v: i128) {
    put(out, zigzag(v));
}

/// Appends a length-prefixed byte string.
pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put(out, b.len() as u128);
    out.extend_from_slice(b);
}

/// Appends `counts` in `bits` (1..=64) bits each, low bit first, padded to
/// a whole byte (a count wider than `bits` loses its high bits: callers
/// pass the width of the largest).
pub(super) fn put_packed(out: &mut Vec<u8>, counts: impl Iterator<Item = u64>, bits: u32) {
    let (mut acc, mut held) = (0u128, 0u32);
    let mask = u128::from(u64::MAX) >> (64 - bits);
    for c in counts {
        acc |= (u128::from(c) & mask) << held;
        held += bits;
        while held >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            held -= 8;
        }
    }
    if held > 0 {
        out.push(acc as u8);
    }
}

/// `v` zigzag-coded (0, −1, 1, −2, … → 0, 1, 2, 3, …).
pub(super) fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

/// The inverse of [`zigzag`].
pub(super) fn unzigzag(u: u128) -> i128 {
    ((u >> 1) as i128) ^ -((u & 1) as i128)
}

/// Reads the binary encoding; every read checks what remains.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// The bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// An unsigned varint of at most 19 bytes (128 bits); a longer one, or
    /// one with bits past 128, is malformed.
    pub(super) fn wide(&mut self) -> Result<u128, BinaryError> {
        let mut v: u128 = 0;
        for k in 0..19 {
            let (&b, rest) = self
                .bytes
                .split_first()
                .ok_or(BinaryError("truncated varint"))?;
            self.bytes = rest;
            let bits = u128::from(b & 0x7f);
            let shift = 7 * k;
            if shift == 126 && bits > 0b11 {
                return Err(BinaryError("varint past 128 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BinaryError("varint past 128 bits"))
    }

    /// An unsigned varint that must fit a `u64`.
    pub(super) fn u64(&mut self) -> Result<u64, BinaryError> {
        u64::try_from(self.wide()?).map_err(|_| BinaryError("value past 64 bits"))
    }

    /// A count or index that must fit `usize` and be at most `max`.
    pub(super) fn len(&mut self, max: usize, what: &'static str) -> Result<usize, BinaryError> {
        let v = self.wide()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(BinaryError(what))
    }

    /// A zigzag-coded signed varint.
    pub(super) fn signed(&mut self) -> Result<i128, BinaryError> {
        Ok(unzigzag(self.wide()?))
    }

    /// A zigzag-coded signed varint that must fit an `i64`.
    pub(super) fn i64(&mut self) -> Result<i64, BinaryError> {
        i64::try_from(self.signed()?).map_err(|_| BinaryError("value past 64 bits"))
    }

    /// `len` counts of `bits` (1..=64) bits each, as [`put_packed`] writes
    /// them; the padding bits must be 0.
    pub(super) fn packed(&mut self, len: usize, bits: u32) -> Result<Vec<u64>, BinaryError> {
        let total = len
            .checked_mul(bits as usize)
            .ok_or(BinaryError("too many buckets"))?;
        let bytes = self.take(total.div_ceil(8))?;
        let mut out = Vec::with_capacity(len);
        let (mut acc, mut held) = (0u128, 0u32);
        let mut next = bytes.iter();
        let mask = u128::from(u64::MAX) >> (64 - bits);
        for _ in 0..len {
            while held < bits {
                let b = next.next().ok_or(BinaryError("truncated"))?;
                acc |= u128::from(*b) << held;
                held += 8;
            }
            out.push((acc & mask) as u64);
            acc >>= bits;
            held -= bits;
        }
        if acc != 0 {
            return Err(BinaryError("non-zero padding bits"));
        }
        Ok(out)
    }

    /// Exactly `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], BinaryError> {
        if n > self.bytes.len() {
            return Err(BinaryError("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub(super) fn bytes(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], BinaryError> {
        let n = self.len(max, what)?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        let mut values = alloc::vec![0u128, 1, 127, 128, 300, u64::MAX.into(), u128::MAX];
        values.extend((0..128).map(|k| 1u128 << k));
        for v in values {
            let mut out = Vec::new();
            put(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.wide().unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
        for v in [0i128, -1, 1, i128::MIN, i128::MAX, i64::MIN.into()] {
            let mut out = Vec::new();
            put_signed(&mut out, v);
            assert_eq!(Reader::new(&out).signed().unwrap(), v);
        }
        // Postcard's u16 varint for 2 and 256.
        let mut out = Vec::new();
        put(&mut out, 256);
        assert_eq!(out, [0x80, 0x02]);
    }

    /// The sketch scale (an `i8`) is coded with the same zigzag as every
    /// signed value: 0, −1, 1, … → 0, 1, 2, …, −128 → 255, 127 → 254; the
    /// decoder accepts exactly the codes 0..=255.
    #[test]
    fn an_i8_zigzags_into_one_byte_and_back() {
        for (v, z) in [
            (0i8, 0u128),
            (-1, 1),
            (1, 2),
            (-2, 3),
            (6, 12),
            (127, 254),
            (-128, 255),
        ] {
            assert_eq!(zigzag(v.into()), z, "{v}");
            assert_eq!(i8::try_from(unzigzag(z)), Ok(v), "{z}");
        }
        for v in i8::MIN..=i8::MAX {
            // The encoder's former `zigzag_i8`.
            let byte = ((v << 1) ^ (v >> 7)) as u8;
            assert_eq!(zigzag(v.into()), u128::from(byte));
        }
        for z in 0..=u8::MAX {
            // The decoder's former inverse.
            let v = ((z >> 1) as i8) ^ -((z & 1) as i8);
            assert_eq!(i8::try_from(unzigzag(z.into())), Ok(v));
        }
        for z in (256..4096).chain([u128::MAX - 1, u128::MAX]) {
            assert!(i8::try_from(unzigzag(z)).is_err(), "{z}");
        }
    }

    #[test]
    fn packed_counts_round_trip_at_every_width() {
        for bits in 1..=64u32 {
            let max = u64::MAX >> (64 - bits);
            for len in [1usize, 2, 7, 8, 9, 63] {
                let counts: Vec<u64> = (0..len as u64).map(|i| max - i.min(max)).collect();
                let mut out = Vec::new();
                put_packed(&mut out, counts.iter().copied(), bits);
                assert_eq!(out.len(), (len * bits as usize).div_ceil(8));
                let mut r = Reader::new(&out);
                assert_eq!(r.packed(len, bits).unwrap(), counts, "{bits} {len}");
                assert_eq!(r.remaining(), 0);
            }
        }
        // Three 3-bit counts 1, 2, 4: 0b100_010_001 = 0x111 over two bytes.
        let mut out = Vec::new();
        put_packed(&mut out, [1, 2, 4].into_iter(), 3);
        assert_eq!(out, [0x11, 0x01]);
        // Padding must be zero (one encoding per value).
        assert!(Reader::new(&[0x11, 0x81]).packed(3, 3).is_err());
        assert!(Reader::new(&[0x11]).packed(3, 3).is_err());
    }

    #[test]
    fn overlong_and_truncated_varints_are_refused() {
        let mut too_wide = alloc::vec![0xff; 18];
        too_wide.push(0x04); // bit 128
        assert!(Reader::new(&too_wide).wide().is_err());
        let endless = [0x80u8; 40];
        assert!(Reader::new(&endless).wide().is_err());
        assert!(Reader::new(&[0x80]).wide().is_err());
        assert!(Reader::new(&[]).wide().is_err());
        assert!(Reader::new(&[5, 1, 2]).bytes(10, "x").is_err());
        assert!(Reader::new(&[5, 1, 2, 3, 4, 5]).bytes(4, "x").is_err());
    }
}
