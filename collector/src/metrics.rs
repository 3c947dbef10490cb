//! The collector's metrics: one `prometheus-client` registry holding
//! ingest's, the sinks' and the store's metrics, rendered on `/metrics`
//! with [`tributary_runtime::metrics::render`].

use tributary_runtime::metrics::prometheus_client::registry::Registry;

/// A metric's one label, e.g. `result="new"` or `sink="influx"`.
pub type Label = [(&'static str, String); 1];

/// The label `key="value"`.
pub fn label(key: &'static str, value: impl Into<String>) -> Label {
    [(key, value.into())]
}

/// The collector's registry: ingest's and the sinks' metrics (the names
/// users see, `tributary_collector_*` and `tributary_sink_*`).
pub fn registry(
    ingest: &crate::ingest::IngestCounters,
    sinks: &crate::sinks::SinkMetrics,
) -> Registry {
    let mut r = Registry::default();
    ingest.register(&mut r);
    sinks.register(&mut r);
    r
}
