//! `[store]` (the SQLite database and the group commit) and `[outbox]`
//! (closed partials waiting for the uplink, and their byte limit), with the
//! check that the limit can hold one floor window of the configured series
//! ([`OutboxConfig::check_capacity`]).

use serde::Deserialize;
use tributary_core::Width;
use tributary_runtime::config::Problems;

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Longest time input waits for its group commit (ms). Input that makes
    /// a window due is committed (the window closed and sent) after a fifth
    /// of this at most. Default 50.
    pub commit_interval_ms: u64,
    /// Commit early once this many readings are pending. Default 2 000 000.
    pub commit_max_readings: u64,
    /// SQLite `synchronous`: `full` (survives power loss) or `normal`
    /// (survives process crashes). Default `full`.
    pub synchronous: Synchronous,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            commit_interval_ms: 50,
            commit_max_readings: 2_000_000,
            synchronous: Synchronous::Full,
        }
    }
}

impl StoreConfig {
    /// Records every invalid value in `p`.
    pub fn check(&self, p: &mut Problems) {
        if self.commit_interval_ms == 0 {
            p.bad("store.commit_interval_ms", "must be > 0");
        }
    }
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit.
    Full,
    /// fsync at checkpoints only.
    Normal,
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Byte limit of unconfirmed partials and batches; above it the oldest
    /// unsent partials are coarsened. Formed batches take at most a quarter
    /// of it; the rest must hold one floor window of every series, or the
    /// oldest are dropped in a long outage (checked at start: refused when
    /// the known series cannot fit, a warning when `limits.max_series` could
    /// not). Default 256 MiB.
    pub max_bytes: u64,
    /// The coarser widths (ms) partials are merged into, finest first; each a
    /// multiple of the previous (and of `window.width_ms`). The last is the
    /// floor: past it the oldest partials are dropped and counted. Default
    /// `[300000, 3600000]`.
    pub coarsen_widths_ms: Vec<i64>,
    /// Most partials in one batch. Default 200. A binary batch is also cut
    /// to what the collector decodes ([`tributary_core::batch::MAX_EXPANDED`]).
    pub batch_max_partials: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 256 * 1024 * 1024,
            coarsen_widths_ms: vec![300_000, 3_600_000],
            batch_max_partials: 200,
        }
    }
}

impl OutboxConfig {
    /// Records every invalid value in `p`; `window_ms` is `window.width_ms`,
    /// the finest width of the coarsening ladder.
    pub fn check(&self, window_ms: i64, p: &mut Problems) {
        if self.max_bytes < 4096 {
            p.bad("outbox.max_bytes", "must be at least 4096");
        }
        if self.batch_max_partials == 0 {
            p.bad("outbox.batch_max_partials", "must be > 0");
        }
        let mut prev = window_ms;
        for (i, &w) in self.coarsen_widths_ms.iter().enumerate() {
            if w <= prev || prev <= 0 || w % prev != 0 || Width::new(w).is_err() {
                p.bad(
                    format!("outbox.coarsen_widths_ms[{i}]"),
                    format!("{w} ms must be a larger multiple of {prev} ms (and at most 366 days)"),
                );
            }
            prev = w;
        }
    }
}

/// A summary row of one series of the simulated devices at any width, on
/// average over a device's channels: at most this many bytes. Humidity and
/// pressure span narrow ranges (115 and 53 bytes at one hour); the outdoor
/// temperature crosses zero, so its sketch holds buckets over several
/// decades of small magnitudes on both signs (1,955 bytes at one hour,
/// 1,794 at 5 minutes): a device's three rows take 2,123 bytes at one hour
/// (measured by a test below), within 3 × 768.
pub const SIMULATED_ROW_BYTES: u64 = 768;
/// A summary row of a series we know nothing of: a sketch whose readings
/// span about four decades is ~900 bytes; wider ranges take more.
pub const TYPICAL_ROW_BYTES: u64 = 1024;

/// The series an agent's config lets one know of in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesBound {
    /// Series known from the config (the simulated devices' channels).
    pub known: u64,
    /// At most this many further series may come from devices not known in
    /// advance (serial ports, the local broker): `limits.max_series` less
    /// the known ones; 0 without such sources.
    pub unknown: u64,
}

impl OutboxConfig {
    /// The floor width (ms): the last of the ladder, or `window_ms`.
    fn floor_ms(&self, window_ms: i64) -> i64 {
        self.coarsen_widths_ms.last().copied().unwrap_or(window_ms)
    }

