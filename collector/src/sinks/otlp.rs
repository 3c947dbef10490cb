//! OTLP/HTTP metrics export: an `ExportMetricsServiceRequest` (protobuf,
//! messages of the `opentelemetry-proto` crate) `POST`ed as
//! `application/x-protobuf` to the sink's URL (a collector's
//! `http://host:4318/v1/metrics`).
//!
//! One resource (`service.name` = `tributary-collector`, `tributary.sink` =
//! the sink's name) and one scope (`tributary`); per metric name one
//! exponential histogram (DELTA temporality) with a data point per (series,
//! window):
//!
//! - attributes: `device` and the series' tags;
//! - `start_time_unix_nano` / `time_unix_nano`: the window's start and end;
//! - `count`, `sum`, `min`, `max`; `scale`, `zero_count` (readings exactly
//!   0, `zero_threshold` 0) and the positive and negative buckets exactly as
//!   the sketch holds them: its indexing *is* OpenTelemetry's (bucket *i*
//!   holds (2^(i/2^s), 2^((i+1)/2^s)]), so offset and counts are copied, not
//!   re-binned.
//!
//! A revision of a window is sent again as a data point with the same
//! attributes and times and the revised (merged) values: a backend that keys
//! points by series and time replaces the earlier one. A repeated push after
//! a crash is identical.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets as OtlpBuckets, metric, AggregationTemporality,
    ExponentialHistogram, ExponentialHistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tributary_core::sketch::{Buckets, Store};

use crate::store::Changed;

/// The protobuf body of `rows` pushed by sink `sink`.
pub(crate) fn encode(sink: &str, rows: &[Changed]) -> Vec<u8> {
    let mut by_metric: BTreeMap<&str, Vec<ExponentialHistogramDataPoint>> = BTreeMap::new();
    for row in rows {
        by_metric
            .entry(row.series.metric())
            .or_default()
            .push(point(row));
    }
    let metrics = by_metric
        .into_iter()
        .map(|(name, data_points)| Metric {
            name: name.to_string(),
            data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "tributary-collector"),
                    kv("tributary.sink", sink),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tributary".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

/// The data point of one row.
fn point(row: &Changed) -> ExponentialHistogramDataPoint {
    let key = &row.series;
    let s = &row.stored.summary;
    let sketch = s.sketch();
    let w = row.stored.window;
    ExponentialHistogramDataPoint {
        attributes: std::iter::once(kv("device", key.device()))
            .chain(key.tags().iter().map(|(k, v)| kv(k, v)))
            .collect(),
        start_time_unix_nano: nanos(w.start()),
        time_unix_nano: nanos(w.end()),
        count: s.count(),
        sum: s.sum(),
        scale: i32::from(sketch.scale()),
        zero_count: sketch.zero_count(),
        positive: Some(buckets(sketch.positive())),
        negative: Some(buckets(sketch.negative())),
        min: s.min(),
        max: s.max(),
        ..Default::default()
    }
}

fn buckets<S: Store>(b: Buckets<'_, S>) -> OtlpBuckets {
    OtlpBuckets {
        offset: b.offset(),
        bucket_counts: b.counts().collect(),
    }
}

/// Milliseconds since the epoch as OTLP's nanoseconds (0 for a time before
/// 1970 or past 2554, which OTLP's `fixed64` cannot hold).
fn nanos(ms: i64) -> u64 {
    u64::try_from(ms)
        .ok()
        .and_then(|ms| ms.checked_mul(1_000_000))
        .unwrap_or(0)
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nanoseconds_are_checked() {
        assert_eq!(nanos(1_700_000_000_123), 1_700_000_000_123_000_000);
        assert_eq!(nanos(-1), 0);
        assert_eq!(nanos(i64::MAX), 0);
    }
}
