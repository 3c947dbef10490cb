//! The clock's arithmetic: the 64-bit remainder without a division, and the
//! phase that aligns windows to wall-clock multiples, against `%` and
//! `rem_euclid` on random and extreme values.

use proptest::prelude::*;
use tributary_firmware::clock::rem_u64;
use tributary_firmware::Clock;

#[test]
fn extreme_remainders_match_the_operator() {
    for x in [0, 1, u64::from(u32::MAX), 1 << 32, u64::MAX, u64::MAX - 1] {
        for m in [1, 2, 1000, 60_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(u64::from(rem_u64(x, m)), x % u64::from(m), "{x} mod {m}");
        }
    }
}

proptest! {
    #[test]
    fn remainders_match_the_operator(x: u64, m in 1u32..) {
        prop_assert_eq!(u64::from(rem_u64(x, m)), x % u64::from(m));
    }

    #[test]
    fn the_phase_is_the_offset_modulo_the_width(unix_ms: i64, tick in 0u64..1 << 40, width in 1u32..) {
        let mut c = Clock::new();
        c.sync(tick, unix_ms);
        let offset = c.offset().unwrap_or_default();
        let want = offset.rem_euclid(i64::from(width)).unsigned_abs();
        prop_assert_eq!(c.phase(width), Some(want));
    }
}
