//! Device clock estimation (DESIGN §3, device clocks): offset and drift of a
//! device's millisecond ticks against the gateway's wall clock, learnt from
//! frame arrival times alone.
//!
//! # Method
//! A frame sent at device tick `t` arrives at gateway time
//! `a = offset + (1 + s)·t + delay` with `delay ≥ 0`. Each observation gives
//! a *lag* `a − t`. Transmission delays only ever add, so the informative
//! points are the smallest lags: ticks are grouped in buckets of
//! [`BUCKET_MS`], and only the minimum lag of each bucket is kept (a
//! min-filter; resends and queued frames, which arrive late, are ignored by
//! it). A least-squares line through the last [`MAX_BUCKETS`] bucket minima,
//! refitted twice through the half of them below the line (towards the
//! envelope of least delay), gives the offset and the slope `s`; the device's drift is
//! `−s / (1 + s)` (positive = device clock fast). Until the minima span
//! [`MIN_DRIFT_SPAN_MS`] of ticks, the drift is taken as 0 and the offset is
//! the smallest lag seen.
//!
//! # Stated error
//! [`ClockFit::error_ms`] is the largest distance from the line of the
//! bucket minima it was fitted through, plus 1 ms (arrival times are whole ms). The link's constant
//! minimum latency cannot be seen from arrivals and is not included: event
//! times are late by it (a few ms on a 115 200-baud serial line).
//!
//! A new boot of the device restarts the estimate (ticks restart at 0). The
//! mapping applies to every tick of the boot, including ticks from before the
//! first observation: readings the device took before its first sync are
//! mapped by the offset learnt at sync time.

use std::collections::VecDeque;

use crate::metrics::DeviceClock;

/// Width of a min-filter bucket, in device ms.
pub const BUCKET_MS: u64 = 30_000;
/// Bucket minima kept (with [`BUCKET_MS`], the last hour).
pub const MAX_BUCKETS: usize = 120;
/// Tick span over which a drift is fitted at all.
pub const MIN_DRIFT_SPAN_MS: u64 = 120_000;

/// The current estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockFit {
    /// Wall-clock ms at device tick 0.
    pub offset_ms: f64,
    /// Device clock rate error in parts per million (positive = fast).
    pub drift_ppm: f64,
    /// Stated error of mapped times (ms), excluding the link's constant
    /// minimum latency.
    pub error_ms: f64,
    /// Slope of lag over ticks (`−drift / (1 + drift)`).
    slope: f64,
}

impl From<ClockFit> for DeviceClock {
    fn from(f: ClockFit) -> Self {
        DeviceClock {
            offset_ms: f.offset_ms,
            drift_ppm: f.drift_ppm,
            error_ms: f.error_ms,
        }
    }
}

impl ClockFit {
    /// Wall-clock ms of device tick `tick`.
    pub fn wall_ms(&self, tick: u64) -> i64 {
        let t = tick as f64;
        (self.offset_ms + t + self.slope * t).round() as i64
    }
}

/// Estimates one device boot's clock from (tick, arrival) pairs.
#[derive(Debug, Clone, Default)]
pub struct ClockEstimator {
    boot: Option<u32>,
    /// (bucket index, tick of the minimum, minimum lag).
    minima: VecDeque<(u64, u64, i64)>,
    fit: Option<ClockFit>,
}

impl ClockEstimator {
    /// An estimator that maps with a known offset until it has observations.
    pub fn with_offset(boot: u32, offset_ms: i64) -> Self {
        ClockEstimator {
            boot: Some(boot),
            minima: VecDeque::new(),
            fit: Some(ClockFit {
                offset_ms: offset_ms as f64,
                drift_ppm: 0.0,
                error_ms: f64::NAN,
                slope: 0.0,
            }),
        }
    }

