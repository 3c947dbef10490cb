//! The time bounds an event time must lie in before it may touch a window
//! or a watermark (DESIGN §4, issue #12): not further ahead of the wall
//! clock than `max_future_ms`, not older than `max_age_ms`.
//!
//! # Design
//! Event times come from devices, whose clocks may be wrong by years or
//! send any `i64`. A reading stamped far in the future would raise its
//! source's watermark for good, so every later window would close at once
//! and be re-sent as revisions; one near `i64::MIN` or `i64::MAX` has no
//! window at all. So the [`super::Windower`] checks every time against these
//! bounds first (all arithmetic saturating) and a refused reading changes
//! nothing: no window, no watermark, no activity of its source.

/// The accepted range of event times, relative to the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// How far ahead of the wall clock an event time may be (ms, ≥ 0).
    pub max_future_ms: i64,
    /// How far behind the wall clock an event time may be (ms, > 0).
    pub max_age_ms: i64,
}

/// Why an event time was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeRefused {
    /// Later than the wall clock plus `max_future_ms`.
    #[error("event time {time} ms is more than {max_future_ms} ms ahead of the clock ({now} ms)")]
    Future {
        /// The event time.
        time: i64,
        /// The wall clock.
        now: i64,
        /// The bound.
        max_future_ms: i64,
    },
    /// Earlier than the wall clock minus `max_age_ms`.
    #[error("event time {time} ms is more than {max_age_ms} ms older than the clock ({now} ms)")]
    Past {
        /// The event time.
        time: i64,
        /// The wall clock.
        now: i64,
        /// The bound.
        max_age_ms: i64,
    },
}

impl TimeBounds {
    /// No bound (`i64::MAX` for both): every `i64` is accepted (window
    /// arithmetic still refuses the times no window can hold).
    pub const NONE: TimeBounds = TimeBounds {
        max_future_ms: i64::MAX,
        max_age_ms: i64::MAX,
    };

    /// The accepted range `[earliest, latest]` at wall clock `now`; a
    /// bound of `i64::MAX` means none.
    pub fn range(&self, now: i64) -> (i64, i64) {
        let earliest = match self.max_age_ms {
            i64::MAX => i64::MIN,
            age => now.saturating_sub(age),
        };
        let latest = match self.max_future_ms {
            i64::MAX => i64::MAX,
            future => now.saturating_add(future),
        };
        (earliest, latest)
    }

    /// Whether event time `t` is accepted at wall clock `now`.
    pub fn check(&self, t: i64, now: i64) -> Result<(), TimeRefused> {
        let (earliest, latest) = self.range(now);
        if t > latest {
            Err(TimeRefused::Future {
                time: t,
                now,
                max_future_ms: self.max_future_ms,
            })
        } else if t < earliest {
            Err(TimeRefused::Past {
                time: t,
                now,
                max_age_ms: self.max_age_ms,
            })
        } else {
            Ok(())
        }
    }
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The judge: i128 arithmetic on the raw numbers.
        #[test]
        fn accepts_exactly_the_range_whatever_the_numbers(
            t in any::<i64>(),
            now in any::<i64>(),
            future in 0i64..i64::MAX,
            age in 1i64..i64::MAX,
        ) {
            let b = TimeBounds { max_future_ms: future, max_age_ms: age };
            let (t128, now128) = (i128::from(t), i128::from(now));
            let want = if t128 > now128 + i128::from(future) {
                Some(false)
            } else if t128 < now128 - i128::from(age) {
                Some(true)
            } else {
                None
            };
            let got = match b.check(t, now) {
                Ok(()) => None,
                Err(TimeRefused::Future { .. }) => Some(false),
                Err(TimeRefused::Past { .. }) => Some(true),
            };
            // Saturation at the ends of i64 can only widen the range where
            // it reaches past them, and no i64 lies there.
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn none_accepts_every_time() {
        for t in [i64::MIN, -1, 0, 1, i64::MAX] {
            for now in [i64::MIN, 0, i64::MAX] {
                assert_eq!(TimeBounds::NONE.check(t, now), Ok(()));
            }
        }
    }
}
