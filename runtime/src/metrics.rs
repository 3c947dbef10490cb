//! Metrics: one registry per daemon, from the Prometheus project's own
//! Rust client (`prometheus-client`), rendered as OpenMetrics text on
//! `/metrics`. Counters are registered without their `_total` suffix, which
//! the encoder adds; gauges and histograms are named as they are scraped.
//!
//! The crate is re-exported so every Tributary crate uses the same version.

pub use prometheus_client;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's metrics as OpenMetrics text (ends with `# EOF`).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in
    // a metric's own encoding, and a partial page is still worth serving.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn counters_get_their_suffix_and_labels_render() {
        let mut r = Registry::default();
        let c: Family<Vec<(String, String)>, Counter> = Family::default();
        r.register("tributary_test_refused", "Refused, by reason.", c.clone());
        let g: Gauge = Gauge::default();
        r.register("tributary_test_up", "1 while up.", g.clone());
        c.get_or_create(&vec![("reason".into(), "oversized".into())])
            .inc_by(3);
        g.set(1);
        let text = render(&r);
        assert!(
            text.contains("tributary_test_refused_total{reason=\"oversized\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("tributary_test_up 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
