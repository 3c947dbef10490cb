//! `[limits]`: what the engine's registry accepts (series, tags, the
//! quantum of JSON readings), the largest device payload, and the event
//! times accepted relative to the agent's clock.

use serde::Deserialize;
use tributary_core::Quantum;
use tributary_runtime::config::Problems;

use crate::window::TimeBounds;

/// The default of [`LimitsConfig::max_future_ms`]: 5 minutes.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 5 * 60_000;
/// The default of [`LimitsConfig::max_age_ms`]: 30 days.
pub const DEFAULT_MAX_AGE_MS: i64 = 30 * 86_400_000;

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most series this agent tracks; readings of further series are
    /// refused. Default 100 000.
    pub max_series: usize,
    /// Most tags per series (at most 16). Default 16.
    pub max_tags: usize,
    /// Largest accepted MQTT payload (bytes). Default 256 KiB.
    pub max_payload_bytes: usize,
    /// Quantum exponent for JSON readings of series without one (10^e).
    /// Default −6.
    pub default_quantum: i8,
    /// How far ahead of the agent's clock an event time may be (ms); a
    /// reading or device summary later than that is refused and counted
    /// (`time_future`) and moves no watermark. Default 300 000 (5 min).
    pub max_future_ms: i64,
    /// How far behind the agent's clock an event time may be (ms); an older
    /// reading or device summary is refused and counted (`time_past`).
    /// Default 2 592 000 000 (30 days): raise it for devices that log for
    /// longer offline and upload later.
    pub max_age_ms: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_series: 100_000,
            max_tags: 16,
            max_payload_bytes: 256 * 1024,
            default_quantum: -6,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        }
    }
}

impl LimitsConfig {
    /// Records every invalid value in `p`.
    pub fn check(&self, p: &mut Problems) {
        if self.max_tags > tributary_core::series::MAX_TAGS {
            p.bad(
                "limits.max_tags",
                format!("at most {}", tributary_core::series::MAX_TAGS),
            );
        }
        if self.max_series == 0 {
            p.bad("limits.max_series", "must be > 0");
        }
        if Quantum::new(self.default_quantum).is_err() {
            p.bad("limits.default_quantum", "must lie in -18..=18");
        }
        if self.max_future_ms < 0 {
            p.bad("limits.max_future_ms", "must be ≥ 0");
        }
        if self.max_age_ms <= 0 {
            p.bad("limits.max_age_ms", "must be > 0");
        }
    }

    /// The event times accepted, relative to the agent's clock.
    pub fn time_bounds(&self) -> TimeBounds {
        TimeBounds {
            max_future_ms: self.max_future_ms.max(0),
            max_age_ms: self.max_age_ms.max(1),
        }
    }

    /// The quantum of JSON readings (the default quantum if
    /// `default_quantum` is invalid, which [`LimitsConfig::check`] reports).
    pub fn json_quantum(&self) -> Quantum {
        Quantum::new(self.default_quantum).unwrap_or_default()
    }
}
