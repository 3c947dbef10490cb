//! `[limits]`: what the engine's registry accepts (series, tags, the
//! quantum of JSON readings) and the largest device payload.

use serde::Deserialize;
use tributary_core::Quantum;
use tributary_runtime::config::Problems;

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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_series: 100_000,
            max_tags: 16,
            max_payload_bytes: 256 * 1024,
            default_quantum: -6,
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
    }

    /// The quantum of JSON readings (the default quantum if
    /// `default_quantum` is invalid, which [`LimitsConfig::check`] reports).
    pub fn json_quantum(&self) -> Quantum {
        Quantum::new(self.default_quantum).unwrap_or_default()
    }
}
