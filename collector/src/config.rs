//! The collector's configuration: TOML (every key documented in
//! `config/collector.toml`), unknown keys refused, `TRIBUTARY_<SECTION>_<KEY>`
//! environment overrides, and validation that reports every problem at once,
//! each naming its key. Each section is defined beside the component it
//! configures, and each component is handed only its own section.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tributary_core::Width;
use tributary_runtime::config::{self as rc, EnvRules, Problems};

pub use tributary_runtime::config::{ConfigError, Secret};

pub use crate::finality::FinalityConfig;
pub use crate::ingest::{LimitsConfig, MqttConfig, MQTT_PASSWORD_ENV};
pub use crate::query::HttpConfig;
pub use crate::retention::RetentionConfig;
pub use crate::sinks::SinkConfig;
pub use crate::store::{StoreConfig, StoreKind, StoreTls};

/// The sections `TRIBUTARY_<SECTION>_<KEY>` may address (e.g.
/// `TRIBUTARY_STORE_URL`, `TRIBUTARY_MQTT_PORT`, `TRIBUTARY_HTTP_LISTEN`).
const ENV: EnvRules<'static> = EnvRules {
    sections: &["mqtt", "limits", "http", "finality", "store", "retention"],
    text_sections: &[],
};

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
    /// The MQTT broker the agents publish to (ingest).
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Limits on incoming batches (ingest).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The HTTP API (query).
    #[serde(default)]
    pub http: HttpConfig,
    /// When windows become final.
    #[serde(default)]
    pub finality: FinalityConfig,
    /// Where results are stored: SQLite (default) or a shared PostgreSQL.
    #[serde(default)]
    pub store: StoreConfig,
    /// How long each stored width is kept (default: forever).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Where final windows and their revisions are pushed (`[[sinks]]`,
    /// default none); see [`SinkConfig`].
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

fn default_rollups() -> Vec<i64> {
    vec![3_600_000, 86_400_000]
}

impl Config {
    /// Loads a file with the process's `TRIBUTARY_*` overrides and
    /// validates it. `TRIBUTARY_MQTT_PASSWORD` is not an override: it
    /// takes precedence over `mqtt.password` and `mqtt.password_file` when
    /// ingest connects ([`MqttConfig::password_source`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(&rc::read(path)?, std::env::vars())
    }

    /// Parses and validates TOML text (no environment overrides).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, std::iter::empty())
    }

    /// Parses TOML text, applies the given `TRIBUTARY_*` variables,
    /// validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env = env.into_iter().filter(|(k, _)| k != MQTT_PASSWORD_ENV);
        let config: Config = rc::parse(text, env, ENV)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        for (i, &w) in self.rollups_ms.iter().enumerate() {
            p.check(format!("rollups_ms[{i}]"), Width::new(w).map(|_| ()));
        }
        self.mqtt.check(&mut p);
        self.limits.check(&mut p);
        self.http.check(&mut p);
        self.finality.check(&mut p);
        self.store.check(&mut p);
        self.retention.check(&self.rollups_ms, &mut p);
        let mut sinks = Vec::new();
        crate::sinks::validate_all(&self.sinks, &mut sinks);
        for (key, reason) in sinks {
            p.bad(key, reason);
        }
        p.finish()
    }

    /// The retention policy of `[retention]` over `rollups_ms`.
    pub fn retention_policy(&self) -> crate::retention::Policy {
        self.retention.policy(&self.rollups_ms)
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
    fn the_retention_section_names_its_keys_and_says_why() {
        let c = Config::from_toml(
            "[retention]\nwindows_ms = 2592000000\n[retention.rollups]\n\"3600000\" = 31536000000\n",
        )
        .unwrap();
        let p = c.retention_policy();
        let hour = Width::new(3_600_000).unwrap();
        assert_eq!(p.keep_ms(hour), Some(31_536_000_000));
        assert_eq!(p.keep_ms(Width::new(60_000).unwrap()), Some(2_592_000_000));
        assert_eq!(p.keep_ms(Width::new(86_400_000).unwrap()), None);
        let e = Config::from_toml(
            "[retention]\nwindows_ms = 2592000000\nbatch_rows = 0\n[retention.rollups]\n\"7200000\" = 1\n\"3600000\" = 86400000\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "retention.batch_rows",
            "retention.rollups.7200000",
            "retention.rollups.3600000",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        assert!(e.contains("shorter than the finer windows"), "{e}");
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
        let lanes = |toml: &str| Config::from_toml(toml).map(|c| c.store.lanes);
        let pg = "[store]\nkind = \"postgres\"\nurl = \"postgres://u@db/t\"\npool_size = 4\n";
        assert_eq!(lanes(pg).unwrap(), 1, "one lane by default");
        assert_eq!(lanes(&format!("{pg}lanes = 4\n")).unwrap(), 4);
        for bad in [
            format!("{pg}lanes = 5\n"),
            format!("{pg}lanes = 0\n"),
            "[store]\nlanes = 2\n".to_string(),
        ] {
            let e = lanes(&bad).unwrap_err().to_string();
            assert!(e.contains("store.lanes"), "{bad}: {e}");
        }
        let keepalive = |toml: &str| Config::from_toml(toml).map(|c| c.store.postgres());
        let secs = |s| Some(std::time::Duration::from_secs(s));
        assert_eq!(keepalive(pg).unwrap().unwrap().keepalive, secs(30));
        let set = keepalive(&format!("{pg}keepalive_ms = 3000\n"));
        assert_eq!(set.unwrap().unwrap().keepalive, secs(3));
        let off = keepalive(&format!("{pg}keepalive_ms = 0\n"));
        assert_eq!(off.unwrap().unwrap().keepalive, None);
        for bad in [1500, 2000, 7_201_000] {
            let e = keepalive(&format!("{pg}keepalive_ms = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("store.keepalive_ms"), "{bad}: {e}");
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
    fn the_environment_overrides_keys_of_sections() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = Config::from_toml_with_env(
            "[store]\nkind = \"postgres\"\n",
            env(&[
                ("TRIBUTARY_STORE_URL", "postgres://u@db:5432/t"),
                ("TRIBUTARY_MQTT_PORT", "1884"),
                ("TRIBUTARY_HTTP_MAX_POINTS", "10"),
                ("TRIBUTARY_MQTT_PASSWORD", "not-a-key"),
            ]),
        )
        .unwrap();
        let pg = c.store.postgres().unwrap();
        assert_eq!(pg.url, "postgres://u@db:5432/t");
        assert_eq!(c.mqtt.port, 1884);
        assert_eq!(c.http.max_points, 10);
        // The password variable is read when connecting, not as a key.
        assert!(c.mqtt.password.is_none());
        let e = Config::from_toml_with_env("", env(&[("TRIBUTARY_HTTP_LISTEN", "nowhere")]))
            .unwrap_err();
        assert!(e.to_string().contains("http.listen"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = Config::from_toml("[mqtt]\nport = \"high\"\n").unwrap_err();
        assert!(e.to_string().contains("mqtt.port"), "{e}");
    }
}
