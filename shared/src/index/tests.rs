//! Unit tests of the index tables; the exhaustive comparison with an exact
//! reference at every boundary is `shared/tests/sketch_index.rs`.

use super::*;

fn q(e: i8) -> Quantum {
    Quantum::new(e).unwrap()
}

fn nz(v: u64) -> NonZeroU64 {
    NonZeroU64::new(v).unwrap()
}

#[test]
fn the_issue_example_lands_where_opentelemetry_puts_it() {
    // 1.5 at 10⁻³ is 1500 ticks: bucket 37 at scale 6 (OpenTelemetry's
    // index of 1.5), not the tick count's 675.
    assert_eq!(QuantumIndex::of(q(-3)).index(nz(1500), 6), 37);
    assert_eq!(QuantumIndex::of(q(0)).index(nz(1500), 6), 675);
    assert_eq!(
        DeviceIndex::new(q(-3)).index(NonZeroU32::new(1500).unwrap()),
        37
    );
}

#[test]
fn powers_of_two_fall_in_the_bucket_below() {
    let ix = QuantumIndex::of(q(0));
    assert_eq!(ix.index(nz(1), 8), -1);
    assert_eq!(ix.index(nz(2), 6), 63);
    assert_eq!(ix.index(nz(4), 6), 127);
    assert_eq!(ix.index(nz(2), 0), 0);
    assert_eq!(ix.index(nz(1), 0), -1);
    assert_eq!(ix.index(nz(1), -4), -1);
    assert_eq!(ix.index(nz(3), 0), 1);
    assert_eq!(ix.index(nz(1 << 63), 6), (63 << 6) - 1);
    // 0.5 = 500 ticks of 10⁻³ and 0.25 = 25 ticks of 10⁻² are boundaries
    // too: (2^−2, 2^−1] and (2^−3, 2^−2] at scale 0.
    assert_eq!(QuantumIndex::of(q(-3)).index(nz(500), 0), -2);
    assert_eq!(QuantumIndex::of(q(-3)).index(nz(501), 0), -1);
    assert_eq!(QuantumIndex::of(q(-2)).index(nz(25), 8), -3 * 256 + 255);
    assert_eq!(QuantumIndex::of(q(-2)).index(nz(26), 0), -2);
    let d = DeviceIndex::new(q(-3));
    assert_eq!(d.index(NonZeroU32::new(500).unwrap()), -65);
    assert_eq!(d.index(NonZeroU32::new(501).unwrap()), -64);
}

#[test]
fn index_agrees_with_logarithm_away_from_bounds() {
    for e in [-18i8, -9, -6, -3, -1, 0, 1, 2, 7, 18] {
        let ix = QuantumIndex::of(q(e));
        let mut v: u64 = 1;
        while v < (1 << 62) {
            let x = (v as f64).log2() + f64::from(e) * 10f64.log2();
            for scale in [8i8, 6, 3, 0, -2, -4] {
                let exact = x * 2f64.powi(i32::from(scale));
                let got = ix.index(nz(v), scale);
                // Within float rounding of a bound the log may be off by one.
                if (exact - exact.round()).abs() > 1e-9 {
                    assert_eq!(got, exact.ceil() as i32 - 1, "v={v} e={e} scale={scale}");
                }
            }
            v += v / 3 + 1;
        }
    }
}

/// The search by binary partition the segment table replaces.
fn by_search(ix: &QuantumIndex, m: u64) -> i32 {
    let lz = m.leading_zeros();
    let n = m << lz;
    let k = ix.bounds.partition_point(|&b| b < n) as i32;
    ((63 - lz as i32) << 8) + ix.offset + k
}

