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
        let w = i64::from(width_ms.max(1));
        // rem_euclid of a positive modulus is in 0..w.
        self.offset.map(|o| o.rem_euclid(w).unsigned_abs())
    }
}
