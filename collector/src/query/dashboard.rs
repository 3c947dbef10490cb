//! The dashboard: a single page served by the collector at `/` and
//! `/dashboard` that charts query results (mean with a min–max band and a
//! chosen quantile, final and provisional points marked) and refreshes them
//! live. The page is plain HTML, CSS and JavaScript from `collector/assets/`,
//! compiled into the binary, so it needs no CDN and no network beyond the
//! collector itself; it reads the data through the JSON API of [`super::api`]
//! (with the bearer token the user enters, when one is configured).
//!
//! Routes:
//! - `GET /`, `GET /dashboard` — the page;
//! - `GET /dashboard/app.js`, `GET /dashboard/style.css` — its script and
//!   style;
//! - `GET /api/v1/meta` — what the page needs to build its queries:
//!   `{"widths_ms": [...], "token_required": bool}`. The widths are the
//!   configured roll-ups plus every common width (1 s … 1 d) that holds
//!   stored results. It carries no measurement data, so it is not behind the
//!   token (the page must learn that a token is needed before it has one).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::api::ApiState;
use crate::store::Query as Store;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");

pub use super::api::COMMON_WIDTHS_MS;

/// What the dashboard is told about the collector.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Widths (ms) always offered, found in the store or not (the configured
    /// roll-ups, which every stored partial is merged into).
    pub widths_ms: Vec<i64>,
}

#[derive(Clone)]
struct Dash<S> {
    api: ApiState<S>,
    opts: DashboardOptions,
}

/// The dashboard's routes, to be merged into the API router. `api` is the
/// state the query API was built with (the same store and token).
pub fn router<S: Store + Clone + 'static>(api: ApiState<S>, opts: DashboardOptions) -> Router {
    Router::new()
        .route("/", get(|| async { page() }))
        .route("/dashboard", get(|| async { page() }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/v1/meta", get(meta::<S>))
        .with_state(Dash { api, opts })
}

/// A static text asset; revalidated on each load so an upgraded collector
/// serves its new page at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page, with a policy that forbids loading anything from elsewhere.
fn page() -> Response {
    let mut resp = asset("text/html; charset=utf-8", INDEX_HTML);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
        ),
    );
    resp
}

async fn meta<S: Store + Clone + 'static>(State(d): State<Dash<S>>) -> Response {
    let widths = match super::api::offered_widths(&d.api.store, &d.opts.widths_ms).await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "meta: reading widths failed");
            let body = Json(json!({ "error": format!("store: {e}") }));
            return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        }
    };
    Json(json!({
        "widths_ms": widths,
        "token_required": d.api.token.is_some(),
    }))
    .into_response()
}