#[test]
fn segment_tables_agree_with_binary_search_at_every_bound() {
    for e in Quantum::MIN_EXPONENT..=Quantum::MAX_EXPONENT {
        let ix = QuantumIndex::of(q(e));
        let dev = DeviceIndex::new(q(e));
        for shift in [0u32, 1, 11, 40, 63] {
            for &b in ix.bounds.iter() {
                let at = b >> shift;
                for m in [at.wrapping_sub(1), at, at.wrapping_add(1)] {
                    if m != 0 {
                        assert_eq!(ix.index(nz(m), 8), by_search(ix, m), "e={e} m={m:#x}");
                    }
                }
            }
        }
        for shift in [0u32, 5, 31] {
            for &b in dev.bounds.iter() {
                let at = b >> shift;
                for m in [at.wrapping_sub(1), at, at.wrapping_add(1)] {
                    if let Some(m32) = NonZeroU32::new(m) {
                        let n = m32.get() << m32.leading_zeros();
                        let k = dev.bounds.partition_point(|&x| x < n) as i32;
                        let expect = ((31 - m32.leading_zeros() as i32) << 6) + dev.offset + k;
                        assert_eq!(dev.index(m32), expect, "e={e} m={m:#x}");
                    }
                }
            }
        }
    }
}

#[test]
fn device_index_equals_the_host_index_at_the_sketch_scale() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for e in Quantum::MIN_EXPONENT..=Quantum::MAX_EXPONENT {
        let host = QuantumIndex::of(q(e));
        let dev = DeviceIndex::new(q(e));
        for bits in 0..32 {
            for v in [
                1u32 << bits,
                (1u32 << bits).wrapping_sub(1),
                (1u32 << bits) + 1,
            ] {
                if let Some(m) = NonZeroU32::new(v) {
                    assert_eq!(dev.index(m), host.index(nz(u64::from(v)), 6), "e={e} v={v}");
                }
            }
        }
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 32) as u32 >> (x % 32);
            if let Some(m) = NonZeroU32::new(v) {
                assert_eq!(dev.index(m), host.index(nz(u64::from(v)), 6), "e={e} v={v}");
            }
        }
    }
}

#[test]
fn lowest_and_highest_are_the_indices_of_one_tick_and_of_powers_of_two() {
    for e in Quantum::MIN_EXPONENT..=Quantum::MAX_EXPONENT {
        let ix = QuantumIndex::of(q(e));
        for scale in MIN_SCALE..=MAX_SCALE {
            assert_eq!(lowest(q(e), scale), ix.index(nz(1), scale));
            for bits in [1, 31, 53, 63] {
                assert_eq!(highest(q(e), bits, scale), ix.index(nz(1 << bits), scale));
                assert!(ix.index(nz((1 << bits) - 1), scale) <= highest(q(e), bits, scale));
            }
            assert!(lowest_possible(scale) <= lowest(q(e), scale));
            assert!(ix.index(nz(u64::MAX), scale) <= highest_possible(scale));
        }
    }
}

#[test]
fn lower_scale_is_a_shift_of_the_finer_index() {
    for e in [-6i8, 0, 3] {
        let ix = QuantumIndex::of(q(e));
        for x in [5u64, 1000, 123_456_789, 1 << 40, u64::MAX] {
            let i8_ = ix.index(nz(x), 8);
            for s in MIN_SCALE..=MAX_SCALE {
                assert_eq!(ix.index(nz(x), s), i8_ >> (8 - s));
            }
        }
    }
}

#[test]
fn buckets_carry_the_sign() {
    let ix = QuantumIndex::of(q(-2));
    assert_eq!(ix.bucket(0), Bucket::Zero);
    assert_eq!(ix.bucket(150), Bucket::Positive(37));
    assert_eq!(ix.bucket(-150), Bucket::Negative(37));
    let d = DeviceIndex::new(q(-2));
    assert_eq!(
        d.bucket(i32::MIN),
        Bucket::Negative(ix.index(nz(1 << 31), 6))
    );
    assert_eq!(d.bucket(-150), Bucket::Negative(37));
}

#[test]
fn error_bounds_match_published_values() {
    assert!((relative_error(6) - 0.005415).abs() < 1e-5);
    assert!((relative_error(5) - 0.010830).abs() < 1e-5);
    assert!((relative_error(4) - 0.021656).abs() < 1e-5);
}
