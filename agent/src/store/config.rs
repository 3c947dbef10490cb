//! `[store]` (the SQLite database and the group commit) and `[outbox]`
//! (closed partials waiting for the uplink, and their byte limit).

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
    /// unsent partials are coarsened. Default 256 MiB.
    pub max_bytes: u64,
    /// The coarser widths (ms) partials are merged into, finest first; each a
    /// multiple of the previous (and of `window.width_ms`). The last is the
    /// floor: past it the oldest partials are dropped and counted. Default
    /// `[300000, 3600000]`.
    pub coarsen_widths_ms: Vec<i64>,
    /// Most partials in one batch. Default 200.
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
