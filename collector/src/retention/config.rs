//! The `[retention]` section: how long each stored width is kept after its
//! window's end, checked against the roll-up widths it belongs to, and the
//! pace of the retention task ([`super::task`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tributary_runtime::config::Problems;

use super::Policy;

/// The `[retention]` section. Every length is in ms, measured from a
/// window's end to the collector's clock; 0 (the default) keeps a width
/// forever.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long agent windows (every stored width that is not a roll-up)
    /// are kept (default 0: forever).
    pub windows_ms: i64,
    /// How long each roll-up width is kept, by the width in ms as a key
    /// (`"3600000" = 31536000000`); a roll-up not named is kept forever.
    pub rollups: BTreeMap<String, i64>,
    /// How often the retention task looks for expired rows (default
    /// 60,000 = 1 minute). May be longer than `lease_ms`: the holder renews
    /// the lease between runs on a timer of its own.
    pub interval_ms: u64,
    /// Most rows deleted in one transaction (default 1,000): ingest waits
    /// for at most one such batch.
    pub batch_rows: usize,
    /// Most batches per width in one run (default 1,000), so one run ends
    /// and the next resumes where it stopped.
    pub max_batches: usize,
    /// SQLite: most free pages given back to the file system per step of
    /// `PRAGMA incremental_vacuum` (default 1,024 = 4 MiB at 4 KiB pages).
    pub vacuum_pages: u32,
    /// How long the instance running retention holds the store's
    /// `retention` lease without renewing it (default 120,000 = 2 min; at
    /// least 10,000). Instances sharing a database run retention one at a
    /// time; the holder renews the lease once a third of this has passed,
    /// checked before every step of a run and between runs, so it must be
    /// well above one step (a batch of `batch_rows` deletes; on PostgreSQL
    /// up to 60 s waiting for a pooled connection). When the holder dies,
    /// another instance takes over within this plus `interval_ms`.
    pub lease_ms: u64,
}

/// The least `lease_ms`.
const MIN_LEASE_MS: u64 = 10_000;

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            windows_ms: 0,
            rollups: BTreeMap::new(),
            interval_ms: 60_000,
            batch_rows: 1_000,
            max_batches: 1_000,
            vacuum_pages: 1_024,
            lease_ms: 120_000,
        }
    }
}

impl RetentionConfig {
    /// The policy over roll-up widths `rollups_ms` (call after
    /// [`RetentionConfig::check`] passed; unparsable keys are ignored).
    pub fn policy(&self, rollups_ms: &[i64]) -> Policy {
        let keep = |w: i64| {
            self.rollups
                .iter()
                .find(|(k, _)| k.trim().parse::<i64>().ok() == Some(w))
                .map_or(0, |(_, &v)| v)
        };
        let rollups = rollups_ms.iter().map(|&w| (w, keep(w))).collect();
        Policy::new(self.windows_ms, rollups)
    }

    /// The task's pace.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The `retention` lease's time to live.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// Checks every value of the section against the roll-up widths
    /// `rollups_ms`.
    pub fn check(&self, rollups_ms: &[i64], p: &mut Problems) {
        if self.windows_ms < 0 {
            p.bad("retention.windows_ms", "must be >= 0 (0: kept forever)");
        }
        for (k, &v) in &self.rollups {
            let key = format!("retention.rollups.{k}");
            match k.trim().parse::<i64>() {
                Ok(w) if rollups_ms.contains(&w) => {}
                _ => p.bad(
                    &key,
                    format!("not a configured roll-up width (rollups_ms = {rollups_ms:?})"),
                ),
            }
            if v < 0 {
                p.bad(&key, "must be >= 0 (0: kept forever)");
            }
        }
        if self.interval_ms == 0 || self.interval_ms > 86_400_000 {
            p.bad("retention.interval_ms", "must be 1..=86400000");
        }
        if self.batch_rows == 0 || self.batch_rows > 100_000 {
            p.bad("retention.batch_rows", "must be 1..=100000");
        }
        if self.max_batches == 0 {
            p.bad("retention.max_batches", "must be > 0");
        }
        if self.vacuum_pages == 0 {
            p.bad("retention.vacuum_pages", "must be > 0");
        }
        if !(MIN_LEASE_MS..=86_400_000).contains(&self.lease_ms) {
            p.bad(
                "retention.lease_ms",
                format!("must be {MIN_LEASE_MS}..=86400000: well above one step of a run, which renews it"),
            );
        }
        if self.windows_ms >= 0 && self.rollups.values().all(|&v| v >= 0) {
            self.policy(rollups_ms).check(p);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn problems(cfg: &RetentionConfig) -> Result<(), String> {
        let mut p = Problems::default();
        cfg.check(&[], &mut p);
        p.finish().map_err(|e| e.to_string())
    }

    #[test]
    fn the_lease_is_at_least_ten_seconds_and_at_most_a_day() {
        let mut cfg = RetentionConfig::default();
        assert_eq!(cfg.lease(), Duration::from_secs(120));
        assert!(problems(&cfg).is_ok());
        for bad in [0, MIN_LEASE_MS - 1, 86_400_001] {
            cfg.lease_ms = bad;
            let e = problems(&cfg).unwrap_err();
            assert!(e.contains("retention.lease_ms"), "{bad}: {e}");
        }
        for good in [MIN_LEASE_MS, 86_400_000] {
            cfg.lease_ms = good;
            assert!(problems(&cfg).is_ok(), "{good}");
        }
    }
}
