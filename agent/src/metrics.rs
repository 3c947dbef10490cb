//! The agent's counters and gauges, rendered in the Prometheus text format.
//!
//! Plain atomics shared by every task: cheap to bump on hot paths, read by
//! the `/metrics` handler and by [`crate::AgentHandle::metrics`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::link::clock::ClockFit;

/// Why input was refused; each is a label of `tributary_agent_rejected_total`.
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
}

/// Upper bounds (ms) of the commit-duration histogram's buckets: a commit
/// flushes to disk, so a slow disk shows here first.
pub const COMMIT_BOUNDS_MS: [u64; 9] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500];

const REJECT_NAMES: [&str; 12] = [
    "malformed_json",
    "unknown_version",
    "bad_value",
    "oversized",
    "corrupt_frame",
    "unknown_device",
    "too_many_tags",
    "series_limit",
    "bad_key",
    "device_window",
    "merge",
    "bad_topic",
];

/// Reads one figure of a clock estimate.
type ClockField = fn(&ClockFit) -> f64;

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    rejected: [AtomicU64; 12],
    /// Readings folded into windows.
    pub readings_accepted: AtomicU64,
    /// Link frames received (valid).
    pub frames_received: AtomicU64,
    /// Link frames already applied (re-acked, not re-applied).
    pub frames_duplicate: AtomicU64,
    /// Group commits.
    pub commits: AtomicU64,
    /// Time spent committing (µs).
    pub commit_micros: AtomicU64,
    /// Group commits by duration: one count per bound of
    /// [`COMMIT_BOUNDS_MS`], then the longer ones.
    commit_buckets: [AtomicU64; COMMIT_BOUNDS_MS.len() + 1],
    /// Closed partials put in the outbox.
    pub partials_emitted: AtomicU64,
    /// Revision partials (late data) put in the outbox.
    pub revisions_emitted: AtomicU64,
    /// Partials merged away by coarsening.
    pub partials_coarsened: AtomicU64,
    /// Readings dropped at the outbox floor.
    pub readings_dropped: AtomicU64,
    /// Batches formed.
    pub batches_formed: AtomicU64,
    /// Batch publications (first sends).
    pub batches_sent: AtomicU64,
    /// Batch re-publications after a confirmation timeout or reconnect.
    pub batches_resent: AtomicU64,
    /// Batches confirmed by the collector.
    pub batches_confirmed: AtomicU64,
    /// Readings in confirmed batches.
    pub readings_confirmed: AtomicU64,
    /// Uplink connections established.
    pub uplink_connects: AtomicU64,
    /// Local broker connections established.
    pub local_connects: AtomicU64,
    /// Gauge: local broker messages received and not yet PUBACKed.
    pub local_unacked: AtomicU64,
    /// Gauge: the local broker granted the device-topic subscription on the
    /// current connection (0/1; 0 when refused, e.g. by its ACL).
    pub local_subscribed: AtomicU64,

    /// Gauge: uplink connected (0/1).
    pub uplink_up: AtomicU64,
    /// Gauge: outbox bytes.
    pub outbox_bytes: AtomicU64,
    /// Gauge: series tracked.
    pub series: AtomicU64,
    /// Gauge: store healthy (1) or failed (0).
    pub store_ok: AtomicU64,
    /// Per-device clock estimates (devices whose offset is not known exactly).
    clocks: Mutex<BTreeMap<String, ClockFit>>,
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
}

impl Metrics {
    /// Counts one refused input.
    pub fn reject(&self, r: Reject) {
        self.rejected[r as usize].fetch_add(1, Relaxed);
    }

    /// Records a device's current clock estimate.
    pub fn set_clock(&self, device: &str, fit: ClockFit) {
        if let Ok(mut m) = self.clocks.lock() {
            match m.get_mut(device) {
                Some(f) => *f = fit,
                None => {
                    m.insert(device.to_string(), fit);
                }
            }
        }
    }

    /// A device's current clock estimate.
    pub fn clock(&self, device: &str) -> Option<ClockFit> {
        self.clocks.lock().ok()?.get(device).copied()
    }

    /// Records one group commit that took `d`.
    pub fn record_commit(&self, d: std::time::Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.commits.fetch_add(1, Relaxed);
        self.commit_micros.fetch_add(micros, Relaxed);
        let bucket = COMMIT_BOUNDS_MS
            .iter()
            .position(|&ms| micros <= ms * 1_000)
            .unwrap_or(COMMIT_BOUNDS_MS.len());
        self.commit_buckets[bucket].fetch_add(1, Relaxed);
    }

