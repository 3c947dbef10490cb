//! The collector's configuration: TOML (every key documented in
//! `config/collector.toml`), unknown keys refused, and validation that
//! reports every problem at once, each naming its key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tributary_core::Width;

mod mqtt;

pub use mqtt::{MqttConfig, Secret, MQTT_PASSWORD_ENV};

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key has the wrong type or is unknown, or the TOML is invalid.
    #[error("config key `{key}`: {reason}")]
    Key {
        /// The dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// One or more values are invalid (all reported at once).
    #[error("invalid config:\n{}", .0.iter().map(|(k, r)| format!("  `{k}`: {r}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<(String, String)>),
}

/// The whole collector configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the SQLite database `collector.db` (default `./data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Roll-up widths in ms kept exact by merging (default 1 h and 1 d).
    #[serde(default = "default_rollups")]
    pub rollups_ms: Vec<i64>,
    /// The MQTT broker the agents publish to.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Limits on incoming batches.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// When windows become final.
    #[serde(default)]
    pub finality: FinalityConfig,
    /// Where results are stored: SQLite (default) or a shared PostgreSQL.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where final windows and their revisions are pushed (`[[sinks]]`,
    /// default none); see [`crate::sinks::SinkConfig`].
    #[serde(default)]
    pub sinks: Vec<crate::sinks::SinkConfig>,
}

/// When windows become final (see [`crate::finality`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinalityConfig {
    /// How far past a window's end every reporting agent's watermark must be
    /// (ms, default 5,000).
    pub lateness_ms: i64,
    /// After this long without a batch an agent no longer holds windows open
    /// (ms, default 300,000).
    pub idle_timeout_ms: i64,
}

impl Default for FinalityConfig {
    fn default() -> Self {
        let d = crate::finality::Finality::default();
        FinalityConfig {
            lateness_ms: d.lateness_ms,
            idle_timeout_ms: d.idle_timeout_ms,
        }
    }
}

impl FinalityConfig {
    /// The rule.
    pub fn rule(&self) -> crate::finality::Finality {
        crate::finality::Finality {
            lateness_ms: self.lateness_ms,
            idle_timeout_ms: self.idle_timeout_ms,
        }
    }
}

/// Which store backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded SQLite database `data_dir/collector.db` (one instance).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by any number of instances.
    Postgres,
}

/// TLS to PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreTls {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS required, the server certificate verified.
    Require,
}

/// The `[store]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `"sqlite"` (default) or `"postgres"`.
    pub kind: StoreKind,
    /// PostgreSQL connection URL (required for `postgres`), e.g.
    /// `postgres://tributary@db:5432/tributary`. The environment variable
    /// `TRIBUTARY_STORE_URL` overrides it (keeps passwords out of files).
    pub url: Option<String>,
    /// PostgreSQL connections per instance (default 4).
    pub pool_size: usize,
    /// `"disable"` (default) or `"require"`.
    pub tls: StoreTls,
    /// PEM file of the CA to trust with `tls = "require"` (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            url: None,
            pool_size: 4,
            tls: StoreTls::Disable,
            ca_file: None,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL options (`None` for SQLite).
    pub fn postgres(&self) -> Option<crate::store::postgres::PostgresOptions> {
        use crate::store::postgres::{PostgresOptions, Tls};
        (self.kind == StoreKind::Postgres).then(|| PostgresOptions {
            url: self.url.clone().unwrap_or_default(),
            pool_size: self.pool_size,
            tls: match self.tls {
                StoreTls::Disable => Tls::Disable,
                StoreTls::Require => Tls::Require {
                    ca_file: self.ca_file.clone(),
                },
            },
        })
    }

    fn check(&self, errs: &mut Vec<(String, String)>) {
        let url = self.url.as_deref().unwrap_or("");
        match self.kind {
            StoreKind::Postgres if url.is_empty() => errs.push((
                "store.url".into(),
                "required with kind = \"postgres\" (or set TRIBUTARY_STORE_URL)".into(),
            )),
            StoreKind::Postgres => {
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    errs.push(("store.url".into(), format!("not a PostgreSQL URL: {e}")));
                }
            }
            StoreKind::Sqlite if !url.is_empty() => errs.push((
                "store.url".into(),
                "only used with kind = \"postgres\"".into(),
            )),
            StoreKind::Sqlite => {}
        }
        if self.pool_size == 0 || self.pool_size > 1000 {
            errs.push(("store.pool_size".into(), "must be 1..=1000".into()));
        }
        if self.ca_file.is_some() && self.tls != StoreTls::Require {
            errs.push((
                "store.ca_file".into(),
                "only used with tls = \"require\"".into(),
            ));
        }
    }
}