    /// Records that a frame of `boot` sent at device `tick` arrived at wall
    /// clock `arrival_ms`. A different boot restarts the estimate.
    pub fn observe(&mut self, boot: u32, tick: u64, arrival_ms: i64) {
        if self.boot != Some(boot) {
            *self = ClockEstimator {
                boot: Some(boot),
                ..Default::default()
            };
        }
        let lag = arrival_ms.saturating_sub(i64::try_from(tick).unwrap_or(i64::MAX));
        let bucket = tick / BUCKET_MS;
        let changed = match self.minima.iter_mut().rev().find(|m| m.0 == bucket) {
            Some(m) if lag < m.2 => {
                *m = (bucket, tick, lag);
                true
            }
            Some(_) => false,
            None => {
                let at = self.minima.partition_point(|m| m.0 < bucket);
                if at == 0 && self.minima.len() >= MAX_BUCKETS {
                    return; // older than everything kept
                }
                self.minima.insert(at, (bucket, tick, lag));
                while self.minima.len() > MAX_BUCKETS {
                    self.minima.pop_front();
                }
                true
            }
        };
        if changed || self.fit.is_some_and(|f| f.error_ms.is_nan()) {
            self.refit();
        }
    }

    fn refit(&mut self) {
        let (Some(first), Some(last)) = (self.minima.front(), self.minima.back()) else {
            return;
        };
        let span = last.1.saturating_sub(first.1);
        if self.minima.len() < 3 || span < MIN_DRIFT_SPAN_MS {
            let min = self.minima.iter().map(|m| m.2).min().unwrap_or(0);
            let spread = self.minima.iter().map(|m| m.2 - min).max().unwrap_or(0);
            self.fit = Some(ClockFit {
                offset_ms: min as f64,
                drift_ppm: 0.0,
                error_ms: spread as f64 + 1.0,
                slope: 0.0,
            });
            return;
        }
        // Least squares of lag over tick, then twice more through the lower
        // half of the minima (towards the envelope of least delay).
        let mut pts: Vec<(f64, f64)> = self
            .minima
            .iter()
            .map(|m| (m.1 as f64, m.2 as f64))
            .collect();
        let mut line = least_squares(&pts);
        for _ in 0..2 {
            let mut res: Vec<f64> = pts.iter().map(|&(t, l)| l - line.0 - line.1 * t).collect();
            res.sort_by(f64::total_cmp);
            let median = res[res.len() / 2];
            let lower: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|&(t, l)| l - line.0 - line.1 * t <= median)
                .collect();
            if lower.len() < 3 {
                break;
            }
            pts = lower;
            line = least_squares(&pts);
        }
        let (offset, slope) = line;
        let error = pts
            .iter()
            .map(|&(t, l)| (l - offset - slope * t).abs())
            .fold(0.0, f64::max);
        self.fit = Some(ClockFit {
            offset_ms: offset,
            drift_ppm: -slope / (1.0 + slope) * 1e6,
            error_ms: error + 1.0,
            slope,
        });
    }

    /// The current estimate, once there is one.
    pub fn fit(&self) -> Option<ClockFit> {
        self.fit
    }

    /// Wall-clock ms of device `tick`, once there is an estimate.
    pub fn wall_ms(&self, tick: u64) -> Option<i64> {
        self.fit.map(|f| f.wall_ms(tick))
    }
}

