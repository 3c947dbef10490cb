//! Ingest's metrics (`tributary_collector_*`), registered in the
//! collector's registry ([`crate::metrics`]); the fields are handles on the
//! registered series, so the tests and the demo read the same numbers
//! `/metrics` shows.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_runtime::metrics::prometheus_client::metrics::histogram::{
    exponential_buckets, Histogram,
};
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use super::check::{PartialRefused, Refused, PARTIAL_REFUSED, REFUSED};
use super::transport::Protocol;
use crate::metrics::{label, Label};

/// Ingest counters and gauges.
#[derive(Debug)]
pub struct IngestCounters {
    /// Batches applied for the first time (`batches_total{result="new"}`).
    pub batches_new: Counter,
    /// Batches that had been applied before (`result="duplicate"`).
    pub batches_duplicate: Counter,
    /// Partials merged.
    pub partials: Counter,
    /// Readings in the partials merged (each counted once).
    pub readings: Counter,
    /// Payload bytes of the batches applied for the first time.
    pub bytes: Counter,
    /// Store transactions that failed.
    pub store_errors: Counter,
    /// Connections the broker accepted.
    pub connects_ok: Counter,
    /// Connection attempts the broker refused (e.g. a wrong password).
    pub connects_refused: Counter,
    /// Connections that failed or were lost (network, TLS, protocol).
    pub connects_failed: Counter,
    /// 1 once the broker has granted the partials subscription on the
    /// current connection, else 0 (refused by an ACL, or not yet answered).
    pub subscribed: Gauge,
    /// PUBACKs and confirmations waiting for room in the MQTT client's
    /// request queue.
    pub outbox: Gauge,
    /// Wall-clock ms at which the oldest message not yet committed (nor
    /// acknowledged) arrived; 0 when none waits. `/health/ready` compares
    /// its age with `[http] ready_max_lag_ms`.
    pub oldest_pending_ms: Gauge,
    /// 1 while the store takes writes (the last commit or health probe
    /// succeeded), 0 after a failure.
    pub store_writable: Gauge,
    /// Batches whose watermark was beyond `[limits] max_future_ms` and was
    /// clamped to it.
    pub watermarks_clamped: Counter,
    /// Seconds each store transaction (one per group) took, failed ones
    /// included: their sum over a span of time is how busy the one writer
    /// was.
    pub store_commit_seconds: Histogram,
    /// Valid batches per committed group (how well `mqtt.max_group`
    /// batches the writes).
    pub store_group_batches: Histogram,
    batches: Family<Label, Counter>,
    connects: Family<Label, Counter>,
    refused: Family<Label, Counter>,
    partials_refused: Family<Label, Counter>,
    /// 1 while connected, labelled with the protocol (`none` before
    /// ingest starts).
    connected: Family<Label, Gauge>,
    /// The protocol's level: 0 until ingest starts, 4 for 3.1.1, 5 for 5.
    protocol: AtomicU8,
    /// Readings each agent reported dropped, in the batches this instance
    /// applied (`agent_dropped_readings_total{agent}`).
    dropped: Family<Label, Counter>,
    /// The agents `dropped` has a label for (at most [`MAX_AGENT_LABELS`]).
    dropped_agents: Mutex<HashSet<String>>,
    /// Agent incarnations seen for the first time, by kind
    /// (`incarnations_total{kind="first"|"another"}`).
    incarnations: Family<Label, Counter>,
}

/// The most agents `agent_dropped_readings_total` has a label of its own
/// for; the drops of any further agent are counted under
/// `agent="_other"` (the API has every agent's): agent ids come from
/// outside, and one series per id must not grow without bound.
pub const MAX_AGENT_LABELS: usize = 1000;

/// The `agent` label of `agent_dropped_readings_total` beyond
/// [`MAX_AGENT_LABELS`].
pub const OTHER_AGENTS: &str = "_other";

