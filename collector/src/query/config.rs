//! The `[http]` section: where the query API, the dashboard, `/metrics` and
//! the health endpoints listen, the API's token, how much one query may do,
//! and how long ingest may lag before `/health/ready` says so.

use serde::Deserialize;
use tributary_runtime::config::Problems;

/// The default of [`HttpConfig::max_points`].
pub const DEFAULT_MAX_POINTS: u64 = 2_000_000;

/// The `[http]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address (default `127.0.0.1:8080`).
    pub listen: String,
    /// Bearer token required by `/api/*` when set (default none).
    pub token: Option<String>,
    /// The most points one query may ask for: selected series × steps in
    /// `[from, to)` (default 2,000,000). A query over it is answered `400`
    /// naming the parameters and this limit.
    pub max_points: u64,
    /// `/health/ready` answers 503 when the oldest message ingest received
    /// has waited longer than this for its commit (ms; default 60,000).
    pub ready_max_lag_ms: i64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            token: None,
            max_points: DEFAULT_MAX_POINTS,
            ready_max_lag_ms: 60_000,
        }
    }
}

impl HttpConfig {
    /// Checks every value of the section.
    pub fn check(&self, p: &mut Problems) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.bad(
                "http.listen",
                format!(
                    "`{}` is not a socket address like 127.0.0.1:8080",
                    self.listen
                ),
            );
        }
        if self.max_points == 0 {
            p.bad("http.max_points", "must be > 0");
        }
        if self.ready_max_lag_ms <= 0 {
            p.bad("http.ready_max_lag_ms", "must be > 0");
        }
    }
}
