//! Liveness and readiness (issue #12): `/health/live`, `/health/ready`,
//! and `/health` as before.
//!
//! # Design
//! `/health` used to answer `ok` whenever the HTTP server ran, also while
//! ingest was wedged. Now:
//! - `/health` and `/health/live` — the process serves and its ingest task
//!   runs (it never ends before shutdown; a panic ends it): `200
//!   {"status":"ok"}`, else `503`. `/health` keeps its old answer, so what
//!   watched it (the systemd unit, scripts) sees no change.
//! - `/health/ready` — the collector does its job: `200` when every check
//!   passes, else `503`; the body names each check:
//!   - `store`: the store takes a write now ([`Ingest::probe`], at most one
//!     probe a second, bounded to [`PROBE_TIMEOUT`]);
//!   - `subscription`: the broker granted the partials subscription;
//!   - `ingest_lag`: the oldest message received and not yet committed
//!     waits for less than `[http] ready_max_lag_ms` (a store that keeps
//!     failing, or a commit that hangs, shows here).
//!
//! Each condition is also a metric: `tributary_collector_store_writable`,
//! `tributary_collector_mqtt_subscribed` and
//! `tributary_collector_ingest_oldest_pending_timestamp_ms`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::ingest::IngestCounters;
use crate::store::Ingest;

/// The longest a readiness probe of the store may take before the store
/// counts as not writable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A probe answer is reused for this long, so frequent readiness checks
/// cost at most one write a second.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// The last store probe: when, and why it failed (`None`: writable).
type LastProbe = Option<(Instant, Option<String>)>;

/// What the health endpoints look at.
#[derive(Debug, Clone)]
pub struct Health<S> {
    /// The store (its ingest role, for the write probe).
    pub store: S,
    /// Ingest's counters (subscription, oldest uncommitted message, store
    /// writable).
    pub counters: Arc<IngestCounters>,
    /// False once the ingest task has ended.
    pub ingest_running: Arc<AtomicBool>,
    /// The longest a received message may wait for its commit (ms).
    pub max_lag_ms: i64,
    /// The last probe: when, and its error if it failed.
    probe: Arc<Mutex<LastProbe>>,
}

impl<S: Ingest + Clone + 'static> Health<S> {
    /// Health over `store` and ingest's `counters`.
    pub fn new(
        store: S,
        counters: Arc<IngestCounters>,
        ingest_running: Arc<AtomicBool>,
        max_lag_ms: i64,
    ) -> Self {
        Health {
            store,
            counters,
            ingest_running,
            max_lag_ms,
            probe: Arc::default(),
        }
    }

    /// The store's answer to a write probe (reused for [`PROBE_REUSE`]):
    /// `None` when writable, else why not.
    async fn probe(&self) -> Option<String> {
        let mut last = self.probe.lock().await;
        if let Some((at, answer)) = &*last {
            if at.elapsed() < PROBE_REUSE {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, self.store.probe()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        self.counters
            .store_writable
            .set(i64::from(answer.is_none()));
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// The health routes, to be merged into the collector's router.
pub fn router<S: Ingest + Clone + 'static>(health: Health<S>) -> Router {
    Router::new()
        .route("/health", get(live::<S>))
        .route("/health/live", get(live::<S>))
        .route("/health/ready", get(ready::<S>))
        .with_state(health)
}

async fn live<S: Ingest + Clone + 'static>(State(h): State<Health<S>>) -> Response {
    if h.ingest_running.load(Ordering::Relaxed) {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        let body = json!({ "status": "unavailable", "error": "the ingest task has ended" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn ready<S: Ingest + Clone + 'static>(State(h): State<Health<S>>) -> Response {
    let store = h.probe().await;
    let subscribed = h.counters.subscribed.get() == 1;
    let oldest = h.counters.oldest_pending_ms.get();
    let lag = if oldest == 0 {
        0
    } else {
        tributary_runtime::now_ms().saturating_sub(oldest).max(0)
    };
    let lag_ok = lag <= h.max_lag_ms;
    let running = h.ingest_running.load(Ordering::Relaxed);
    let ok = store.is_none() && subscribed && lag_ok && running;
    let mut checks = serde_json::Map::new();
    let mut store_check = json!({ "ok": store.is_none() });
    if let Some(e) = store {
        store_check["error"] = Value::String(e);
    }
    checks.insert("store".into(), store_check);
    checks.insert("subscription".into(), json!({ "ok": subscribed }));
    checks.insert(
        "ingest_lag".into(),
        json!({ "ok": lag_ok, "lag_ms": lag, "max_lag_ms": h.max_lag_ms }),
    );
    checks.insert("ingest_running".into(), json!({ "ok": running }));
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "checks": checks,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
