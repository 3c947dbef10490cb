//! The local HTTP server: Prometheus `/metrics` and `/health`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// The router (also used by tests without a socket).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health))
        .with_state(metrics)
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}

async fn health(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let store_ok = m.store_ok.load(Relaxed) == 1;
    let body = format!(
        "{{\"status\":\"{}\",\"store_ok\":{},\"uplink_up\":{},\"outbox_bytes\":{}}}",
        if store_ok { "ok" } else { "failing" },
        store_ok,
        m.uplink_up.load(Relaxed) == 1,
        m.outbox_bytes.load(Relaxed)
    );
    let code = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}