impl Default for IngestCounters {
    fn default() -> Self {
        let batches = Family::<Label, Counter>::default();
        let connects = Family::<Label, Counter>::default();
        let refused = Family::<Label, Counter>::default();
        for (_, name) in REFUSED {
            refused.get_or_create_owned(&label("reason", name));
        }
        let partials_refused = Family::<Label, Counter>::default();
        for (_, name) in PARTIAL_REFUSED {
            partials_refused.get_or_create_owned(&label("reason", name));
        }
        let store_writable = Gauge::default();
        store_writable.set(1);
        let connected = Family::<Label, Gauge>::default();
        connected.get_or_create_owned(&label("protocol", "none"));
        let incarnations = Family::<Label, Counter>::default();
        for kind in ["first", "another"] {
            incarnations.get_or_create_owned(&label("kind", kind));
        }
        IngestCounters {
            batches_new: batches.get_or_create_owned(&label("result", "new")),
            batches_duplicate: batches.get_or_create_owned(&label("result", "duplicate")),
            partials: Counter::default(),
            readings: Counter::default(),
            bytes: Counter::default(),
            store_errors: Counter::default(),
            connects_ok: connects.get_or_create_owned(&label("result", "ok")),
            connects_refused: connects.get_or_create_owned(&label("result", "refused")),
            connects_failed: connects.get_or_create_owned(&label("result", "failed")),
            subscribed: Gauge::default(),
            outbox: Gauge::default(),
            oldest_pending_ms: Gauge::default(),
            store_writable,
            watermarks_clamped: Counter::default(),
            // 1 ms to 16 s.
            store_commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 1 to 1,024 batches.
            store_group_batches: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            batches,
            connects,
            refused,
            partials_refused,
            connected,
            protocol: AtomicU8::new(0),
            dropped: Family::default(),
            dropped_agents: Mutex::new(HashSet::new()),
            incarnations,
        }
    }
}

fn incarnation_kind(known_agent: bool) -> Label {
    label("kind", if known_agent { "another" } else { "first" })
}

fn protocol_label(level: u8) -> Label {
    label(
        "protocol",
        match level {
            4 => Protocol::V311.as_str(),
            5 => Protocol::V5.as_str(),
            _ => "none",
        },
    )
}

impl IngestCounters {
    /// Payloads refused for `r`.
    pub fn refused(&self, r: Refused) -> u64 {
        self.refused.get_or_create(&label("reason", r.name())).get()
    }

    /// Counts a payload refused for `r`.
    pub(crate) fn refuse(&self, r: Refused) {
        self.refused.get_or_create(&label("reason", r.name())).inc();
    }

    /// Partials taken out of accepted batches for `r`.
    pub fn partials_refused(&self, r: PartialRefused) -> u64 {
        self.partials_refused
            .get_or_create(&label("reason", r.name()))
            .get()
    }

    /// Counts `n` partials taken out of a batch for `r`.
    pub(crate) fn refuse_partials(&self, r: PartialRefused, n: usize) {
        self.partials_refused
            .get_or_create(&label("reason", r.name()))
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Readings `agent` reported dropped in the batches this instance
    /// applied (an agent past [`MAX_AGENT_LABELS`]: see [`OTHER_AGENTS`]).
    pub fn dropped_readings(&self, agent: &str) -> u64 {
        self.dropped.get_or_create(&label("agent", agent)).get()
    }

    /// Counts `n` readings `agent` reported dropped.
    pub(crate) fn add_dropped(&self, agent: &str, n: u64) {
        let mut labelled = self
            .dropped_agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let name = if labelled.contains(agent) {
            agent
        } else if labelled.len() < MAX_AGENT_LABELS {
            labelled.insert(agent.to_string());
            agent
        } else {
            OTHER_AGENTS
        };
        self.dropped.get_or_create(&label("agent", name)).inc_by(n);
    }

    /// Agent incarnations seen for the first time: an agent's first
    /// (`known_agent` false) or another of a known agent (true).
    pub fn incarnations(&self, known_agent: bool) -> u64 {
        self.incarnations
            .get_or_create(&incarnation_kind(known_agent))
            .get()
    }

    /// Counts a new incarnation.
    pub(crate) fn new_incarnation(&self, known_agent: bool) {
        self.incarnations
            .get_or_create(&incarnation_kind(known_agent))
            .inc();
    }

    /// 1 while connected to the broker, else 0.
    pub fn connected(&self) -> i64 {
        self.connected
            .get_or_create(&protocol_label(self.protocol.load(Relaxed)))
            .get()
    }

    /// Labels `connected` with the protocol ingest speaks.
    pub(crate) fn set_protocol(&self, p: Protocol) {
        let level = match p {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        };
        self.connected.remove(&protocol_label(0));
        self.protocol.store(level, Relaxed);
        self.connected.get_or_create(&protocol_label(level)).set(0);
    }

    /// Whether ingest is connected (and so not subscribed when not).
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected
            .get_or_create(&protocol_label(self.protocol.load(Relaxed)))
            .set(i64::from(up));
        if !up {
            self.subscribed.set(0);
        }
    }

