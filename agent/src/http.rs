//! The local HTTP server: Prometheus `/metrics` and `/health`, and its
//! config section `[http]`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tributary_runtime::config::Problems;
use tributary_runtime::metrics::CONTENT_TYPE;

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
        .with_state(metrics)
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render())
}

async fn health(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let store_ok = m.store_ok.get() == 1;
    let body = format!(
        "{{\"status\":\"{}\",\"store_ok\":{},\"uplink_up\":{},\"outbox_bytes\":{}}}",
        if store_ok { "ok" } else { "failing" },
        store_ok,
        m.uplink_up.get() == 1,
        m.outbox_bytes.get()
    );
    let code = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}
