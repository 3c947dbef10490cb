//! Sinks: push final windows, and their later revisions, to HTTP endpoints —
//! InfluxDB's v2 write API (line protocol, `sinks/influx.rs`) or a generic
//! JSON webhook (`sinks/webhook.rs`).
//!
//! # Design
//! The pending queue of a sink is the store itself: every result row written
//! gets a new, strictly increasing change number (see [`crate::store`]), and
//! each sink keeps a durable cursor `sink:<name>` in the store. A sink
//! - reads the rows of its width changed after its cursor, in change order;
//! - pushes those whose window is final ([`crate::finality`], decided from
//!   the store's progress), and *parks* those that are not
//!   ([`Store::park`], durable, before the cursor passes them);
//! - looks at a page of its parked rows at every poll and pushes those that
//!   have become final, then un-parks them;
//! - advances the cursor past a request only after its `2xx`.
//!
//! So a window that stays non-final (its agents far behind, or data stamped
//! in the future) waits alone, until it is final or its agents go idle,
//! while every row after it goes out: `tributary_sink_parked_windows`
//! counts the parked windows, `tributary_sink_held_seconds` shows how long
//! the oldest has waited, and a warning names it every 5 minutes.
//!
//! What follows:
//! - **Nothing is lost in an outage.** Timeouts, connection errors, `5xx`
//!   and `429` are retried from the same cursor, forever, with exponential
//!   backoff and jitter; ingest goes on meanwhile and the feed simply grows.
//! - **Revisions.** A later merge into a pushed window gives its row a new
//!   change number, so it re-enters the feed and is pushed again with its
//!   `revision`: InfluxDB overwrites the point, webhook receivers upsert.
//! - **One bad point cannot wedge a sink.** A request refused with another
//!   `4xx` is split in halves until the refused point is alone; that point
//!   is logged with the response body, counted as rejected and skipped.
//! - **Restarts resume** from the durable cursor. A request in flight when
//!   the collector stops (or crashes) is pushed again: delivery is
//!   at-least-once, made idempotent by the receivers' upsert on (series,
//!   window start, width).
//!
//! - **Several instances, one pusher.** Instances sharing a database may all
//!   configure the same sinks. A sink pushes only from the instance holding
//!   its lease in the store (`sink:<name>`, named by the instance's
//!   `mqtt.client_id`); the others stand by and take over when it stops
//!   (at once) or dies (after `lease_ms`), from the shared cursor.
//!   `tributary_sink_leader` shows which instance pushes.

mod config;
mod http;
mod influx;
mod lease;
mod runner;
mod webhook;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{validate_all, SinkConfig, SinkKind, MAX_BATCH_SIZE};

use crate::finality::Finality;
use crate::store::{Store, StoreError};

/// Why a sink could not start or one of its steps failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A value of the sink's config is unusable.
    #[error("sink config `{key}`: {reason}")]
    Config {
        /// The key within the sink's table.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Another thread panicked while holding the store.
    #[error("the store lock is poisoned")]
    Poisoned,
    /// A blocking store task failed.
    #[error("store task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The counters of one sink.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Points delivered (answered 2xx).
    pub pushed: AtomicU64,
    /// Requests answered 2xx.
    pub batches: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Points refused with a 4xx and skipped.
    pub rejected: AtomicU64,
    /// When a request last got a 2xx (ms since the Unix epoch, 0 = never).
    pub last_success_ms: AtomicI64,
    /// Rows after the cursor at the last look (counted up to 10,000).
    pub lag: AtomicU64,
    /// The cursor: the change number of the last row pushed or skipped.
    pub cursor: AtomicU64,
    /// Store reads or cursor writes that failed (retried).
    pub store_errors: AtomicU64,
    /// Failed attempts in a row at the current batch (0 when healthy).
    pub failing: AtomicU64,
    /// How long (ms) the oldest parked window has waited to be final.
    pub held_ms: AtomicU64,
    /// Windows parked because they were not final when the feed reached
    /// them.
    pub parked: AtomicU64,
    /// 1 while this instance holds the sink's lease (and pushes), else 0.
    pub leader: AtomicU64,
}

/// The counters of every sink, rendered for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    sinks: Vec<(String, Arc<SinkCounters>)>,
}

