//! The agent's metrics: `prometheus-client` counters, gauges and a
//! histogram in one registry, served on `/metrics` as OpenMetrics text by
//! [`tributary_runtime::metrics::render`].
//!
//! Every metric is a field, cheap to bump on hot paths (an atomic add) and
//! readable in-process ([`Metrics::counters`], the fields' `get`). The
//! [`Health`] the health endpoints report rides along. Names:
//! `tributary_agent_*`; counters get their `_total` suffix from the
//! encoder, so what Prometheus scrapes is, e.g.,
//! `tributary_agent_readings_accepted_total`.
//!
//! # Degraded mode
//! - the outbox: `tributary_agent_outbox_bytes` (all),
//!   `tributary_agent_outbox_partial_bytes{width_ms}` (unbatched partials by
//!   coarsening level), `tributary_agent_outbox_batch_bytes` (formed batches),
//!   `tributary_agent_partials_coarsened_total`,
//!   `tributary_agent_readings_dropped_total` (durable: it goes on from the
//!   stored count after a restart);
//! - the store: `tributary_agent_store_ok`, `tributary_agent_store_failing{reason}`
//!   (1 for the current reason: `disk_full`, `io`, `corrupt`,
//!   `cannot_write`, `busy`, `other`), `tributary_agent_store_errors_total{reason}`,
//!   `tributary_agent_inputs_unacknowledged` (input held for its commit).

use std::sync::atomic::AtomicU64;

use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_runtime::metrics::prometheus_client::metrics::histogram::Histogram;
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use crate::health::Health;
use crate::store::error::FAULTS;
use crate::store::WidthBytes;

/// Why input was refused; each is a `reason` label of
/// `tributary_agent_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reject {
    /// JSON that does not parse or has the wrong shape.
    MalformedJson,
    /// A format version this build does not know.
    UnknownVersion,
    /// NaN, infinite or out of the quantum's range.
    BadValue,
    /// A payload above `limits.max_payload_bytes`.
    Oversized,
    /// A link frame with bad COBS/CRC/encoding.
    CorruptFrame,
    /// Data from a device (or boot) whose Hello was not seen.
    UnknownDevice,
    /// A series with more tags than `limits.max_tags`.
    TooManyTags,
    /// A new series past `limits.max_series`.
    SeriesLimit,
    /// An invalid metric name, device id or tag.
    BadKey,
    /// A device window that does not divide the agent window.
    DeviceWindow,
    /// A summary that cannot merge (quantum mismatch, overflow).
    Merge,
    /// A topic outside the device tree.
    BadTopic,
    /// An event time later than the clock plus `limits.max_future_ms`.
    TimeFuture,
    /// An event time older than the clock minus `limits.max_age_ms`.
    TimePast,
}

impl From<crate::window::TimeRefused> for Reject {
    fn from(t: crate::window::TimeRefused) -> Self {
        match t {
            crate::window::TimeRefused::Future { .. } => Reject::TimeFuture,
            crate::window::TimeRefused::Past { .. } => Reject::TimePast,
        }
    }
}

impl Reject {
    /// Every reason, in label order.
    pub const ALL: [Reject; 14] = [
        Reject::MalformedJson,
        Reject::UnknownVersion,
        Reject::BadValue,
        Reject::Oversized,
        Reject::CorruptFrame,
        Reject::UnknownDevice,
        Reject::TooManyTags,
        Reject::SeriesLimit,
        Reject::BadKey,
        Reject::DeviceWindow,
        Reject::Merge,
        Reject::BadTopic,
        Reject::TimeFuture,
        Reject::TimePast,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::MalformedJson => "malformed_json",
            Reject::UnknownVersion => "unknown_version",
            Reject::BadValue => "bad_value",
            Reject::Oversized => "oversized",
            Reject::CorruptFrame => "corrupt_frame",
            Reject::UnknownDevice => "unknown_device",
            Reject::TooManyTags => "too_many_tags",
            Reject::SeriesLimit => "series_limit",
            Reject::BadKey => "bad_key",
            Reject::DeviceWindow => "device_window",
            Reject::Merge => "merge",
            Reject::BadTopic => "bad_topic",
            Reject::TimeFuture => "time_future",
            Reject::TimePast => "time_past",
        }
    }
}

