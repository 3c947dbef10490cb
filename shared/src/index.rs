//! Bucket indices of the base-2 exponential histogram, computed without `log`.
//!
//! At scale *s* the bucket base is 2^(2^−s); bucket *i* holds magnitudes in
//! (base^i, base^(i+1)] — the OpenTelemetry / Prometheus native-histogram
//! layout, upper bound inclusive, so exact powers of two fall in the bucket
//! below. Magnitudes are integer tick counts, so the index is computed from the
//! position of the leading bit and a 64-entry table of ⌊2^(k/64)·2⁶³⌋: the
//! result is *exact* (each 2^(k/64), k ≥ 1, is irrational, so comparing an
//! integer against its floor decides the strict inequality exactly). No
//! floating point is involved, which keeps it cheap on an MCU without an FPU.
//!
//! Lower scales follow by an arithmetic shift: buckets nest, so
//! `index(s) = index(MAX_SCALE) >> (MAX_SCALE − s)`.

/// The scale a sketch starts at (2^(1/64) ≈ 1.011 base, ≈ 0.54 % error).
pub const MAX_SCALE: i8 = 6;
/// The lowest scale a sketch may reach. An `i64` magnitude spans at most 64
/// octaves, which fits in 5 buckets at this scale.
pub const MIN_SCALE: i8 = -4;

/// ⌊2^(k/64) · 2⁶³⌋ for k = 0..64, generated with 60-digit decimal arithmetic.
const BOUNDS: [u64; 64] = [
    0x8000000000000000,
    0x8164D1F3BC030773,
    0x82CD8698AC2BA1D7,
    0x843A28C3ACDE4046,
    0x85AAC367CC487B14,
    0x871F61969E8D1010,
    0x88980E8092DA8527,
    0x8A14D575496EFD9A,
    0x8B95C1E3EA8BD6E6,
    0x8D1ADF5B7E5BA9E5,
    0x8EA4398B45CD53C0,
    0x9031DC431466B1DC,
    0x91C3D373AB11C336,
    0x935A2B2F13E6E92B,
    0x94F4EFA8FEF70961,
    0x96942D3720185A00,
    0x9837F0518DB8A96F,
    0x99E0459320B7FA64,
    0x9B8D39B9D54E5538,
    0x9D3ED9A72CFFB750,
    0x9EF5326091A111AD,
    0xA0B0510FB9714FC2,
    0xA27043030C496818,
    0xA43515AE09E6809E,
    0xA5FED6A9B15138EA,
    0xA7CD93B4E9653569,
    0xA9A15AB4EA7C0EF8,
    0xAB7A39B5A93ED337,
    0xAD583EEA42A14AC6,
    0xAF3B78AD690A4374,
    0xB123F581D2AC258F,
    0xB311C412A9112489,
    0xB504F333F9DE6484,
    0xB6FD91E328D17791,
    0xB8FBAF4762FB9EE9,
    0xBAFF5AB2133E45FB,
    0xBD08A39F580C36BE,
    0xBF1799B67A731082,
    0xC12C4CCA66709456,
    0xC346CCDA24976407,
    0xC5672A115506DADD,
    0xC78D74C8ABB9B15C,
    0xC9B9BD866E2F27A2,
    0xCBEC14FEF2727C5C,
    0xCE248C151F8480E3,
    0xD06333DAEF2B2594,
    0xD2A81D91F12AE45A,
    0xD4F35AABCFEDFA1F,
    0xD744FCCAD69D6AF4,
    0xD99D15C278AFD7B5,
    0xDBFBB797DAF23755,
    0xDE60F4825E0E9123,
    0xE0CCDEEC2A94E111,
    0xE33F8972BE8A5A51,
    0xE5B906E77C8348A8,
    0xE8396A503C4BDC68,
    0xEAC0C6E7DD24392E,
    0xED4F301ED9942B84,
    0xEFE4B99BDCDAF5CB,
    0xF281773C59FFB139,
    0xF5257D152486CC2C,
    0xF7D0DF730AD13BB8,
    0xFA83B2DB722A033A,
    0xFD3E0C0CF486C174,
];

/// `BOUNDS` followed by a sentinel above every normalized magnitude.
const BOUNDS_EXT: [u64; 65] = {
    let mut t = [u64::MAX; 65];
    let mut k = 0;
    while k < 64 {
        t[k] = BOUNDS[k];
        k += 1;
    }
    t
};

/// For each of the 128 segments [2⁶³ + s·2⁵⁶, 2⁶³ + (s+1)·2⁵⁶) of a
/// normalized magnitude: the number of `BOUNDS` strictly below the segment
/// start. Adjacent bounds are at least 2⁶³·(2^(1/64) − 1) ≈ 1.09 % of 2⁶³
/// apart, wider than a segment (0.78 %), so a segment holds at most one bound
/// and a single comparison completes the search.
const SEGMENT_BASE: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut s = 0;
    while s < 128 {
        let start = (1u64 << 63) + ((s as u64) << 56);
        let mut c = 0;
        while c < 64 && BOUNDS[c] < start {
            c += 1;
        }
        t[s] = c as u8;
        s += 1;
    }
    t
};

