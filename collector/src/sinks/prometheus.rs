//! Prometheus remote write (protocol 0.1.0: a snappy-compressed protobuf
//! `WriteRequest`, `POST`ed to e.g. `http://prometheus:9090/api/v1/write`).
//!
//! Per (series, window), five series, each with one sample stamped at the
//! window's **end** (the instant the window's statistics are complete):
//!
//! - `<metric>` — a native histogram (a *gauge* histogram: each window stands
//!   alone): the sketch bucket for bucket at its own scale (schema), its zero
//!   count (readings exactly 0, zero threshold 0), count and sum;
//! - `<metric>_count`, `<metric>_sum`, `<metric>_min`, `<metric>_max` — plain
//!   samples (count and sum as in the histogram, for tools without native
//!   histograms).
//!
//! Labels: `device` and the series' tags. Prometheus names allow
//! `[a-zA-Z_:][a-zA-Z0-9_:]*`, so a `.` in a metric name becomes `_`
//! (`room.temp` is written as `room_temp`); a tag key starting with `__`
//! (reserved in Prometheus) is written with a `tag` prefix.
//!
//! # Design
//! **Bucket for bucket.** The sketch indexes the real reading as OpenTelemetry
//! does: bucket *i* at scale *s* holds (2^(i/2^s), 2^((i+1)/2^s)]. A
//! Prometheus bucket *j* of schema *s* holds (2^((j−1)/2^s), 2^(j/2^s)], so
//! *j* = *i* + 1 and nothing is re-binned: PromQL's `histogram_count`,
//! `histogram_sum` and sums over series give exactly Tributary's numbers.
//! Negative readings go to the negative buckets by the same index of their
//! magnitude. Counts are written as integers (first bucket absolute, then
//! deltas), one span per run of non-empty buckets.
//!
//! **Revisions cannot replace a sample in Prometheus.** A revision of a
//! window already pushed is a second sample at the same timestamp; Prometheus
//! refuses it (`400`, "duplicate sample for timestamp", or "out of order
//! sample" once a later window of the series is stored). Every request is
//! applied by Prometheus all or nothing, so the runner isolates the refused
//! point, logs it (series, window, revision and Prometheus' answer) and
//! counts it in `tributary_sink_rejected_points`; the earlier revision stays
//! in Prometheus, the HTTP API keeps the revised numbers. A push repeated
//! after a crash is an *identical* sample, which Prometheus accepts as a
//! no-op, so at-least-once delivery is harmless.
//!
//! The same holds, counted and logged, for a window Prometheus cannot take
//! for its time: one older than its head accepts (about an hour behind the
//! newest sample it holds, e.g. a backlog after a long outage: "out of
//! bounds"), or one first pushed after a later window of its series (several
//! agents feeding one series may finish windows out of order; within one
//! request the windows are sorted by time). Prometheus 2.42 has no
//! out-of-order window for native histograms; later versions with
//! `out_of_order_time_window` set would take those.

use prost::Message as _;

use super::prompb::{self, histogram};
use crate::store::Changed;
use tributary_core::sketch::{Buckets, Store};

