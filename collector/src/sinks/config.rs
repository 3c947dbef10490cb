//! The configuration of one sink (a `[[sinks]]` table of
//! `config/collector.toml`) and its validation, each problem naming its key.

use std::collections::BTreeMap;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use tributary_core::Width;

use crate::query::stats::Stat;

/// Where a sink pushes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// InfluxDB v2 write API (line protocol).
    Influx,
    /// A generic JSON webhook.
    Webhook,
    /// Prometheus remote write (native histograms).
    Prometheus,
    /// OTLP/HTTP metrics (protobuf, exponential histograms).
    Otlp,
}

/// Which InfluxDB write API an `influx` sink uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `POST {url}/api/v2/write?org=…&bucket=…&precision=ms` (InfluxDB 2.x,
    /// 1.8+, VictoriaMetrics).
    #[default]
    V2,
    /// `POST {url}/write?db=<bucket>&precision=ms` (InfluxDB 1.x).
    V1,
}

/// One sink (its `Debug` hides the token).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Its name: unique, `[A-Za-z0-9_.-]`; its durable cursor is
    /// `sink:<name>`, so renaming a sink starts it from the beginning.
    pub name: String,
    /// `influx`, `webhook`, `prometheus` or `otlp`.
    pub kind: SinkKind,
    /// `http://` or `https://` URL. Influx: the server's base URL (the sink
    /// appends `/api/v2/write`); webhook: the URL POSTed to; prometheus: the
    /// remote-write URL (e.g. `http://127.0.0.1:9090/api/v1/write`); otlp:
    /// the metrics URL (e.g. `http://127.0.0.1:4318/v1/metrics`).
    pub url: String,
    /// The stored width (ms) it pushes: the agents' window or a roll-up
    /// (default 60,000).
    #[serde(default = "default_width_ms")]
    pub width_ms: i64,
    /// Points per request at most (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Timeout of one request, connect to response body (ms, default 10,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First retry delay (ms, default 500); doubled per failed attempt,
    /// with jitter.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest retry delay (ms, default 60,000).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// How often it looks for new final windows (ms, default 1,000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How long the instance pushing it holds its lease without renewing
    /// (ms, default 30,000): with several instances on one database, how
    /// soon another takes over from one that died. At least twice
    /// `timeout_ms` and `poll_ms`.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Quantiles pushed as `pNN` fields (default `[0.5, 0.9, 0.99]`).
    #[serde(default = "default_quantiles")]
    pub quantiles: Vec<f64>,
    /// Influx: the write API, `"v2"` (default) or `"v1"` (InfluxDB 1.x).
    #[serde(default)]
    pub api: Option<InfluxApi>,
    /// Influx: the organisation (required for `influx` with api v2).
    #[serde(default)]
    pub org: Option<String>,
    /// Influx: the bucket (required for `influx`); with api v1, the
    /// database.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Sent as `Authorization: Token <token>` (influx) or
    /// `Authorization: Bearer <token>` (the others); default none.
    #[serde(default)]
    pub token: Option<String>,
    /// The name of an environment variable holding the token instead, read
    /// at start (keeps secrets out of files); default none.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Webhook, prometheus and otlp: extra request headers (default none), e.g. a
    /// tenant header of a multi-tenant receiver.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_width_ms() -> i64 {
    60_000
}
fn default_batch_size() -> usize {
    500
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_min_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_lease_ms() -> u64 {
    30_000
}
fn default_quantiles() -> Vec<f64> {
    vec![0.5, 0.9, 0.99]
}

/// The most points a sink may send in one request.
pub const MAX_BATCH_SIZE: usize = 100_000;

impl SinkConfig {
    /// A sink with every optional key at its default.
    pub fn new(name: impl Into<String>, kind: SinkKind, url: impl Into<String>) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind,
            url: url.into(),
            width_ms: default_width_ms(),
            batch_size: default_batch_size(),
            timeout_ms: default_timeout_ms(),
            backoff_min_ms: default_backoff_min_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            poll_ms: default_poll_ms(),
            lease_ms: default_lease_ms(),
            quantiles: default_quantiles(),
            api: None,
            org: None,
            bucket: None,
            token: None,
            token_env: None,
            headers: BTreeMap::new(),
        }
    }

    /// The token to send: the value of `token_env` when set, else `token`.
    pub fn resolved_token(&self) -> Result<Option<String>, String> {
        match &self.token_env {
            Some(var) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("the environment variable {var} is not set (or not UTF-8)")),
            None => Ok(self.token.clone()),
        }
    }

    /// Its name in the store: of its durable cursor, its parked rows and
    /// its lease (`sink:<name>`).
    pub fn store_name(&self) -> String {
        format!("sink:{}", self.name)
    }

    /// The width it pushes (valid once [`SinkConfig::validate`] passed).
    pub fn width(&self) -> Option<Width> {
        Width::new(self.width_ms).ok()
    }

    /// The statistics of a pushed point: the named ones, then the quantiles.
    pub fn stats(&self) -> Vec<Stat> {
        let mut stats = Stat::named();
        stats.extend(self.quantiles.iter().filter_map(|q| Stat::quantile(*q)));
        stats
    }

    /// Checks every value; appends `(key, problem)` to `errs`, keys prefixed
    /// with `prefix` (e.g. `sinks[0]`). Long, as a list of independent checks
    /// (one per key) reads best in the order of the keys.
    pub fn validate(&self, prefix: &str, errs: &mut Vec<(String, String)>) {
        let mut err = |key: &str, why: String| errs.push((format!("{prefix}.{key}"), why));
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if self.name.is_empty() || !self.name.chars().all(name_ok) {
            err(
                "name",
                format!("{:?} must be non-empty and of A-Z a-z 0-9 _ . -", self.name),
            );
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            Ok(_) => err(
                "url",
                format!("{:?} must be an http:// or https:// URL", self.url),
            ),
            Err(e) => err("url", format!("{:?} is not a URL: {e}", self.url)),
        }
        if let Err(e) = Width::new(self.width_ms) {
            err("width_ms", e.to_string());
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            err("batch_size", format!("must be in 1..={MAX_BATCH_SIZE}"));
        }
        if self.timeout_ms == 0 {
            err("timeout_ms", "must be > 0".into());
        }
        if self.poll_ms == 0 {
            err("poll_ms", "must be > 0".into());
        }
        let floor = self.timeout_ms.max(self.poll_ms).saturating_mul(2);
        if self.lease_ms < floor {
            err(
                "lease_ms",
                format!(
                    "{} is too short: at least twice timeout_ms and poll_ms ({floor}), so a request or a poll never outlasts the lease",
                    self.lease_ms
                ),
            );
        }
        if self.backoff_min_ms == 0 {
            err("backoff_min_ms", "must be > 0".into());
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            err("backoff_max_ms", "must be ≥ backoff_min_ms".into());
        }
        for (i, q) in self.quantiles.iter().enumerate() {
            if !(0.0..=1.0).contains(q) {
                err(&format!("quantiles[{i}]"), format!("{q} is not in [0, 1]"));
            }
        }
        let token_key = if self.token_env.is_some() {
            "token_env"
        } else {
            "token"
        };
        if self.token.is_some() && self.token_env.is_some() {
            err(
                "token_env",
                "set either token or token_env, not both".into(),
            );
        } else {
            match self.resolved_token() {
                Err(e) => err(token_key, e),
                Ok(Some(t)) if t.is_empty() || HeaderValue::from_str(&t).is_err() => {
                    err(
                        token_key,
                        "the token must be non-empty visible ASCII".into(),
                    );
                }
                Ok(_) => {}
            }
        }
        match self.kind {
            SinkKind::Influx => {
                let v1 = self.api == Some(InfluxApi::V1);
                for (key, v) in [("org", &self.org), ("bucket", &self.bucket)] {
                    if key == "org" && v1 {
                        if v.is_some() {
                            err(key, "is not used by api = \"v1\"".into());
                        }
                    } else if v.as_deref().is_none_or(str::is_empty) {
                        err(key, "is required for kind = \"influx\"".into());
                    }
                }
                if !self.headers.is_empty() {
                    err("headers", "is not for kind = \"influx\"".into());
                }
            }
            SinkKind::Webhook | SinkKind::Prometheus | SinkKind::Otlp => {
                for (key, v) in [("org", &self.org), ("bucket", &self.bucket)] {
                    if v.is_some() {
                        err(key, "is only for kind = \"influx\"".into());
                    }
                }
                if self.api.is_some() {
                    err("api", "is only for kind = \"influx\"".into());
                }
                for (k, v) in &self.headers {
                    if HeaderName::from_bytes(k.as_bytes()).is_err() {
                        err(&format!("headers.{k}"), "is not a valid header name".into());
                    } else if HeaderValue::from_str(v).is_err() {
                        err(
                            &format!("headers.{k}"),
                            "is not a valid header value".into(),
                        );
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("width_ms", &self.width_ms)
            .field("batch_size", &self.batch_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("backoff_min_ms", &self.backoff_min_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("poll_ms", &self.poll_ms)
            .field("lease_ms", &self.lease_ms)
            .field("quantiles", &self.quantiles)
            .field("api", &self.api)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .field("token_env", &self.token_env)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Validates a list of sinks: each one, and that names are unique.
pub fn validate_all(sinks: &[SinkConfig], errs: &mut Vec<(String, String)>) {
    for (i, s) in sinks.iter().enumerate() {
        s.validate(&format!("sinks[{i}]"), errs);
        if sinks[..i].iter().any(|o| o.name == s.name) {
            errs.push((
                format!("sinks[{i}].name"),
                format!("{:?} is already the name of another sink", s.name),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn problems(s: &SinkConfig) -> Vec<String> {
        let mut errs = Vec::new();
        validate_all(std::slice::from_ref(s), &mut errs);
        errs.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn a_webhook_with_defaults_is_valid() {
        let s = SinkConfig::new("hook", SinkKind::Webhook, "http://127.0.0.1:9/x");
        assert!(problems(&s).is_empty());
        let names: Vec<String> = s.stats().iter().map(|s| s.name().to_string()).collect();
        assert_eq!(names[8..], ["p50", "p90", "p99"]);
    }

    #[test]
    fn influx_needs_org_and_bucket() {
        let s = SinkConfig::new("db", SinkKind::Influx, "http://127.0.0.1:8086");
        assert_eq!(problems(&s), ["sinks[0].org", "sinks[0].bucket"]);
    }

    #[test]
    fn influx_api_v1_needs_the_database_and_no_org() {
        let mut s = SinkConfig::new("db", SinkKind::Influx, "http://127.0.0.1:8086");
        s.api = Some(InfluxApi::V1);
        s.bucket = Some("sensors".into());
        assert!(problems(&s).is_empty());
        s.org = Some("o".into());
        assert_eq!(problems(&s), ["sinks[0].org"]);
        let mut hook = SinkConfig::new("h", SinkKind::Webhook, "http://h/");
        hook.api = Some(InfluxApi::V2);
        assert_eq!(problems(&hook), ["sinks[0].api"]);
    }

    #[test]
    fn every_bad_value_is_named() {
        let mut s = SinkConfig::new("a b", SinkKind::Webhook, "ftp://x");
        s.width_ms = 0;
        s.batch_size = 0;
        s.lease_ms = 2 * s.timeout_ms - 1;
        s.backoff_max_ms = 1;
        s.quantiles = vec![0.5, 2.0];
        s.org = Some("o".into());
        s.headers.insert("bad header".into(), "v".into());
        assert_eq!(
            problems(&s),
            [
                "sinks[0].name",
                "sinks[0].url",
                "sinks[0].width_ms",
                "sinks[0].batch_size",
                "sinks[0].lease_ms",
                "sinks[0].backoff_max_ms",
                "sinks[0].quantiles[1]",
                "sinks[0].org",
                "sinks[0].headers.bad header",
            ]
        );
    }

    #[test]
    fn the_token_can_come_from_the_environment_and_is_never_printed() {
        let mut s = SinkConfig::new("x", SinkKind::Webhook, "http://h/");
        s.token_env = Some("TRIBUTARY_TEST_SINK_TOKEN_UNSET".into());
        assert_eq!(problems(&s), ["sinks[0].token_env"]);
        // A variable no other test touches.
        std::env::set_var("TRIBUTARY_TEST_SINK_TOKEN_SET", "from-env");
        s.token_env = Some("TRIBUTARY_TEST_SINK_TOKEN_SET".into());
        assert!(problems(&s).is_empty());
        assert_eq!(s.resolved_token().unwrap().as_deref(), Some("from-env"));
        s.token = Some("s3cret".into());
        assert_eq!(problems(&s), ["sinks[0].token_env"], "not both");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn names_must_be_unique() {
        let s = SinkConfig::new("x", SinkKind::Webhook, "http://h/");
        let mut errs = Vec::new();
        validate_all(&[s.clone(), s], &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "sinks[1].name");
    }
}