    /// Registers every metric in `r`. Long, as a flat list of
    /// registrations (name, help, metric) is what it is.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tributary_collector_batches",
            "Batches applied (new) or found applied before (duplicate).",
            self.batches.clone(),
        );
        for (name, help, c) in [
            ("partials", "Partials merged.", &self.partials),
            (
                "readings",
                "Readings in the partials merged.",
                &self.readings,
            ),
            (
                "batch_bytes",
                "Payload bytes of batches applied.",
                &self.bytes,
            ),
            (
                "store_errors",
                "Store transactions that failed.",
                &self.store_errors,
            ),
        ] {
            r.register(format!("tributary_collector_{name}"), help, c.clone());
        }
        r.register(
            "tributary_collector_refused",
            "Payloads refused, by reason (unmergeable, store_failed: batches refused whole after they failed to apply alone, also stored per agent incarnation).",
            self.refused.clone(),
        );
        r.register(
            "tributary_collector_partials_refused",
            "Partials taken out of accepted batches, by reason (time_future: window starts beyond [limits] max_future_ms; time_past: before max_age_ms or at the ends of event time).",
            self.partials_refused.clone(),
        );
        r.register(
            "tributary_collector_watermarks_clamped",
            "Batches whose watermark was beyond [limits] max_future_ms and was clamped to it.",
            self.watermarks_clamped.clone(),
        );
        r.register(
            "tributary_collector_ingest_oldest_pending_timestamp_ms",
            "Wall-clock ms at which the oldest message not yet committed arrived (0: none waits).",
            self.oldest_pending_ms.clone(),
        );
        r.register(
            "tributary_collector_store_commit_seconds",
            "Store transactions (one per group of batches) by how long they took, failed ones included; the rate of the sum is the share of time the writer was busy.",
            self.store_commit_seconds.clone(),
        );
        r.register(
            "tributary_collector_store_group_batches",
            "Valid batches per committed group (at most [mqtt] max_group).",
            self.store_group_batches.clone(),
        );
        r.register(
            "tributary_collector_store_writable",
            "1 while the store takes writes (the last commit or health probe succeeded), 0 after a failure.",
            self.store_writable.clone(),
        );
        r.register(
            "tributary_collector_agent_dropped_readings",
            "Readings agents reported dropped (their outbox full at its floor), by agent, in the batches this instance applied.",
            self.dropped.clone(),
        );
        r.register(
            "tributary_collector_incarnations",
            "Agent incarnations (agent databases) seen for the first time: an agent's first, or another of a known agent (its database replaced, or a second gateway with its id).",
            self.incarnations.clone(),
        );
        r.register(
            "tributary_collector_mqtt_connected",
            "1 while connected to the broker.",
            self.connected.clone(),
        );
        r.register(
            "tributary_collector_mqtt_subscribed",
            "1 once the broker granted the partials subscription (0: refused by its ACL, or not answered yet).",
            self.subscribed.clone(),
        );
        r.register(
            "tributary_collector_mqtt_outbox",
            "PUBACKs and confirmations waiting to be handed to the MQTT client.",
            self.outbox.clone(),
        );
        r.register(
            "tributary_collector_mqtt_connects",
            "Connection attempts by outcome (refused: the broker said no, e.g. a wrong password; failed: network, TLS or protocol).",
            self.connects.clone(),
        );
    }

    /// These metrics alone as text (for logs and test messages).
    pub fn render(&self) -> String {
        let mut r = Registry::default();
        self.register(&mut r);
        tributary_runtime::metrics::render(&r)
    }
}
