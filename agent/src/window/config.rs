//! `[window]`: the agent's event-time windows (DESIGN §3).

use serde::Deserialize;
use tributary_core::Width;
use tributary_runtime::config::Problems;

/// `[window]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Tumbling window width (ms); a multiple of every device window.
    /// Default 60 000.
    pub width_ms: i64,
    /// How long after a window's end (by the source's watermark) it stays
    /// open (ms). Default 5 000.
    pub allowed_lateness_ms: i64,
    /// A source that sent nothing for this long (wall clock, ms) has its
    /// open windows closed; later data for them becomes revision partials.
    /// Default 120 000.
    pub idle_close_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            width_ms: 60_000,
            allowed_lateness_ms: 5_000,
            idle_close_ms: 120_000,
        }
    }
}

const DEFAULT_WIDTH: Width = match Width::new(60_000) {
    Ok(w) => w,
    Err(_) => panic!("60 s is a valid width"),
};

impl WindowConfig {
    /// Records every invalid value in `p`.
    pub fn check(&self, p: &mut Problems) {
        p.check("window.width_ms", Width::new(self.width_ms).map(|_| ()));
        if self.allowed_lateness_ms < 0 {
            p.bad("window.allowed_lateness_ms", "must be ≥ 0");
        }
        if self.idle_close_ms <= 0 {
            p.bad("window.idle_close_ms", "must be > 0");
        }
    }

    /// The window width (the default's if `width_ms` is invalid, which
    /// [`WindowConfig::check`] reports).
    pub fn width(&self) -> Width {
        Width::new(self.width_ms).unwrap_or(DEFAULT_WIDTH)
    }
}
