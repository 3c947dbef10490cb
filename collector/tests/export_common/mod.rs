//! Helpers shared by the export tests against real metrics backends
//! (Prometheus, OTLP, InfluxDB, VictoriaMetrics): one-minute partials of
//! raw readings, and a sink that polls fast and is final at once.
#![allow(dead_code, clippy::unwrap_used)]

use tokio::sync::watch;
use tributary_collector::finality::Finality;
use tributary_collector::sinks::{self, SinkConfig, Sinks};
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Partial;
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

pub(crate) const MIN: i64 = 60_000;

/// Lateness 0, no idle timeout: a window is final once the watermark
/// reaches its end.
pub(crate) const FINALITY: Finality = Finality {
    lateness_ms: 0,
    idle_timeout_ms: i64::MAX,
};

/// The partial of `series`' minute from `start` holding `values` (ticks of
/// 10⁻³), one a millisecond.
pub(crate) fn partial(series: SeriesKey, start: i64, values: &[i64]) -> Partial {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    for (i, x) in values.iter().enumerate() {
        s.insert(start + i as i64, *x).unwrap();
    }
    Partial {
        series,
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    }
}

/// Makes `cfg` poll every 20 ms and retry within 10–200 ms.
pub(crate) fn quick(cfg: &mut SinkConfig) {
    cfg.poll_ms = 20;
    cfg.backoff_min_ms = 10;
    cfg.backoff_max_ms = 200;
}

/// Starts the sink `cfg` over `store` with [`FINALITY`]; stopped when the
/// sender sends `true`.
pub(crate) fn start(cfg: &SinkConfig, store: &SqliteStore) -> (Sinks, watch::Sender<bool>) {
    let (stop, rx) = watch::channel(false);
    let sinks = sinks::start(
        std::slice::from_ref(cfg),
        "test-instance",
        store.clone(),
        FINALITY,
        rx,
    )
    .unwrap();
    (sinks, stop)
}
