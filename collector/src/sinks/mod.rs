//! Sinks: push final windows, and their later revisions, to HTTP endpoints —
//! InfluxDB's v2 write API (line protocol, `sinks/influx.rs`), a generic
//! JSON webhook (`sinks/webhook.rs`), Prometheus remote write (native
//! histograms, `sinks/prometheus.rs`, messages in `sinks/prompb.rs`) or
//! OTLP/HTTP metrics (exponential histograms, `sinks/otlp.rs`). Every kind
//! shares the runner (`runner.rs`, `deliver.rs`, `http.rs`; the lease in
//! `crate::lease`): a new kind is one encoding module and its headers in
//! `http.rs`.
//!
//! # Design
//! The pending queue of a sink is the store itself: every result row written
//! gets a new, strictly increasing change number (see [`crate::store`]), and
//! each sink keeps a durable cursor `sink:<name>` in the store. A sink
//! - reads the rows of its width changed after its cursor, in change order;
//! - pushes those whose window is final ([`crate::finality`], decided from
//!   the store's progress), and *parks* those that are not
//!   ([`Feed::park`], durable, before the cursor passes them);
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
//!   `revision`: InfluxDB overwrites the point, webhook receivers upsert,
//!   OTLP backends keyed by series and time replace it. Prometheus cannot
//!   replace a sample: it refuses the revision, which is logged and counted
//!   as rejected (see `sinks/prometheus.rs`).
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
mod deliver;
mod http;
mod influx;
mod otlp;
mod prometheus;
mod prompb;
mod runner;
mod webhook;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_runtime::metrics::prometheus_client::registry::Registry;

pub use config::{validate_all, InfluxApi, SinkConfig, SinkKind, MAX_BATCH_SIZE};

/// The Prometheus remote-write body (snappy-compressed protobuf) the
/// `prometheus` sink sends for `rows`: for tools and benchmarks that post
/// the same requests themselves.
pub fn prometheus_body(rows: &[crate::store::Changed]) -> Result<Vec<u8>, snap::Error> {
    prometheus::encode(rows)
}

use crate::finality::Finality;
use crate::metrics::{label, Label};
use crate::store::{Feed, Leases, Query, StoreError};

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
}

/// A gauge holding seconds (`f64`).
pub type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The metrics of one sink: handles on its series of the
/// `tributary_sink_*` families (label `sink`).
#[derive(Debug, Clone)]
pub struct SinkCounters {
    /// Points delivered (answered 2xx).
    pub pushed: Counter,
    /// Requests answered 2xx.
    pub batches: Counter,
    /// Failed attempts that were retried.
    pub retries: Counter,
    /// Points refused with a 4xx and skipped.
    pub rejected: Counter,
    /// Store reads or cursor writes that failed (retried).
    pub store_errors: Counter,
    /// When a request last got a 2xx (seconds since the Unix epoch, 0 =
    /// never).
    pub last_success: Seconds,
    /// Rows after the cursor at the last look (counted up to 10,000).
    pub lag: Gauge,
    /// Failed attempts in a row at the current batch (0 when healthy).
    pub failing: Gauge,
    /// How long the oldest parked window has waited to be final.
    pub held: Seconds,
    /// Windows parked because they were not final when the feed reached
    /// them.
    pub parked: Gauge,
    /// The cursor: the change number of the last row pushed or skipped.
    pub cursor: Gauge,
    /// 1 while this instance holds the sink's lease (and pushes), else 0.
    pub leader: Gauge,
}

/// The `tributary_sink_*` families: (name without the prefix, help).
const FAMILIES: [(&str, &str); 12] = [
    ("pushed_points", "Points delivered (2xx)."),
    ("batches", "Requests answered 2xx."),
    (
        "retries",
        "Failed attempts retried (timeouts, connection errors, 5xx, 429).",
    ),
    ("rejected_points", "Points refused with a 4xx and skipped."),
    (
        "store_errors",
        "Change-feed reads or cursor writes that failed.",
    ),
    (
        "last_success_timestamp_seconds",
        "When a request last got a 2xx (0 = never).",
    ),
    (
        "lag_rows",
        "Rows changed after the cursor, waiting (counted up to 10000).",
    ),
    (
        "consecutive_failures",
        "Failed attempts in a row at the current batch (0 = healthy).",
    ),
    (
        "held_seconds",
        "How long the oldest parked window (not final yet) has waited.",
    ),
    (
        "parked_windows",
        "Windows passed over because they were not final yet, pushed once they are.",
    ),
    ("cursor", "Change number of the last row pushed or skipped."),
    (
        "leader",
        "1 while this instance holds the sink's lease and pushes; 0 while another instance does.",
    ),
];

/// The metrics of every sink.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    counters: [Family<Label, Counter>; 5],
    seconds: [Family<Label, Seconds>; 2],
    gauges: [Family<Label, Gauge>; 5],
    sinks: Vec<(String, Arc<SinkCounters>)>,
}

impl SinkMetrics {
    /// The metrics of sink `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<SinkCounters>> {
        self.sinks.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Adds sink `name`'s series.
    fn add(&mut self, name: &str) -> Arc<SinkCounters> {
        let l = label("sink", name);
        let [pushed, batches, retries, rejected, store_errors] =
            self.counters.each_ref().map(|f| f.get_or_create_owned(&l));
        let [last_success, held] = self.seconds.each_ref().map(|f| f.get_or_create_owned(&l));
        let [lag, failing, parked, cursor, leader] =
            self.gauges.each_ref().map(|f| f.get_or_create_owned(&l));
        let c = Arc::new(SinkCounters {
            pushed,
            batches,
            retries,
            rejected,
            store_errors,
            last_success,
            lag,
            failing,
            held,
            parked,
            cursor,
            leader,
        });
        self.sinks.push((name.to_string(), c.clone()));
        c
    }

    /// Registers the families in `r` (none when no sink is configured).
    pub fn register(&self, r: &mut Registry) {
        if self.sinks.is_empty() {
            return;
        }
        let name = |i: usize| format!("tributary_sink_{}", FAMILIES[i].0);
        for (i, f) in self.counters.iter().enumerate() {
            r.register(name(i), FAMILIES[i].1, f.clone());
        }
        for (i, f) in self.seconds.iter().enumerate() {
            r.register(name(5 + i * 3), FAMILIES[5 + i * 3].1, f.clone());
        }
        for (i, f) in [6, 7, 9, 10, 11].into_iter().zip(&self.gauges) {
            r.register(name(i), FAMILIES[i].1, f.clone());
        }
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
pub fn start<S: Feed + Leases + Query + Clone + 'static>(
    configs: &[SinkConfig],
    holder: &str,
    store: S,
    finality: Finality,
    stop: watch::Receiver<bool>,
) -> Result<Sinks, SinkError> {
    let mut metrics = SinkMetrics::default();
    let mut runners = Vec::new();
    for cfg in configs {
        let counters = metrics.add(&cfg.name);
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