/// The snappy-compressed `WriteRequest` of `rows`.
pub(crate) fn encode(rows: &[Changed]) -> Result<Vec<u8>, snap::Error> {
    // Prometheus appends a series' samples in request order and refuses one
    // older than the last: within a request, oldest windows first.
    let mut rows: Vec<&Changed> = rows.iter().collect();
    rows.sort_by_key(|r| r.stored.window.end());
    let req = prompb::WriteRequest {
        timeseries: rows.into_iter().flat_map(series).collect(),
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

/// The five series of one row.
fn series(row: &Changed) -> Vec<prompb::TimeSeries> {
    let key = &row.series;
    let name = metric_name(key.metric());
    let t = row.stored.window.end();
    let s = &row.stored.summary;
    let mut labels: Vec<prompb::Label> = key
        .tags()
        .iter()
        .map(|(k, v)| label(&label_name(k), v))
        .chain([label("device", key.device())])
        .collect();
    let with_name = |suffix: &str| {
        let mut l = labels.clone();
        l.push(label("__name__", &format!("{name}{suffix}")));
        l.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        l
    };
    let sum = s.sum().unwrap_or(0.0);
    let mut out = Vec::with_capacity(5);
    for (suffix, v) in [
        ("_count", Some(s.count() as f64)),
        ("_sum", Some(sum)),
        ("_min", s.min()),
        ("_max", s.max()),
    ] {
        if let Some(value) = v {
            out.push(prompb::TimeSeries {
                labels: with_name(suffix),
                samples: vec![prompb::Sample {
                    value,
                    timestamp: t,
                }],
                ..Default::default()
            });
        }
    }
    labels.push(label("__name__", &name));
    labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    out.push(prompb::TimeSeries {
        labels,
        histograms: vec![native_histogram(row, sum, t)],
        ..Default::default()
    });
    out
}

/// The sketch of a row as a native (gauge) histogram at time `t`.
fn native_histogram(row: &Changed, sum: f64, t: i64) -> prompb::Histogram {
    let sketch = row.stored.summary.sketch();
    let (positive_spans, positive_deltas) = spans(sketch.positive());
    let (negative_spans, negative_deltas) = spans(sketch.negative());
    prompb::Histogram {
        count: Some(histogram::Count::CountInt(row.stored.summary.count())),
        sum,
        schema: i32::from(sketch.scale()),
        zero_threshold: 0.0,
        zero_count: Some(histogram::ZeroCount::ZeroCountInt(sketch.zero_count())),
        negative_spans,
        negative_deltas,
        negative_counts: Vec::new(),
        positive_spans,
        positive_deltas,
        positive_counts: Vec::new(),
        reset_hint: histogram::ResetHint::Gauge as i32,
        timestamp: t,
    }
}

/// One sign's buckets as Prometheus spans and count deltas: a span per run
/// of non-empty buckets; indices shifted by one (see the module's design).
fn spans<S: Store>(buckets: Buckets<'_, S>) -> (Vec<prompb::BucketSpan>, Vec<i64>) {
    let mut spans: Vec<prompb::BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let (mut next, mut prev_count) = (None::<i32>, 0i64);
    for (index, count) in buckets.iter() {
        let j = index + 1;
        match (next, spans.last_mut()) {
            (Some(n), Some(span)) if n == j => span.length += 1,
            _ => spans.push(prompb::BucketSpan {
                // The first span's offset is its index; a later one's is the
                // gap after the previous span.
                offset: next.map_or(j, |n| j - n),
                length: 1,
            }),
        }
        next = Some(j + 1);
        // Counts fit i64: a sketch's total is a u64 count of readings, far
        // below 2^63 in practice; saturate rather than wrap if not.
        let c = i64::try_from(count).unwrap_or(i64::MAX);
        deltas.push(c.saturating_sub(prev_count));
        prev_count = c;
    }
    (spans, deltas)
}

fn label(name: &str, value: &str) -> prompb::Label {
    prompb::Label {
        name: name.to_string(),
        value: value.to_string(),
    }
}

/// A metric name as Prometheus allows it (`.` → `_`).
pub(crate) fn metric_name(metric: &str) -> String {
    metric.replace('.', "_")
}

/// A tag key as a Prometheus label name (`__` is reserved there).
fn label_name(key: &str) -> String {
    if key.starts_with("__") {
        format!("tag{key}")
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::StoredWindow;
    use std::collections::BTreeMap;
    use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

    fn row(values: &[i64]) -> Changed {
        let mut s = Summary::new(Quantum::new(0).unwrap());
        for (i, v) in values.iter().enumerate() {
            s.insert(60_000 + i as i64, *v).unwrap();
        }
        let tags = BTreeMap::from([("__x".to_string(), "y".to_string())]);
        Changed {
            change: 1,
            series: SeriesKey::new("room.temp", "d1", tags).unwrap(),
            stored: StoredWindow {
                window: Window::new(60_000, Width::new(60_000).unwrap()).unwrap(),
                summary: s,
                revision: 0,
            },
        }
    }

    fn decode(body: &[u8]) -> prompb::WriteRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        prompb::WriteRequest::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn spans_follow_runs_of_buckets_shifted_by_one() {
        // At scale 6 with q = 1: 1 is the top of OTel bucket -1 (Prometheus
        // 0), 2 the top of bucket 63 (Prometheus 64); 3 twice.
        let r = row(&[1, 2, 3, 3, 0, -2]);
        let req = decode(&encode(&[r]).unwrap());
        let names: Vec<String> = req
            .timeseries
            .iter()
            .map(|t| {
                t.labels
                    .iter()
                    .find(|l| l.name == "__name__")
                    .unwrap()
                    .value
                    .clone()
            })
            .collect();
        assert_eq!(
            names,
            [
                "room_temp_count",
                "room_temp_sum",
                "room_temp_min",
                "room_temp_max",
                "room_temp"
            ]
        );
        let hist = &req.timeseries[4];
        let label_names: Vec<&str> = hist.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(label_names, ["__name__", "device", "tag__x"]);
        let h = &hist.histograms[0];
        assert_eq!(h.timestamp, 120_000);
        assert_eq!(h.schema, 6);
        assert_eq!(h.sum, 7.0);
        assert_eq!(h.count, Some(histogram::Count::CountInt(6)));
        assert_eq!(h.zero_count, Some(histogram::ZeroCount::ZeroCountInt(1)));
        // log2(3)·64 = 101.4 → OTel index 101 → Prometheus 102.
        let span = |offset, length| prompb::BucketSpan { offset, length };
        assert_eq!(h.positive_spans, [span(0, 1), span(63, 1), span(37, 1)]);
        assert_eq!(h.positive_deltas, [1, 0, 1]);
        assert_eq!(h.negative_spans, [span(64, 1)]);
        assert_eq!(h.negative_deltas, [1]);
        assert_eq!(req.timeseries[2].samples[0].value, -2.0);
    }
}
