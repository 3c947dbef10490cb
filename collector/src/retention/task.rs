//! The retention task: every `[retention] interval_ms`, for each stored
//! width with a retention, deletes the expired rows in batches of at most
//! `batch_rows` (one transaction each, the store released in between so
//! ingest waits for one batch at most), then gives the freed space back;
//! and its metrics (`tributary_collector_retention_*`).

use std::sync::Arc;

use tokio::sync::watch;
use tributary_core::Width;
use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use super::{Policy, RetentionConfig};
use crate::metrics::{label, Label};
use crate::store::{Answer, Expire};

/// The retention task's metrics.
#[derive(Debug, Default)]
pub struct RetentionMetrics {
    /// Rows deleted, by width (ms).
    expired: Family<Label, Counter>,
    /// Bytes given back to the file system (SQLite's incremental vacuum)
    /// or by dropped partitions.
    pub freed_bytes: Counter,
    /// When the last run ended (collector clock, ms since the Unix epoch).
    pub last_run_ms: Gauge,
    /// How far the oldest row still stored is past its width's deletion
    /// point after the last run (ms, 0 when caught up), by width.
    lag: Family<Label, Gauge>,
    /// Runs that failed (the store's error; the next run retries).
    pub errors: Counter,
}

impl RetentionMetrics {
    /// Rows deleted at `width` so far.
    pub fn expired(&self, width: Width) -> u64 {
        self.expired
            .get_or_create(&label("width", width.ms().to_string()))
            .get()
    }

    /// The lag at `width` after the last run.
    pub fn lag_ms(&self, width: Width) -> i64 {
        self.lag
            .get_or_create(&label("width", width.ms().to_string()))
            .get()
    }

    /// Registers the metrics in `r`.
    pub fn register(&self, r: &mut Registry) {
        let name = |s: &str| format!("tributary_collector_retention_{s}");
        r.register(
            name("expired_rows"),
            "Result rows deleted by retention, by width (ms).",
            self.expired.clone(),
        );
        r.register(
            name("freed_bytes"),
            "Bytes given back to the file system after expiry.",
            self.freed_bytes.clone(),
        );
        r.register(
            name("last_run_ms"),
            "When the retention task last finished a run (ms since the Unix epoch).",
            self.last_run_ms.clone(),
        );
        r.register(
            name("lag_ms"),
            "How far the oldest stored row of a width is past its deletion point (0: caught up).",
            self.lag.clone(),
        );
        r.register(
            name("errors"),
            "Retention runs that failed (retried at the next interval).",
            self.errors.clone(),
        );
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// Rows deleted per width that had any, by width.
    pub expired: Vec<(Width, u64)>,
    /// Bytes given back.
    pub freed_bytes: u64,
    /// Widths whose expired rows were not all deleted (`max_batches` hit).
    pub behind: Vec<Width>,
}

/// The retention task over a store.
#[derive(Debug, Clone)]
pub struct RetentionTask<S> {
    store: S,
    policy: Policy,
    cfg: RetentionConfig,
    metrics: Arc<RetentionMetrics>,
}

impl<S: Expire + Clone + 'static> RetentionTask<S> {
    /// The task enforcing `policy` on `store` at the pace of `cfg`.
    pub fn new(store: S, policy: Policy, cfg: RetentionConfig) -> Self {
        RetentionTask {
            store,
            policy,
            cfg,
            metrics: Arc::default(),
        }
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<RetentionMetrics> {
        &self.metrics
    }

    /// One run at collector clock `now`: deletes what has expired (at most
    /// `max_batches` of `batch_rows` per width) and gives the space back.
    pub async fn run_once(&self, now: i64) -> Answer<Run> {
        let mut run = Run::default();
        for width in self.store.widths().await? {
            // Every stored width gets its partitions ahead, kept forever or
            // not, so rows do not pile up in PostgreSQL's default partition.
            self.store.prepare(width, now).await?;
            let Some(before) = self.policy.delete_before(width, now) else {
                continue;
            };
            let mut total = 0u64;
            let mut done = false;
            for _ in 0..self.cfg.max_batches {
                let n = self
                    .store
                    .expire(width, before, self.cfg.batch_rows)
                    .await?;
                total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                if n < self.cfg.batch_rows {
                    done = true;
                    break;
                }
                // Let ingest's waiting transaction go first.
                tokio::task::yield_now().await;
            }
            let w = label("width", width.ms().to_string());
            self.metrics.expired.get_or_create(&w).inc_by(total);
            let lag = match self.store.oldest(width).await? {
                Some(start) if start < before => before.saturating_sub(start),
                _ => 0,
            };
            self.metrics.lag.get_or_create(&w).set(lag);
            if total > 0 {
                run.expired.push((width, total));
            }
            if !done {
                run.behind.push(width);
            }
        }
        // Also after a run that counted nothing: PostgreSQL's dropped
        // partitions are counted by estimate (0 before an ANALYZE), and the
        // bytes they held are reported here. One bounded step per call, so
        // ingest waits for one at most.
        for _ in 0..self.cfg.max_batches {
            let freed = self.store.reclaim(self.cfg.vacuum_pages).await?;
            if freed == 0 {
                break;
            }
            run.freed_bytes = run.freed_bytes.saturating_add(freed);
            self.metrics.freed_bytes.inc_by(freed);
            tokio::task::yield_now().await;
        }
        self.metrics.last_run_ms.set(now);
        Ok(run)
    }

    /// Runs every `interval_ms` until `stop` turns true (does nothing when
    /// the policy never deletes).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if !self.policy.deletes() {
            return;
        }
        let mut tick = tokio::time::interval(self.cfg.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match self.run_once(tributary_runtime::now_ms()).await {
                Ok(run) if !run.expired.is_empty() || !run.behind.is_empty() => {
                    tracing::info!(
                        expired = ?run.expired,
                        freed_bytes = run.freed_bytes,
                        behind = ?run.behind,
                        "retention run"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, "retention run failed; retried at the next interval");
                }
            }
        }
    }
}