/// Upper bounds (s) of the commit-duration histogram's buckets: a commit
/// flushes to disk, so a slow disk shows here first.
pub const COMMIT_BOUNDS_S: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A gauge holding a non-negative whole number.
pub type UGauge = Gauge<u64, AtomicU64>;
/// A gauge holding a float.
pub type FGauge = Gauge<f64, AtomicU64>;
/// The label set of per-device gauges.
type DeviceLabel = [(&'static str, String); 1];

/// A device's clock estimate as exported (the device link makes it from
/// its clock fit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceClock {
    /// Wall-clock ms at the device's tick 0 (current boot).
    pub offset_ms: f64,
    /// Clock rate error (ppm, positive = fast).
    pub drift_ppm: f64,
    /// Stated error of mapped event times (ms).
    pub error_ms: f64,
}

/// Every metric of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rejected: [Counter; Reject::ALL.len()],
    /// Readings folded into windows.
    pub readings_accepted: Counter,
    /// Link frames received (valid).
    pub frames_received: Counter,
    /// Link frames already applied (re-acked, not re-applied).
    pub frames_duplicate: Counter,
    /// Closed partials put in the outbox.
    pub partials_emitted: Counter,
    /// Revision partials (late data) put in the outbox.
    pub revisions_emitted: Counter,
    /// Partials merged away by coarsening.
    pub partials_coarsened: Counter,
    /// Readings dropped at the outbox floor, ever: restored from the store
    /// at start (it counts them durably).
    pub readings_dropped: Counter,
    /// Batches formed.
    pub batches_formed: Counter,
    /// Batch publications (first sends).
    pub batches_sent: Counter,
    /// Batch re-publications after a confirmation timeout or reconnect.
    pub batches_resent: Counter,
    /// Bytes of the batches' MQTT PUBLISH packets (sends and resends).
    pub uplink_publish_bytes: Counter,
    /// Batches confirmed by the collector.
    pub batches_confirmed: Counter,
    /// Readings in confirmed batches.
    pub readings_confirmed: Counter,
    /// Uplink connections established.
    pub uplink_connects: Counter,
    /// Local broker connections established.
    pub local_connects: Counter,
    /// Group commits by duration (s).
    pub commit_duration: Histogram,
    /// Group commits: the histogram's count, readable in-process (the
    /// encoder shows it as `…_commit_duration_seconds_count`).
    commits: Counter,
    /// Local broker messages received and not yet PUBACKed.
    pub local_unacked: Gauge,
    /// The local broker granted the device-topic subscription on the
    /// current connection (0/1; 0 when refused, e.g. by its ACL).
    pub local_subscribed: Gauge,
    /// Uplink connected (0/1).
    pub uplink_up: Gauge,
    /// Bytes of unconfirmed partials and batches.
    pub outbox_bytes: UGauge,
    /// Bytes of unbatched partials by window width (the coarsening levels).
    outbox_partial_bytes: Family<[(&'static str, String); 1], UGauge>,
    /// Bytes of formed, unconfirmed batches.
    pub outbox_batch_bytes: UGauge,
    /// Inputs applied in memory whose acknowledgement waits for a commit.
    pub inputs_unacknowledged: UGauge,
    /// Failed store operations by reason ([`FAULTS`] order).
    store_errors: [Counter; FAULTS.len()],
    /// 1 for the reason the store currently fails ([`FAULTS`] order).
    store_failing: [Gauge; FAULTS.len()],
    /// Series tracked.
    pub series: UGauge,
    /// Store healthy (1) or failed (0).
    pub store_ok: Gauge,
    clock_offset: Family<DeviceLabel, FGauge>,
    /// Modbus failures by device and reason (`sources::modbus`).
    modbus_errors: Family<[(&'static str, String); 2], Counter>,
    /// Modbus polls by device.
    modbus_polls: Family<DeviceLabel, Counter>,
    /// OPC UA failures and refused values by server and reason (`sources::opcua`).
    opcua_errors: Family<[(&'static str, String); 2], Counter>,
    /// OPC UA values handed to the engine, by server.
    opcua_values: Family<DeviceLabel, Counter>,
    /// OPC UA sessions re-established after a loss, by server.
    opcua_reconnects: Family<DeviceLabel, Counter>,
    clock_drift: Family<DeviceLabel, FGauge>,
    clock_error: Family<DeviceLabel, FGauge>,
    /// What the health endpoints report.
    pub health: Health,
}

/// A snapshot of the main counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Readings folded into windows.
    pub readings_accepted: u64,
    /// Input refused, all reasons.
    pub rejected: u64,
    /// Batches published (first sends).
    pub batches_sent: u64,
    /// Batches confirmed.
    pub batches_confirmed: u64,
    /// Readings in confirmed batches.
    pub readings_confirmed: u64,
    /// Outbox bytes.
    pub outbox_bytes: u64,
    /// Bytes of the batches' MQTT PUBLISH packets (sends and resends).
    pub uplink_publish_bytes: u64,
}

/// Registers a clone of `m` (metrics share their value between clones).
fn reg<M: Clone + tributary_runtime::metrics::prometheus_client::registry::Metric>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("tributary_agent");
        let rejected_family = reg(
            &mut r,
            "rejected",
            "Input refused, by reason.",
            Family::<[(&'static str, &'static str); 1], Counter>::default(),
        );
        // Every reason is shown from the start, at 0.
        let rejected = Reject::ALL.map(|x| {
            rejected_family
                .get_or_create(&[("reason", x.label())])
                .clone()
        });
        let c = |r: &mut Registry, name: &str, help: &str| reg(r, name, help, Counter::default());
        let g = |r: &mut Registry, name: &str, help: &str| reg(r, name, help, Gauge::default());
        let u = |r: &mut Registry, name: &str, help: &str| reg(r, name, help, UGauge::default());
        let f = |r: &mut Registry, name: &str, help: &str| {
            reg(r, name, help, Family::<DeviceLabel, FGauge>::default())
        };
        Metrics {
            rejected,
            readings_accepted: c(&mut r, "readings_accepted", "Readings folded into windows."),
            frames_received: c(&mut r, "frames_received", "Valid link frames received."),
            frames_duplicate: c(&mut r, "frames_duplicate", "Link frames already applied."),
            partials_emitted: c(&mut r, "partials_emitted", "Closed partials put in the outbox."),
            revisions_emitted: c(&mut r, "revisions_emitted", "Revision partials (late data)."),
            partials_coarsened: c(&mut r, "partials_coarsened", "Partials merged away by coarsening (into the row of a coarser window)."),
            readings_dropped: c(&mut r, "readings_dropped", "Readings dropped at the outbox floor, since the database was created (durable)."),
            batches_formed: c(&mut r, "batches_formed", "Batches formed."),
            batches_sent: c(&mut r, "batches_sent", "Batches published (first sends)."),
            batches_resent: c(&mut r, "batches_resent", "Batches published again."),
            uplink_publish_bytes: c(&mut r, "uplink_publish_bytes", "Bytes of the MQTT PUBLISH packets of batches as encoded for the socket (sends and resends)."),
            batches_confirmed: c(&mut r, "batches_confirmed", "Batches confirmed by the collector."),
            readings_confirmed: c(&mut r, "readings_confirmed", "Readings in confirmed batches."),
            uplink_connects: c(&mut r, "uplink_connects", "Uplink connections established."),
            local_connects: c(&mut r, "local_mqtt_connects", "Local broker connections established."),
            commit_duration: reg(
                &mut r,
                "commit_duration_seconds",
                "Group commits of the agent's store by duration (each ends in a disk flush).",
                Histogram::new(COMMIT_BOUNDS_S),
            ),
            commits: Counter::default(),
            local_unacked: g(&mut r, "local_mqtt_unacked", "Local broker messages received and not yet acknowledged."),
            local_subscribed: g(&mut r, "local_mqtt_subscribed", "Whether the local broker granted the device-topic subscription."),
            uplink_up: g(&mut r, "uplink_up", "Whether the uplink is connected."),
            outbox_bytes: u(&mut r, "outbox_bytes", "Bytes of unconfirmed partials and batches."),
            outbox_partial_bytes: reg(
                &mut r,
                "outbox_partial_bytes",
                "Bytes of unbatched partials by window width (ms): the coarsening levels.",
                Family::default(),
            ),
            outbox_batch_bytes: u(&mut r, "outbox_batch_bytes", "Bytes of formed batches not yet confirmed."),
            inputs_unacknowledged: u(&mut r, "inputs_unacknowledged", "Inputs applied but not yet acknowledged: they wait for their commit (all of them while the store fails)."),
            store_errors: {
                let fam = reg(&mut r, "store_errors", "Failed store operations, by reason.", Family::<[(&'static str, &'static str); 1], Counter>::default());
                FAULTS.map(|f| fam.get_or_create(&[("reason", f)]).clone())
            },
            store_failing: {
                let fam = reg(&mut r, "store_failing", "1 for the reason the store currently fails (input is then held unacknowledged).", Family::<[(&'static str, &'static str); 1], Gauge>::default());
                FAULTS.map(|f| fam.get_or_create(&[("reason", f)]).clone())
            },
            series: u(&mut r, "series", "Series tracked."),
            store_ok: g(&mut r, "store_ok", "Whether the last store operation succeeded."),
            modbus_errors: reg(&mut r, "modbus_errors", "Modbus failures by device and reason (connect, timeout, crc, io, protocol, exception, value).", Family::default()),
            modbus_polls: reg(&mut r, "modbus_polls", "Modbus polls by device.", Family::default()),
            opcua_errors: reg(&mut r, "opcua_errors", "OPC UA failures and refused values by server and reason (connect, subscribe, item, connection_lost, reconnect, session_ended, bad, uncertain, type, value, repeat, overflow).", Family::default()),
            opcua_values: reg(&mut r, "opcua_values", "OPC UA values handed to the engine, by server.", Family::default()),
            opcua_reconnects: reg(&mut r, "opcua_reconnects", "OPC UA sessions re-established (and subscriptions recreated or transferred) after a loss, by server.", Family::default()),
            clock_offset: f(&mut r, "device_clock_offset_ms", "Estimated wall-clock ms at the device's tick 0 (current boot)."),
            clock_drift: f(&mut r, "device_clock_drift_ppm", "Estimated device clock rate error (ppm, positive = fast)."),
            clock_error: f(&mut r, "device_clock_error_ms", "Stated error of event times mapped from device ticks (ms, excluding the link's constant latency)."),
            health: Health::default(),
            registry: r,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        tributary_runtime::metrics::render(&self.registry)
    }

    /// The Modbus failures of `device` for `reason`.
    pub fn modbus_error(&self, device: &str, reason: &'static str) -> Counter {
        self.modbus_errors
            .get_or_create(&[
                ("device", device.to_string()),
                ("reason", reason.to_string()),
            ])
            .clone()
    }

    /// The Modbus polls of `device`.
    pub fn modbus_polls(&self, device: &str) -> Counter {
        self.modbus_polls
            .get_or_create(&[("device", device.to_string())])
            .clone()
    }

    /// The OPC UA failures or refused values of `device` for `reason`.
    pub fn opcua_error(&self, device: &str, reason: &'static str) -> Counter {
        self.opcua_errors
            .get_or_create(&[
                ("device", device.to_string()),
                ("reason", reason.to_string()),
            ])
            .clone()
    }

    /// The OPC UA values of `device` handed to the engine.
    pub fn opcua_values(&self, device: &str) -> Counter {
        self.opcua_values
            .get_or_create(&[("device", device.to_string())])
            .clone()
    }

    /// The OPC UA reconnections of `device`.
    pub fn opcua_reconnects(&self, device: &str) -> Counter {
        self.opcua_reconnects
            .get_or_create(&[("device", device.to_string())])
            .clone()
    }

    /// Counts one refused input.
    pub fn reject(&self, r: Reject) {
        self.rejected[r as usize].inc();
    }

    /// Counts `n` refused inputs of one reason.
    pub fn reject_n(&self, r: Reject, n: u64) {
        self.rejected[r as usize].inc_by(n);
    }

    /// Refusals for one reason.
    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r as usize].get()
    }

    /// Records one group commit that took `d`.
    pub fn record_commit(&self, d: std::time::Duration) {
        self.commit_duration.observe(d.as_secs_f64());
        self.commits.inc();
    }

    /// Group commits so far.
    pub fn commits(&self) -> u64 {
        self.commits.get()
    }

    /// Shows the outbox's bytes: `rows` (unbatched partials per width) and
    /// formed batches.
    pub fn set_outbox(&self, rows: &WidthBytes, batch_bytes: u64) {
        for (width, bytes) in rows.iter() {
            self.outbox_partial_bytes
                .get_or_create(&[("width_ms", width.to_string())])
                .set(bytes);
        }
        self.outbox_batch_bytes.set(batch_bytes);
        self.outbox_bytes.set(rows.total() + batch_bytes);
    }

    /// Bytes of unbatched partials of width `width_ms`, as shown.
    pub fn outbox_partial_bytes(&self, width_ms: i64) -> Option<u64> {
        let label = [("width_ms", width_ms.to_string())];
        Some(self.outbox_partial_bytes.get(&label)?.get())
    }

    /// A store operation failed for `reason` (one of [`FAULTS`]), saying
    /// `why`.
    pub fn store_failed(&self, reason: &str, why: String) {
        self.store_ok.set(0);
        for (i, f) in FAULTS.iter().enumerate() {
            self.store_failing[i].set(i64::from(*f == reason));
            if *f == reason {
                self.store_errors[i].inc();
            }
        }
        self.health.store_failed(why);
    }

    /// The store works.
    pub fn store_recovered(&self) {
        self.store_ok.set(1);
        for g in &self.store_failing {
            g.set(0);
        }
        self.health.store_ok();
    }

    /// Failed store operations for `reason`.
    pub fn store_errors(&self, reason: &str) -> u64 {
        FAULTS
            .iter()
            .position(|f| *f == reason)
            .map_or(0, |i| self.store_errors[i].get())
    }

    /// Records a device's current clock estimate.
    pub fn set_clock(&self, device: &str, clock: DeviceClock) {
        let label = [("device", device.to_string())];
        self.clock_offset.get_or_create(&label).set(clock.offset_ms);
        self.clock_drift.get_or_create(&label).set(clock.drift_ppm);
        self.clock_error.get_or_create(&label).set(clock.error_ms);
    }

    /// A device's current clock estimate, as exported.
    pub fn clock(&self, device: &str) -> Option<DeviceClock> {
        let label = [("device", device.to_string())];
        Some(DeviceClock {
            offset_ms: self.clock_offset.get(&label)?.get(),
            drift_ppm: self.clock_drift.get(&label)?.get(),
            error_ms: self.clock_error.get(&label)?.get(),
        })
    }

    /// A snapshot of the main counters.
    pub fn counters(&self) -> Counters {
        Counters {
            readings_accepted: self.readings_accepted.get(),
            rejected: self.rejected.iter().map(Counter::get).sum(),
            batches_sent: self.batches_sent.get(),
            batches_confirmed: self.batches_confirmed.get(),
            readings_confirmed: self.readings_confirmed.get(),
            outbox_bytes: self.outbox_bytes.get(),
            uplink_publish_bytes: self.uplink_publish_bytes.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.reject(Reject::BadValue);
        m.reject(Reject::BadValue);
        m.reject_n(Reject::Oversized, 3);
        m.readings_accepted.inc_by(5);
        let text = m.render();
        assert!(text.contains("tributary_agent_rejected_total{reason=\"bad_value\"} 2\n"));
        assert!(text.contains("tributary_agent_rejected_total{reason=\"oversized\"} 3\n"));
        // Every reason is listed, also at zero.
        for r in Reject::ALL {
            assert!(
                text.contains(&format!(
                    "tributary_agent_rejected_total{{reason=\"{}\"}}",
                    r.label()
                )),
                "{r:?} in\n{text}"
            );
        }
        assert!(text.contains("tributary_agent_readings_accepted_total 5\n"));
        assert!(text.contains("# TYPE tributary_agent_outbox_bytes gauge\n"));
        assert!(text.contains("tributary_agent_store_ok 0\n"));
        assert_eq!(m.counters().rejected, 5);
        assert_eq!(m.rejected(Reject::Oversized), 3);
        // Each reason counts on its own label.
        for (i, r) in Reject::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
        let labels: std::collections::BTreeSet<_> = Reject::ALL.map(Reject::label).into();
        assert_eq!(labels.len(), Reject::ALL.len());
    }

    #[test]
    fn commit_durations_form_a_cumulative_histogram() {
        use std::time::Duration;
        let m = Metrics::default();
        for ms in [1, 5, 30, 300, 3_000] {
            m.record_commit(Duration::from_millis(ms));
        }
        let text = m.render();
        let name = "tributary_agent_commit_duration_seconds";
        for (le, n) in [
            ("0.005", 2),
            ("0.01", 2),
            ("0.05", 3),
            ("0.1", 3),
            ("0.5", 4),
            ("2.5", 4),
            ("+Inf", 5),
        ] {
            let line = format!("{name}_bucket{{le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_sum ")))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 3.336).abs() < 1e-9, "{sum}");
        assert!(text.contains(&format!("{name}_count 5\n")), "{text}");
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        assert_eq!(m.commits(), 5);
    }

    #[test]
    fn renders_per_device_clock_estimates() {
        let m = Metrics::default();
        let mut est = crate::link::clock::ClockEstimator::default();
        est.observe(1, 1_000, 5_004);
        m.set_clock("dev-a", est.fit().unwrap().into());
        let text = m.render();
        assert!(text.contains("tributary_agent_device_clock_offset_ms{device=\"dev-a\"} 4004.0\n"));
        assert!(text.contains("tributary_agent_device_clock_drift_ppm{device=\"dev-a\"} 0.0\n"));
        assert!(text.contains("tributary_agent_device_clock_error_ms{device=\"dev-a\"} 1.0\n"));
        let c = m.clock("dev-a").unwrap();
        assert_eq!((c.offset_ms, c.drift_ppm, c.error_ms), (4004.0, 0.0, 1.0));
        assert_eq!(m.clock("dev-b"), None);
    }
}