impl SinkMetrics {
    /// The counters of sink `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<SinkCounters>> {
        self.sinks.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Prometheus text lines (nothing when no sink is configured).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.sinks.is_empty() {
            return out;
        }
        type Get = fn(&SinkCounters) -> String;
        let families: [(&str, &str, &str, Get); 12] = [
            (
                "pushed_points_total",
                "counter",
                "Points delivered (2xx).",
                |c| c.pushed.load(Relaxed).to_string(),
            ),
            ("batches_total", "counter", "Requests answered 2xx.", |c| {
                c.batches.load(Relaxed).to_string()
            }),
            (
                "retries_total",
                "counter",
                "Failed attempts retried (timeouts, connection errors, 5xx, 429).",
                |c| c.retries.load(Relaxed).to_string(),
            ),
            (
                "rejected_points_total",
                "counter",
                "Points refused with a 4xx and skipped.",
                |c| c.rejected.load(Relaxed).to_string(),
            ),
            (
                "store_errors_total",
                "counter",
                "Change-feed reads or cursor writes that failed.",
                |c| c.store_errors.load(Relaxed).to_string(),
            ),
            (
                "last_success_timestamp_seconds",
                "gauge",
                "When a request last got a 2xx (0 = never).",
                |c| {
                    let ms = c.last_success_ms.load(Relaxed);
                    format!("{}.{:03}", ms / 1000, ms % 1000)
                },
            ),
            (
                "lag_rows",
                "gauge",
                "Rows changed after the cursor, waiting (counted up to 10000).",
                |c| c.lag.load(Relaxed).to_string(),
            ),
            (
                "consecutive_failures",
                "gauge",
                "Failed attempts in a row at the current batch (0 = healthy).",
                |c| c.failing.load(Relaxed).to_string(),
            ),
            (
                "held_seconds",
                "gauge",
                "How long the oldest parked window (not final yet) has waited.",
                |c| {
                    let ms = c.held_ms.load(Relaxed);
                    format!("{}.{:03}", ms / 1000, ms % 1000)
                },
            ),
            (
                "parked_windows",
                "gauge",
                "Windows passed over because they were not final yet, pushed once they are.",
                |c| c.parked.load(Relaxed).to_string(),
            ),
            (
                "cursor",
                "gauge",
                "Change number of the last row pushed or skipped.",
                |c| c.cursor.load(Relaxed).to_string(),
            ),
            (
                "leader",
                "gauge",
                "1 while this instance holds the sink's lease and pushes; 0 while another instance does.",
                |c| c.leader.load(Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, get) in families {
            let _ = writeln!(out, "# HELP tributary_sink_{name} {help}");
            let _ = writeln!(out, "# TYPE tributary_sink_{name} {kind}");
            for (sink, c) in &self.sinks {
                let _ = writeln!(out, "tributary_sink_{name}{{sink=\"{sink}\"}} {}", get(c));
            }
        }
        out
    }
}

/// The running sinks.
#[derive(Debug)]
pub struct Sinks {
    metrics: Arc<SinkMetrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sinks {
    /// Their counters.
    pub fn metrics(&self) -> &Arc<SinkMetrics> {
        &self.metrics
    }

    /// Waits for every sink to finish (after the stop signal).
    pub async fn join(self) -> Result<(), tokio::task::JoinError> {
        for t in self.tasks {
            t.await?;
        }
        Ok(())
    }
}

/// Starts one task per sink in `configs` (validated, see
/// [`validate_all`]); each runs until `stop` turns true (or its sender is
/// dropped), pushing while `holder` (this instance's unique name) holds the
/// sink's lease.
pub fn start<S: Store + Send + 'static>(
    configs: &[SinkConfig],
    holder: &str,
    store: Arc<Mutex<S>>,
    finality: Finality,
    stop: watch::Receiver<bool>,
) -> Result<Sinks, SinkError> {
    let mut metrics = SinkMetrics::default();
    let mut runners = Vec::new();
    for cfg in configs {
        let counters = Arc::new(SinkCounters::default());
        metrics.sinks.push((cfg.name.clone(), counters.clone()));
        runners.push(runner::Runner::new(
            cfg.clone(),
            holder,
            store.clone(),
            finality,
            counters,
            stop.clone(),
        )?);
    }
    let tasks = runners.into_iter().map(|r| tokio::spawn(r.run())).collect();
    Ok(Sinks {
        metrics: Arc::new(metrics),
        tasks,
    })
}