/// Limits on incoming batches; a batch over a limit is rejected and counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted payload in bytes (default 4 MiB).
    pub max_payload_bytes: usize,
    /// Most partials in one batch (default 10,000).
    pub max_partials: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 4 * 1024 * 1024,
            max_partials: 10_000,
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address (default `127.0.0.1:8080`).
    pub listen: String,
    /// Bearer token required by `/api/*` when set (default none).
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            token: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

fn default_rollups() -> Vec<i64> {
    vec![3_600_000, 86_400_000]
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Key {
            key: "(syntax)".into(),
            reason: e.to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key {
                key: if key == "." { "(root)".into() } else { key },
                reason: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs: Vec<(String, String)> = Vec::new();
        for (i, &w) in self.rollups_ms.iter().enumerate() {
            if let Err(e) = Width::new(w) {
                errs.push((format!("rollups_ms[{i}]"), e.to_string()));
            }
        }
        self.mqtt.check(&mut errs);
        if self.limits.max_payload_bytes == 0 {
            errs.push(("limits.max_payload_bytes".into(), "must be > 0".into()));
        }
        if self.limits.max_partials == 0 {
            errs.push(("limits.max_partials".into(), "must be > 0".into()));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            errs.push((
                "http.listen".into(),
                format!(
                    "`{}` is not a socket address like 127.0.0.1:8080",
                    self.http.listen
                ),
            ));
        }
        if self.finality.lateness_ms < 0 {
            errs.push(("finality.lateness_ms".into(), "must be ≥ 0".into()));
        }
        if self.finality.idle_timeout_ms <= 0 {
            errs.push(("finality.idle_timeout_ms".into(), "must be > 0".into()));
        }
        if let Ok(url) = std::env::var("TRIBUTARY_STORE_URL") {
            let mut store = self.store.clone();
            store.url = Some(url);
            store.check(&mut errs);
        } else {
            self.store.check(&mut errs);
        }
        crate::sinks::validate_all(&self.sinks, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("collector.db")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_documented_file_parses_with_its_defaults() {
        let text = include_str!("../../config/collector.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.rollups_ms, vec![3_600_000, 86_400_000]);
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.limits.max_partials, 10_000);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[mqtt]\nhots = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("mqtt"), "{e}");
        assert!(e.to_string().contains("hots"), "{e}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let e = Config::from_toml("rollups_ms = [0]\n[limits]\nmax_partials = 0\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("rollups_ms[0]") && s.contains("limits.max_partials"),
            "{s}"
        );
    }

    #[test]
    fn the_store_section_names_its_keys() {
        let c = Config::from_toml(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://u@db:5432/t\"\npool_size = 8\n[mqtt]\nshare_group = \"collectors\"\n",
        )
        .unwrap();
        let pg = c.store.postgres().unwrap();
        assert_eq!(
            (pg.url.as_str(), pg.pool_size),
            ("postgres://u@db:5432/t", 8)
        );
        assert_eq!(c.mqtt.share_group.as_deref(), Some("collectors"));
        assert!(Config::from_toml("").unwrap().store.postgres().is_none());
        if std::env::var("TRIBUTARY_STORE_URL").is_err() {
            let e = Config::from_toml("[store]\nkind = \"postgres\"\n").unwrap_err();
            assert!(e.to_string().contains("store.url"), "{e}");
        }
        let e = Config::from_toml(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://u@db/t\"\npool_size = 0\nca_file = \"/x.pem\"\n[mqtt]\nshare_group = \"a/b\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in ["store.pool_size", "store.ca_file", "mqtt.share_group"] {
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Config::from_toml("[store]\nkind = \"mysql\"\n").unwrap_err();
        assert!(e.to_string().contains("store.kind"), "{e}");
    }

    #[test]
    fn sinks_are_validated_with_their_index() {
        let text = "[[sinks]]\nname = \"db\"\nkind = \"influx\"\nurl = \"http://127.0.0.1:8086\"\n";
        let s = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            s.contains("sinks[0].org") && s.contains("sinks[0].bucket"),
            "{s}"
        );
        let e =
            Config::from_toml("[[sinks]]\nname = \"x\"\nkind = \"kafka\"\nurl = \"http://h\"\n");
        assert!(e.unwrap_err().to_string().contains("sinks[0].kind"));
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = Config::from_toml("[mqtt]\nport = \"high\"\n").unwrap_err();
        assert!(e.to_string().contains("mqtt.port"), "{e}");
    }
}
