//! One sink's HTTP endpoint: builds the request of a batch (influx or
//! webhook), sends it, and classifies the answer:
//!
//! - **2xx** — delivered.
//! - **retry** — timeouts, connection errors, `5xx`, `429` and `408`, and
//!   `401`/`403`/`404`, which mean a wrong token, URL, org or bucket (a
//!   misconfigured endpoint is an outage, not bad data: skipping would drop
//!   every point until someone noticed). A `Retry-After` in seconds is
//!   honoured, kept between the shortest and the longest backoff.
//! - **rejected** — any other `4xx`: the batch itself is refused (bad line
//!   protocol, payload too large); the runner isolates the refused point.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
};
use reqwest::{Client, StatusCode, Url};

use super::config::{InfluxApi, SinkConfig, SinkKind};
use super::{influx, otlp, prometheus, webhook, SinkError};
use crate::query::stats::Stat;
use crate::store::Changed;

/// The most bytes of a refusal's body kept for the log.
const MAX_LOGGED_BODY: usize = 1024;

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Worth retrying: why, and the server's `Retry-After` if it sent one.
    Retry {
        /// What went wrong.
        reason: String,
        /// The server's `Retry-After`.
        after: Option<Duration>,
    },
    /// Refused for good: the status and the start of the body.
    Rejected {
        /// The status.
        status: StatusCode,
        /// The start of the response body.
        body: String,
    },
}

/// Where and how a sink sends its batches.
#[derive(Debug)]
pub(crate) struct Endpoint {
    client: Client,
    url: Url,
    headers: HeaderMap,
    kind: SinkKind,
    name: String,
}

fn bad(key: &str, reason: impl Into<String>) -> SinkError {
    SinkError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Endpoint {
    /// The endpoint of a validated sink config.
    pub(crate) fn new(cfg: &SinkConfig) -> Result<Endpoint, SinkError> {
        let mut url = Url::parse(&cfg.url).map_err(|e| bad("url", e.to_string()))?;
        let mut headers = HeaderMap::new();
        let auth = match cfg.kind {
            SinkKind::Influx => {
                let base = url.path().trim_end_matches('/').to_string();
                let bucket = cfg.bucket.as_deref().unwrap_or_default();
                if cfg.api == Some(InfluxApi::V1) {
                    url.set_path(&format!("{base}/write"));
                    url.query_pairs_mut().append_pair("db", bucket);
                } else {
                    url.set_path(&format!("{base}/api/v2/write"));
                    url.query_pairs_mut()
                        .append_pair("org", cfg.org.as_deref().unwrap_or_default())
                        .append_pair("bucket", bucket);
                }
                url.query_pairs_mut().append_pair("precision", "ms");
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                "Token"
            }
            SinkKind::Webhook | SinkKind::Prometheus | SinkKind::Otlp => {
                if cfg.kind == SinkKind::Otlp {
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    );
                } else if cfg.kind == SinkKind::Prometheus {
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    );
                    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
                    headers.insert(
                        HeaderName::from_static("x-prometheus-remote-write-version"),
                        HeaderValue::from_static("0.1.0"),
                    );
                } else {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                for (k, v) in &cfg.headers {
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| bad(&format!("headers.{k}"), e.to_string()))?;
                    let value = HeaderValue::from_str(v)
                        .map_err(|e| bad(&format!("headers.{k}"), e.to_string()))?;
                    headers.insert(name, value);
                }
                "Bearer"
            }
        };
        let token = cfg.resolved_token().map_err(|e| bad("token_env", e))?;
        if let Some(token) = &token {
            let mut v = HeaderValue::from_str(&format!("{auth} {token}"))
                .map_err(|e| bad("token", e.to_string()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        // reqwest is built without a bundled crypto provider; use ring (as
        // the agent does) unless the process already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms))
            .user_agent(concat!("tributary-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SinkError::Client)?;
        Ok(Endpoint {
            client,
            url,
            headers,
            kind: cfg.kind,
            name: cfg.name.clone(),
        })
    }

    /// The URL batches are POSTed to.
    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// The request body of `rows`, or why it cannot be encoded (a
    /// compressor's size limit, far above `MAX_BATCH_SIZE` points).
    pub(crate) fn encode(&self, rows: &[Changed], stats: &[Stat]) -> Result<Bytes, String> {
        Ok(match self.kind {
            SinkKind::Influx => influx::encode(rows, stats).into(),
            SinkKind::Webhook => webhook::encode(&self.name, rows, stats).into(),
            SinkKind::Prometheus => prometheus::encode(rows)
                .map_err(|e| format!("snappy: {e}"))?
                .into(),
            SinkKind::Otlp => otlp::encode(&self.name, rows).into(),
        })
    }

    /// Sends one body once.
    pub(crate) async fn send(&self, body: Bytes) -> Attempt {
        let res = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await;
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: error_chain(&e),
                    after: None,
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match resp.text().await {
            Ok(t) => truncate(t),
            Err(e) => format!("(body unreadable: {e})"),
        };
        if is_permanent(status) {
            Attempt::Rejected { status, body }
        } else {
            let hint = match status.as_u16() {
                401 | 403 | 404 => " (check the sink's url, token, org and bucket)",
                _ => "",
            };
            Attempt::Retry {
                reason: format!("HTTP {status}{hint}: {body}"),
                after,
            }
        }
    }
}

/// Whether a non-2xx status refuses the batch for good.
pub(crate) fn is_permanent(status: StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429)
}

/// The delay before retry number `attempt` (0-based): `min · 2^attempt`
/// capped at `max`, then jittered down by up to half, so many sinks (or
/// collectors) that failed together do not retry together.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let full = min
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    full.mul_f64(1.0 - fastrand::f64() / 2.0)
}

/// The error with its causes, which is where reqwest says what went wrong.
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_LOGGED_BODY {
        let mut end = MAX_LOGGED_BODY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_data_errors_are_permanent() {
        for s in [400, 413, 422] {
            assert!(is_permanent(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [401, 403, 404, 408, 429, 500, 502, 503, 504, 302] {
            assert!(!is_permanent(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_of_at_most_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..100 {
            let d0 = backoff(0, min, max);
            assert!(d0 >= min / 2 && d0 <= min, "{d0:?}");
            let d3 = backoff(3, min, max);
            assert!(d3 >= min * 4 && d3 <= min * 8, "{d3:?}");
            let big = backoff(u32::MAX, min, max);
            assert!(big >= max / 2 && big <= max, "{big:?}");
        }
    }

    #[test]
    fn influx_url_carries_org_bucket_and_precision() {
        let mut cfg = SinkConfig::new("db", SinkKind::Influx, "http://127.0.0.1:8086/prefix/");
        cfg.org = Some("my org".into());
        cfg.bucket = Some("b".into());
        cfg.token = Some("t0k".into());
        let e = Endpoint::new(&cfg).unwrap();
        assert_eq!(
            e.url().as_str(),
            "http://127.0.0.1:8086/prefix/api/v2/write?org=my+org&bucket=b&precision=ms"
        );
        assert_eq!(e.headers[AUTHORIZATION], "Token t0k");
        cfg.api = Some(InfluxApi::V1);
        cfg.org = None;
        let e = Endpoint::new(&cfg).unwrap();
        assert_eq!(
            e.url().as_str(),
            "http://127.0.0.1:8086/prefix/write?db=b&precision=ms"
        );
    }

    #[test]
    fn long_bodies_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(1000));
        assert!(s.len() <= MAX_LOGGED_BODY + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
