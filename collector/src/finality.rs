//! When a window is final: every agent that reported its series has sent a
//! watermark past the window's end plus the allowed lateness, or has been
//! silent for longer than the idle timeout (a dead agent must not hold results
//! open forever). Decided from the progress kept in the store, so every
//! collector instance sharing a database gives the same answer.

use serde::Deserialize;
use tributary_runtime::config::Problems;

use crate::store::AgentProgress;

/// The `[finality]` section: when windows become final.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinalityConfig {
    /// How far past a window's end every reporting agent's watermark must be
    /// (ms, default 5,000).
    pub lateness_ms: i64,
    /// After this long without a batch an agent no longer holds windows open
    /// (ms, default 300,000).
    pub idle_timeout_ms: i64,
}

impl Default for FinalityConfig {
    fn default() -> Self {
        let d = Finality::default();
        FinalityConfig {
            lateness_ms: d.lateness_ms,
            idle_timeout_ms: d.idle_timeout_ms,
        }
    }
}

impl FinalityConfig {
    /// The rule.
    pub fn rule(&self) -> Finality {
        Finality {
            lateness_ms: self.lateness_ms,
            idle_timeout_ms: self.idle_timeout_ms,
        }
    }

    /// Checks every value of the section.
    pub fn check(&self, p: &mut Problems) {
        if self.lateness_ms < 0 {
            p.bad("finality.lateness_ms", "must be ≥ 0");
        }
        if self.idle_timeout_ms <= 0 {
            p.bad("finality.idle_timeout_ms", "must be > 0");
        }
    }
}

/// The finality rule's two knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finality {
    /// How far past a window's end every reporter's watermark must be (ms).
    pub lateness_ms: i64,
    /// After this long without a batch (collector clock, ms) an agent no
    /// longer holds windows open.
    pub idle_timeout_ms: i64,
}

impl Default for Finality {
    fn default() -> Self {
        Finality {
            lateness_ms: 5_000,
            idle_timeout_ms: 300_000,
        }
    }
}

impl Finality {
    /// The latest window end that is final for a series reported by
    /// `reporters`, at collector time `now_ms`: windows ending at or before it
    /// are final. `None` when nobody has reported the series; `i64::MAX` when
    /// every reporter is idle.
    pub fn final_through(&self, reporters: &[AgentProgress], now_ms: i64) -> Option<i64> {
        if reporters.is_empty() {
            return None;
        }
        Some(
            reporters
                .iter()
                .map(|p| {
                    if now_ms.saturating_sub(p.seen_ms) >= self.idle_timeout_ms {
                        i64::MAX
                    } else {
                        p.watermark.saturating_sub(self.lateness_ms)
                    }
                })
                .min()
                .unwrap_or(i64::MAX),
        )
    }

    /// Whether a window ending at `end` is final.
    pub fn is_final(&self, reporters: &[AgentProgress], now_ms: i64, end: i64) -> bool {
        self.final_through(reporters, now_ms)
            .is_some_and(|through| end <= through)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(agent: &str, watermark: i64, seen_ms: i64) -> AgentProgress {
        AgentProgress {
            agent: agent.into(),
            watermark,
            seen_ms,
        }
    }

    const F: Finality = Finality {
        lateness_ms: 1_000,
        idle_timeout_ms: 10_000,
    };

    #[test]
    fn every_reporter_must_be_past_end_plus_lateness() {
        let r = [p("a", 61_000, 100), p("b", 70_000, 100)];
        assert!(F.is_final(&r, 200, 60_000));
        assert!(!F.is_final(&r, 200, 60_001));
        let r = [p("a", 60_999, 100), p("b", 70_000, 100)];
        assert!(!F.is_final(&r, 200, 60_000), "a is not past end + lateness");
    }

    #[test]
    fn an_idle_agent_stops_holding_windows_open() {
        let r = [p("a", 0, 0), p("b", 70_000, 5_000)];
        assert!(!F.is_final(&r, 9_999, 60_000));
        assert!(F.is_final(&r, 10_000, 60_000), "a has been idle 10 s");
        assert!(!F.is_final(&r, 10_000, 70_000), "b still holds 70 s");
    }

    #[test]
    fn nothing_is_final_without_reporters() {
        assert_eq!(F.final_through(&[], 0), None);
        assert!(!F.is_final(&[], i64::MAX, i64::MIN));
    }
}
