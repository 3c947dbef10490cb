//! The local HTTP server: Prometheus `/metrics` and the health endpoints,
//! and its config section `[http]`.
//!
//! - `/health/live` — 200 while the process serves (for a supervisor's
//!   liveness probe: restart only what stopped answering);
//! - `/health/ready` — 200 when input is being made durable and delivered,
//!   else 503 with every reason in words ([`crate::health`]): the store
//!   fails (a full disk: input is held unacknowledged), the engine made no
//!   progress, the uplink is down or nothing is confirmed;
//! - `/health` — as before: 200 unless the store fails (503), with
//!   `store_ok`, `uplink_up`, `outbox_bytes`, and now `reason`.
//!
//! Each answers JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tributary_runtime::config::Problems;
use tributary_runtime::metrics::CONTENT_TYPE;

use crate::health::Observed;
use crate::metrics::Metrics;

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics` and `/health`; empty disables the server.
    /// Default `127.0.0.1:9187`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9187".into(),
        }
    }
}

impl HttpConfig {
    /// Records every invalid value in `p`.
    pub fn check(&self, p: &mut Problems) {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.bad(
                "http.listen",
                format!("{:?} is not an address like 127.0.0.1:9187", self.listen),
            );
        }
    }
}

/// The router (also used by tests without a socket).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(metrics)
}

/// A JSON answer: 200 if `ok`, else 503.
fn answer(ok: bool, body: serde_json::Value) -> impl IntoResponse {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render())
}

async fn health(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let store_ok = m.store_ok.get() == 1;
    answer(
        store_ok,
        json!({
            "status": if store_ok { "ok" } else { "failing" },
            "store_ok": store_ok,
            "uplink_up": m.uplink_up.get() == 1,
            "outbox_bytes": m.outbox_bytes.get(),
            "reason": m.health.store_error(),
        }),
    )
}

async fn live() -> impl IntoResponse {
    answer(true, json!({ "status": "live" }))
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let reasons = m.health.readiness(Observed {
        uplink_up: m.uplink_up.get() == 1,
        now_ms: m.health.now_ms(),
    });
    answer(
        reasons.is_empty(),
        json!({
            "status": if reasons.is_empty() { "ready" } else { "not_ready" },
            "reasons": reasons,
            "store_ok": m.store_ok.get() == 1,
            "uplink_up": m.uplink_up.get() == 1,
            "outbox_bytes": m.outbox_bytes.get(),
            "inputs_unacknowledged": m.inputs_unacknowledged.get(),
            "readings_dropped": m.readings_dropped.get(),
        }),
    )
}