/// The bucket index of a non-zero magnitude at [`MAX_SCALE`].
///
/// Returns a value in `-1 ..= 64·63 + 63`.
#[inline]
pub fn index_max_scale(magnitude: u64) -> i32 {
    debug_assert!(magnitude != 0);
    let lz = magnitude.leading_zeros();
    let exponent = 63 - lz as i32;
    let normalized = magnitude << lz;
    // k = (the number of bounds strictly below `normalized`) − 1: the k with
    // 2^(k/64) < m ≤ 2^((k+1)/64). An exact power of two (normalized ==
    // BOUNDS[0]) gets k = −1, the bucket below (upper-inclusive).
    let below = SEGMENT_BASE[((normalized >> 56) & 0x7f) as usize] as usize;
    let next_below = BOUNDS_EXT.get(below).is_some_and(|&b| b < normalized);
    (exponent << MAX_SCALE) + below as i32 + i32::from(next_below) - 1
}

/// The bucket index of a non-zero magnitude at `scale` (≤ [`MAX_SCALE`]).
#[inline]
pub fn index(magnitude: u64, scale: i8) -> i32 {
    index_max_scale(magnitude) >> (MAX_SCALE - scale)
}

/// The largest relative error of a value estimated from a bucket at `scale`:
/// (base − 1) / (base + 1), with base = 2^(2^−scale).
#[cfg(feature = "std")]
pub fn relative_error(scale: i8) -> f64 {
    let base = base(scale);
    (base - 1.0) / (base + 1.0)
}

/// The bucket base 2^(2^−scale).
#[cfg(feature = "std")]
pub fn base(scale: i8) -> f64 {
    2f64.powf(2f64.powi(-i32::from(scale)))
}

/// The estimate for bucket `index` at `scale` that minimises the worst
/// relative error: the harmonic-style midpoint 2·L·U / (L + U) of (L, U].
#[cfg(feature = "std")]
pub fn bucket_estimate(index: i32, scale: i8) -> f64 {
    let lower = 2f64.powf(f64::from(index) * 2f64.powi(-i32::from(scale)));
    let base = base(scale);
    2.0 * lower * base / (1.0 + base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_of_two_fall_in_the_bucket_below() {
        assert_eq!(index_max_scale(1), -1);
        assert_eq!(index_max_scale(2), 63);
        assert_eq!(index_max_scale(4), 127);
        assert_eq!(index(2, 0), 0);
        assert_eq!(index(1, 0), -1);
        assert_eq!(index(1, -4), -1);
        assert_eq!(index(3, 0), 1);
        assert_eq!(index(1 << 63, 6), (63 << 6) - 1);
    }

    #[test]
    fn table_matches_floating_point_bounds() {
        for (k, b) in BOUNDS.iter().enumerate() {
            let exact = 2f64.powf(k as f64 / 64.0) * 2f64.powi(63);
            let rel = ((*b as f64) - exact).abs() / exact;
            assert!(rel < 1e-15, "bound {k} off by {rel}");
        }
    }

    #[test]
    fn index_agrees_with_logarithm_away_from_bounds() {
        let mut x: u64 = 3;
        while x < (1 << 62) {
            for scale in [6i8, 3, 0, -2] {
                let expected = ((x as f64).log2() * 2f64.powi(i32::from(scale))).ceil() as i32 - 1;
                let got = index(x, scale);
                // Values within float rounding of a bound may legitimately differ by one.
                assert!(
                    (got - expected).abs() <= 1,
                    "x={x} scale={scale} {got} vs {expected}"
                );
                let lower = 2f64.powf(f64::from(got) / 2f64.powi(i32::from(scale)));
                let upper = lower * base(scale);
                assert!(lower < x as f64 * (1.0 + 1e-12) && x as f64 <= upper * (1.0 + 1e-12));
            }
            x += x / 2 + 1;
        }
    }

    /// The search by binary partition the segment table replaces.
    fn index_by_search(magnitude: u64) -> i32 {
        let lz = magnitude.leading_zeros();
        let normalized = magnitude << lz;
        let k = BOUNDS.partition_point(|&b| b < normalized) as i32 - 1;
        ((63 - lz as i32) << MAX_SCALE) + k
    }

    #[test]
    fn segment_table_agrees_with_binary_search_at_every_bound() {
        for shift in 0..64 {
            for (k, &b) in BOUNDS.iter().enumerate() {
                // Every bound and its neighbours, at every exponent where the
                // shifted bound is still distinguishable.
                let at = b >> shift;
                for m in [at.wrapping_sub(1), at, at.wrapping_add(1)] {
                    if m != 0 {
                        assert_eq!(index_max_scale(m), index_by_search(m), "k={k} m={m:#x}");
                    }
                }
            }
            for s in 0..128u64 {
                let start = ((1u64 << 63) + (s << 56)) >> shift;
                for m in [start.wrapping_sub(1), start, start + 1] {
                    if m != 0 {
                        assert_eq!(index_max_scale(m), index_by_search(m), "m={m:#x}");
                    }
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for m in [x, x >> (x % 64), (x >> 40) | 1, u64::MAX] {
                if m != 0 {
                    assert_eq!(index_max_scale(m), index_by_search(m), "m={m:#x}");
                }
            }
        }
    }

    #[test]
    fn lower_scale_is_a_shift_of_the_finer_index() {
        for x in [5u64, 1000, 123_456_789, 1 << 40, u64::MAX] {
            let i6 = index(x, 6);
            for s in MIN_SCALE..=MAX_SCALE {
                assert_eq!(index(x, s), i6 >> (6 - s));
            }
        }
    }

    #[test]
    fn error_bounds_match_published_values() {
        assert!((relative_error(6) - 0.005415).abs() < 1e-5);
        assert!((relative_error(5) - 0.010830).abs() < 1e-5);
        assert!((relative_error(4) - 0.021656).abs() < 1e-5);
    }
}