/// (intercept, slope) of the least-squares line through `pts`, centred for
/// precision.
fn least_squares(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len().max(1) as f64;
    let mt = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let ml = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(t, l) in pts {
        sxy += (t - mt) * (l - ml);
        sxx += (t - mt) * (t - mt);
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (ml - slope * mt, slope)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose clock runs `ppm` fast, booted at wall time `boot_ms`;
    /// frames every second, arriving after 3 ms plus exponential jitter
    /// (mean 15 ms) and, now and then, a resend 2 s late.
    fn run(
        ppm: f64,
        boot_ms: i64,
        seconds: u64,
        seed: u64,
    ) -> (ClockEstimator, impl Fn(u64) -> f64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let rate = 1.0 + ppm * 1e-6;
        let mut est = ClockEstimator::default();
        for s in 0..seconds {
            let real = s as f64 * 1000.0 + rng.f64() * 50.0;
            let tick = (real * rate).floor() as u64;
            let mut delay = 3.0 - 15.0 * (1.0 - rng.f64()).ln();
            if rng.u32(..100) == 0 {
                delay += 2000.0;
            }
            let arrival = (boot_ms as f64 + real + delay).floor() as i64;
            est.observe(1, tick, arrival);
        }
        // True wall time of a tick (plus the 3 ms minimum latency, which the
        // estimate cannot see).
        let truth = move |tick: u64| boot_ms as f64 + tick as f64 / rate + 3.0;
        (est, truth)
    }

    #[test]
    fn converges_for_fast_and_slow_clocks_with_jitter() {
        for (ppm, seed) in [(50.0, 1), (-200.0, 2), (0.0, 3), (120.0, 4)] {
            let boot = 1_700_000_000_000;
            let (est, truth) = run(ppm, boot, 3_600, seed);
            let fit = est.fit().unwrap();
            assert!(
                (fit.drift_ppm - ppm).abs() < 1.0,
                "{ppm} ppm estimated as {}",
                fit.drift_ppm
            );
            assert!(
                fit.error_ms <= 3.0,
                "{ppm} ppm: stated error {}",
                fit.error_ms
            );
            // Every tick of the last 20 minutes maps within the stated error.
            for s in (2_400..3_600).step_by(7) {
                let tick = (s as f64 * 1000.0 * (1.0 + ppm * 1e-6)) as u64;
                let err = fit.wall_ms(tick) as f64 - truth(tick);
                assert!(
                    err.abs() <= fit.error_ms,
                    "{ppm} ppm: tick {tick} off by {err} ms (stated {})",
                    fit.error_ms
                );
            }
        }
    }

    #[test]
    fn without_drift_estimation_a_drifting_clock_would_be_far_off() {
        // The point of fitting: at −200 ppm an hour of ticks is 720 ms off
        // an offset learnt at boot.
        let (est, truth) = run(-200.0, 0, 3_600, 9);
        let tick = 3_599_000;
        let fitted = est.wall_ms(tick).unwrap() as f64 - truth(tick);
        let first_only =
            ClockEstimator::with_offset(1, 3).wall_ms(tick).unwrap() as f64 - truth(tick);
        assert!(fitted.abs() <= 6.0, "{fitted}");
        assert!(first_only.abs() > 600.0, "{first_only}");
    }

    #[test]
    fn early_ticks_use_the_offset_learnt_later_and_a_new_boot_restarts() {
        let mut est = ClockEstimator::default();
        // The first frame arrives 10 s after boot; a reading of tick 500
        // (before any sync) maps by the offset learnt from it.
        est.observe(1, 10_000, 1_000_010_004);
        assert_eq!(est.wall_ms(500), Some(1_000_000_504));
        est.observe(1, 11_000, 1_000_011_002);
        assert_eq!(est.fit().unwrap().offset_ms, 1_000_000_002.0);
        // Reboot: ticks restart from 0, the old offset is forgotten.
        est.observe(2, 100, 2_000_000_150);
        assert_eq!(est.wall_ms(100), Some(2_000_000_150));
        assert_eq!(est.fit().unwrap().drift_ppm, 0.0);
    }

    #[test]
    fn late_frames_do_not_move_the_estimate() {
        let mut est = ClockEstimator::default();
        for s in 0..30u64 {
            est.observe(1, s * 1000, 5_000 + (s * 1000) as i64);
        }
        let before = est.fit().unwrap();
        // A resend of tick 20 000 arriving 3 s late.
        est.observe(1, 20_000, 28_000);
        assert_eq!(est.fit().unwrap(), before);
        assert_eq!(before.offset_ms, 5_000.0);
        assert_eq!(before.error_ms, 1.0);
    }
}
