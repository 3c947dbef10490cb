//! Device time: extends a wrapping u32 hardware millisecond counter to u64
//! ms since boot, and keeps the wall-clock offset learnt from TimeSync.

/// Monotonic ms since boot from a wrapping 32-bit counter, plus the offset to
/// Unix time once the gateway has sent a TimeSync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    last_raw: u32,
    high: u64,
    offset: Option<i64>,
}

impl Clock {
    /// A clock whose counter starts at `raw` = 0 at boot.
    pub const fn new() -> Self {
        Clock {
            last_raw: 0,
            high: 0,
            offset: None,
        }
    }

    /// Extends the raw counter reading to ms since boot. Must be called at
    /// least once per counter period (49.7 days for a 1 kHz u32 counter);
    /// a raw value below the last one is taken as one wrap.
    pub fn now(&mut self, raw: u32) -> u64 {
        if raw < self.last_raw {
            self.high += 1 << 32;
        }
        self.last_raw = raw;
        self.high | u64::from(raw)
    }

    /// Records a TimeSync: the gateway's wall clock was `unix_ms` at device
    /// time `tick`.
    pub fn sync(&mut self, tick: u64, unix_ms: i64) {
        self.offset = Some(unix_ms.saturating_sub(i64::try_from(tick).unwrap_or(i64::MAX)));
    }

    /// Unix ms minus device ms, once synchronised.
    pub fn offset(&self) -> Option<i64> {
        self.offset
    }

    /// Wall-clock ms of device time `tick`, once synchronised.
    pub fn to_unix(&self, tick: u64) -> Option<i64> {
        let t = i64::try_from(tick).ok()?;
        self.offset?.checked_add(t)
    }

    /// The phase for [`crate::Aggregator::set_phase`]: with it, window
    /// boundaries fall on wall-clock multiples of `width_ms`.
    pub fn phase(&self, width_ms: u32) -> Option<u64> {
        let w = width_ms.max(1);
        // offset mod w in 0..w (rem_euclid), without a 64-bit division.
        self.offset.map(|o| {
            let r = rem_u64(o.unsigned_abs(), w);
            u64::from(if o < 0 && r > 0 { w - r } else { r })
        })
    }
}

/// `x mod m` for `m > 0` (0 for `m = 0`), by shift and subtract: a 64-bit
/// division is a library routine on a Cortex-M (on the M0+ about 1 KiB of
/// flash with its helpers), and the firmware needs this remainder only
/// when a window opens or a TimeSync arrives.
pub fn rem_u64(x: u64, m: u32) -> u32 {
    let m = u64::from(m);
    let mut r = 0u64;
    for i in (0..64).rev() {
        // r < m ≤ 2³², so the shift cannot overflow.
        r = (r << 1) | ((x >> i) & 1);
        if r >= m {
            r -= m;
        }
    }
    r as u32
}