    /// Checks that the bytes left for unsent partials (three quarters of
    /// `max_bytes`) hold one floor window of the series `s`: records a
    /// problem in `p` when the known series cannot fit, and returns a
    /// warning with the figures when the bound of further series could not.
    pub fn check_capacity(
        &self,
        window_ms: i64,
        s: SeriesBound,
        p: &mut Problems,
    ) -> Option<String> {
        let budget = self.max_bytes - self.max_bytes / super::outbox::BATCH_SHARE;
        let to_max = |need: u64| need + need.div_ceil(3);
        let floor = self.floor_ms(window_ms);
        let known = s.known.saturating_mul(SIMULATED_ROW_BYTES);
        if known > budget {
            p.bad(
                "outbox.max_bytes",
                format!(
                    "{} bytes leave {budget} for unsent partials (a quarter is kept for batches in \
                     flight), but one {floor} ms window of the {} simulated series needs about \
                     {known} bytes ({SIMULATED_ROW_BYTES} per series): set outbox.max_bytes to at \
                     least {}",
                    self.max_bytes,
                    s.known,
                    to_max(known)
                ),
            );
            return None;
        }
        let bound = known.saturating_add(s.unknown.saturating_mul(TYPICAL_ROW_BYTES));
        (bound > budget).then(|| {
            let fit = s.known + (budget - known) / TYPICAL_ROW_BYTES;
            format!(
                "outbox.max_bytes = {} leaves {budget} bytes for unsent partials: one {floor} ms \
                 window (the floor) of about {fit} series fits (~{TYPICAL_ROW_BYTES} bytes each), \
                 but limits.max_series allows {}; through an outage long enough to coarsen \
                 everything to the floor, more series than fit make the oldest floor windows be \
                 dropped. Set outbox.max_bytes to about {} or lower limits.max_series.",
                self.max_bytes,
                s.known + s.unknown,
                to_max(bound)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tributary_core::Summary;

    use super::*;

    fn problems(p: Problems) -> String {
        p.finish()
            .map_or_else(|e| e.to_string(), |()| String::new())
    }

    #[test]
    fn a_limit_too_small_for_the_known_series_is_refused_with_the_figure() {
        let cfg = OutboxConfig {
            max_bytes: 8_000,
            ..OutboxConfig::default()
        };
        let mut p = Problems::default();
        // 42 simulated series need 42 × 768 bytes; 8000 leave 6000.
        let s = SeriesBound {
            known: 42,
            unknown: 0,
        };
        assert_eq!(cfg.check_capacity(10_000, s, &mut p), None);
        let msg = problems(p);
        assert!(msg.contains("`outbox.max_bytes`"), "{msg}");
        assert!(msg.contains("needs about 32256 bytes"), "{msg}");
        assert!(msg.contains("3600000 ms window"), "{msg}");
        assert!(msg.contains("at least 43008"), "{msg}");
        // The figure it names is enough.
        let cfg = OutboxConfig {
            max_bytes: 43_008,
            ..cfg
        };
        let mut p = Problems::default();
        assert_eq!(cfg.check_capacity(10_000, s, &mut p), None);
        assert_eq!(problems(p), "");
    }

    #[test]
    fn a_limit_too_small_for_the_series_bound_is_a_warning_with_the_figures() {
        let cfg = OutboxConfig {
            max_bytes: 100_000,
            ..OutboxConfig::default()
        };
        let mut p = Problems::default();
        let s = SeriesBound {
            known: 0,
            unknown: 100_000,
        };
        let w = cfg.check_capacity(10_000, s, &mut p).unwrap();
        assert_eq!(problems(p), "", "a warning, not a refusal");
        assert!(w.contains("leaves 75000 bytes"), "{w}");
        assert!(w.contains("about 73 series fits"), "{w}");
        assert!(w.contains("limits.max_series allows 100000"), "{w}");
        assert!(w.contains("about 136533334"), "{w}");
        // The default limit holds the default bound.
        let mut p = Problems::default();
        assert_eq!(
            OutboxConfig::default().check_capacity(60_000, s, &mut p),
            None
        );
    }

    /// [`SIMULATED_ROW_BYTES`] bounds, on average over a device's channels,
    /// what a simulated series' row takes at an hour (the default floor):
    /// its summary of an hour, encoded.
    #[test]
    fn a_simulated_series_row_fits_its_estimate() {
        let sim = tributary_sim::config::SimulatedConfig {
            devices: 1,
            device_window_ms: 5_000,
            readings_per_window: 58,
            windows: 720,
            start_ms: 1_699_999_200_000,
            ..Default::default()
        };
        let mut hour: BTreeMap<String, Summary> = BTreeMap::new();
        for r in tributary_sim::fleet::readings(&sim).unwrap() {
            let mut s = Summary::new(tributary_core::Quantum::new(r.exponent).unwrap());
            for (t, v) in r.readings {
                s.insert(t, v).unwrap();
            }
            hour.insert(r.series.to_string(), s);
        }
        assert_eq!(hour.len(), 3);
        let bytes: Vec<(String, u64)> = hour
            .iter()
            .map(|(k, s)| (k.clone(), crate::store::codec::summary(s).len() as u64))
            .collect();
        let total: u64 = bytes.iter().map(|b| b.1).sum();
        assert!(total <= 3 * SIMULATED_ROW_BYTES, "{bytes:?}");
    }
}