    /// Refusals for one reason.
    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected[r as usize].load(Relaxed)
    }

    /// A snapshot of the main counters.
    pub fn counters(&self) -> Counters {
        Counters {
            readings_accepted: self.readings_accepted.load(Relaxed),
            rejected: self.rejected.iter().map(|a| a.load(Relaxed)).sum(),
            batches_sent: self.batches_sent.load(Relaxed),
            batches_confirmed: self.batches_confirmed.load(Relaxed),
            readings_confirmed: self.readings_confirmed.load(Relaxed),
            outbox_bytes: self.outbox_bytes.load(Relaxed),
        }
    }

    /// `tributary_agent_commit_duration_seconds`, a Prometheus histogram.
    fn render_commit_histogram(&self, out: &mut String) {
        let name = "tributary_agent_commit_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Group commits of the agent's store by duration (each ends in a disk flush).\n# TYPE {name} histogram"
        );
        let mut below = 0;
        for (ms, n) in COMMIT_BOUNDS_MS.iter().zip(&self.commit_buckets) {
            below += n.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {below}",
                *ms as f64 / 1_000.0
            );
        }
        let count = self.commits.load(Relaxed);
        let micros = self.commit_micros.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}.{:06}\n{name}_count {count}",
            micros / 1_000_000,
            micros % 1_000_000
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tributary_agent_rejected_total Input refused, by reason.\n# TYPE tributary_agent_rejected_total counter"
        );
        for (name, c) in REJECT_NAMES.iter().zip(&self.rejected) {
            let _ = writeln!(
                out,
                "tributary_agent_rejected_total{{reason=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 14] = [
            (
                "readings_accepted_total",
                "Readings folded into windows.",
                &self.readings_accepted,
            ),
            (
                "frames_received_total",
                "Valid link frames received.",
                &self.frames_received,
            ),
            (
                "frames_duplicate_total",
                "Link frames already applied.",
                &self.frames_duplicate,
            ),
            (
                "partials_emitted_total",
                "Closed partials put in the outbox.",
                &self.partials_emitted,
            ),
            (
                "revisions_emitted_total",
                "Revision partials (late data).",
                &self.revisions_emitted,
            ),
            (
                "partials_coarsened_total",
                "Partials merged away by coarsening.",
                &self.partials_coarsened,
            ),
            (
                "readings_dropped_total",
                "Readings dropped at the outbox floor.",
                &self.readings_dropped,
            ),
            (
                "batches_formed_total",
                "Batches formed.",
                &self.batches_formed,
            ),
            (
                "batches_sent_total",
                "Batches published (first sends).",
                &self.batches_sent,
            ),
            (
                "batches_resent_total",
                "Batches published again.",
                &self.batches_resent,
            ),
            (
                "batches_confirmed_total",
                "Batches confirmed by the collector.",
                &self.batches_confirmed,
            ),
            (
                "readings_confirmed_total",
                "Readings in confirmed batches.",
                &self.readings_confirmed,
            ),
            (
                "uplink_connects_total",
                "Uplink connections established.",
                &self.uplink_connects,
            ),
            (
                "local_mqtt_connects_total",
                "Local broker connections established.",
                &self.local_connects,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP tributary_agent_{name} {help}\n# TYPE tributary_agent_{name} counter\ntributary_agent_{name} {}",
                c.load(Relaxed)
            );
        }
        self.render_commit_histogram(&mut out);
        let gauges: [(&str, &str, &AtomicU64); 6] = [
            (
                "local_mqtt_unacked",
                "Local broker messages received and not yet acknowledged.",
                &self.local_unacked,
            ),
            (
                "local_mqtt_subscribed",
                "Whether the local broker granted the device-topic subscription.",
                &self.local_subscribed,
            ),
            (
                "uplink_up",
                "Whether the uplink is connected.",
                &self.uplink_up,
            ),
            (
                "outbox_bytes",
                "Bytes of unconfirmed partials and batches.",
                &self.outbox_bytes,
            ),
            ("series", "Series tracked.", &self.series),
            (
                "store_ok",
                "Whether the last store operation succeeded.",
                &self.store_ok,
            ),
        ];
        for (name, help, g) in gauges {
            let _ = writeln!(
                out,
                "# HELP tributary_agent_{name} {help}\n# TYPE tributary_agent_{name} gauge\ntributary_agent_{name} {}",
                g.load(Relaxed)
            );
        }
        if let Ok(clocks) = self.clocks.lock() {
            let per_device: [(&str, &str, ClockField); 3] = [
                (
                    "device_clock_offset_ms",
                    "Estimated wall-clock ms at the device's tick 0 (current boot).",
                    |f| f.offset_ms,
                ),
                (
                    "device_clock_drift_ppm",
                    "Estimated device clock rate error (ppm, positive = fast).",
                    |f| f.drift_ppm,
                ),
                (
                    "device_clock_error_ms",
                    "Stated error of event times mapped from device ticks (ms, excluding the link's constant latency).",
                    |f| f.error_ms,
                ),
            ];
            for (name, help, get) in per_device {
                let _ = writeln!(
                    out,
                    "# HELP tributary_agent_{name} {help}\n# TYPE tributary_agent_{name} gauge"
                );
                for (device, fit) in clocks.iter() {
                    let _ = writeln!(
                        out,
                        "tributary_agent_{name}{{device=\"{device}\"}} {:.3}",
                        get(fit)
                    );
                }
            }
        }
        out
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
        m.readings_accepted.fetch_add(5, Relaxed);
        let text = m.render();
        assert!(text.contains("tributary_agent_rejected_total{reason=\"bad_value\"} 2"));
        assert!(text.contains("tributary_agent_readings_accepted_total 5"));
        assert_eq!(m.counters().rejected, 2);
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
        assert!(text.contains(&format!("{name}_sum 3.336000\n")), "{text}");
        assert!(text.contains(&format!("{name}_count 5\n")), "{text}");
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
    }

    #[test]
    fn renders_per_device_clock_estimates() {
        let m = Metrics::default();
        let mut est = crate::link::clock::ClockEstimator::default();
        est.observe(1, 1_000, 5_004);
        m.set_clock("dev-a", est.fit().unwrap());
        let text = m.render();
        assert!(text.contains("tributary_agent_device_clock_offset_ms{device=\"dev-a\"} 4004.000"));
        assert!(text.contains("tributary_agent_device_clock_drift_ppm{device=\"dev-a\"} 0.000"));
        assert!(text.contains("tributary_agent_device_clock_error_ms{device=\"dev-a\"} 1.000"));
    }
}
