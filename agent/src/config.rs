//! The agent's configuration: TOML (every key documented in
//! `config/agent.toml`), `TRIBUTARY_*` environment overrides, and validation
//! that reports every problem at once, each naming its key.
//!
//! Environment overrides: `TRIBUTARY_<KEY>` for a top-level key and
//! `TRIBUTARY_<SECTION>_<KEY>` for a key in a section, e.g.
//! `TRIBUTARY_AGENT_ID=gw-2`, `TRIBUTARY_UPLINK_PORT=1884`. The value is read
//! as a TOML value (`8`, `true`, `"text"`), or as a string if it is not one;
//! a global tag, `TRIBUTARY_TAGS_<NAME>` (the name in lower case), is
//! always a string, e.g. `TRIBUTARY_TAGS_SITE=berlin`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tributary_core::series::validate_id;
use tributary_core::{Quantum, Width};

use crate::tags::GlobalTags;
pub use tributary_sim::config::{SimMode, SimulatedConfig};

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
    /// The TOML is not valid TOML.
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// A key has the wrong type or is unknown.
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

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's id (a valid series id; appears in upstream topics).
    pub agent_id: String,
    /// Directory of the SQLite database `agent.db`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Windowing.
    #[serde(default)]
    pub window: WindowConfig,
    /// The SQLite store and group commit.
    #[serde(default)]
    pub store: StoreConfig,
    /// The outbox of closed partials.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// The upstream broker.
    #[serde(default)]
    pub uplink: UplinkConfig,
    /// Input limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Metrics and health HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Serial devices.
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
    /// The local broker devices publish to.
    #[serde(default)]
    pub local_mqtt: LocalMqttConfig,
    /// Simulated devices.
    #[serde(default)]
    pub simulated: SimulatedConfig,
    /// `[tags]`: global tags added to every series key this agent forwards
    /// (a tag the source sets itself wins); see [`crate::tags`]. Default none.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tributary-agent")
}

/// `[window]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Tumbling window width (ms); a multiple of every device window.
    pub width_ms: i64,
    /// How long after a window's end (by the source's watermark) it stays open.
    pub allowed_lateness_ms: i64,
    /// A source that sent nothing for this long (wall clock) has its open
    /// windows closed; later data for them becomes revision partials.
    pub idle_close_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            width_ms: 60_000,
            allowed_lateness_ms: 5_000,
            idle_close_ms: 120_000,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Longest time input waits for its group commit (ms). Input that makes
    /// a window due is committed (the window closed and sent) after a fifth
    /// of this at most.
    pub commit_interval_ms: u64,
    /// Commit early once this many readings are pending.
    pub commit_max_readings: u64,
    /// SQLite `synchronous`: `full` (survives power loss) or `normal`
    /// (survives process crashes).
    pub synchronous: Synchronous,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            commit_interval_ms: 50,
            commit_max_readings: 2_000_000,
            synchronous: Synchronous::Full,
        }
    }
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit.
    Full,
    /// fsync at checkpoints only.
    Normal,
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Byte limit of unconfirmed partials; above it the oldest are coarsened.
    pub max_bytes: u64,
    /// The coarser widths (ms) partials are merged into, finest first; each a
    /// multiple of the previous (and of `window.width_ms`). The last is the
    /// floor: past it the oldest partials are dropped and counted.
    pub coarsen_widths_ms: Vec<i64>,
    /// Most partials in one batch.
    pub batch_max_partials: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 256 * 1024 * 1024,
            coarsen_widths_ms: vec![300_000, 3_600_000],
            batch_max_partials: 200,
        }
    }
}

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Whether to connect upstream at all.
    pub enabled: bool,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; empty means `tributary-agent-{agent_id}`.
    pub client_id: String,
    /// Username (optional).
    pub username: Option<String>,
    /// Password (optional).
    pub password: Option<String>,
    /// Use TLS (rustls).
    pub tls: bool,
    /// PEM file of CA certificates; without it the system roots are used.
    pub ca_file: Option<PathBuf>,
    /// Batch encoding: `json` or `binary`.
    pub encoding: tributary_core::batch::Encoding,
    /// Batches published but not yet confirmed, at most.
    pub max_in_flight: usize,
    /// Resend a batch not confirmed after this long (ms).
    pub confirm_timeout_ms: u64,
    /// First reconnect delay (ms); doubles up to `reconnect_max_ms`, with jitter.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay (ms).
    pub reconnect_max_ms: u64,
    /// MQTT keep-alive (s).
    pub keep_alive_s: u64,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            username: None,
            password: None,
            tls: false,
            ca_file: None,
            encoding: tributary_core::batch::Encoding::Json,
            max_in_flight: 16,
            confirm_timeout_ms: 10_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            keep_alive_s: 30,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most series this agent tracks; readings of further series are refused.
    pub max_series: usize,
    /// Most tags per series (at most 16).
    pub max_tags: usize,
    /// Largest accepted MQTT payload (bytes).
    pub max_payload_bytes: usize,
    /// Quantum exponent for JSON readings of series without one (10^e).
    pub default_quantum: i8,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_series: 100_000,
            max_tags: 16,
            max_payload_bytes: 256 * 1024,
            default_quantum: -6,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics` and `/health`; empty disables the server.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9187".into(),
        }
    }
}

/// `[[serial]]`: one serial device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The port, e.g. `/dev/ttyUSB0`.
    pub path: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

/// `[local_mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalMqttConfig {
    /// Whether to subscribe to the local broker.
    pub enabled: bool,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id (a persistent session, so unacknowledged messages survive
    /// an agent restart); empty means `tributary-agent-{agent_id}-local`.
    pub client_id: String,
    /// Username (optional).
    pub username: Option<String>,
    /// Password (optional).
    pub password: Option<String>,
}

impl Default for LocalMqttConfig {
    fn default() -> Self {
        LocalMqttConfig {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            username: None,
            password: None,
        }
    }
}

const DEFAULT_WIDTH: Width = match Width::new(60_000) {
    Ok(w) => w,
    Err(_) => panic!("60 s is a valid width"),
};

const SECTIONS: [&str; 9] = [
    "window",
    "store",
    "outbox",
    "uplink",
    "limits",
    "http",
    "local_mqtt",
    "simulated",
    "tags",
];

impl Config {
    /// Loads a file, applies `TRIBUTARY_*` overrides from the environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text without environment overrides, and validates.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, std::iter::empty())
    }

    /// Parses TOML text, applies the given `TRIBUTARY_*` variables, validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TRIBUTARY_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let section = SECTIONS
                .iter()
                .find(|s| rest.starts_with(&format!("{s}_")) && rest.len() > s.len() + 1);
            // Tag values are text even when they look like numbers.
            let value = if section == Some(&"tags") {
                toml::Value::String(value)
            } else {
                parse_env_value(&value)
            };
            match section {
                Some(s) => {
                    let key = rest[s.len() + 1..].to_string();
                    let entry = root
                        .entry((*s).to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    match entry {
                        toml::Value::Table(t) => {
                            t.insert(key, value);
                        }
                        _ => {
                            return Err(ConfigError::Key {
                                key: (*s).to_string(),
                                reason: "is not a table".into(),
                            })
                        }
                    }
                }
                None => {
                    root.insert(rest, value);
                }
            }
        }
        let de = toml::Value::Table(root);
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
        let mut bad = |k: &str, r: String| errs.push((k.to_string(), r));
        if let Err(e) = validate_id("agent id", &self.agent_id) {
            bad("agent_id", e.to_string());
        }
        let width = Width::new(self.window.width_ms);
        if let Err(e) = width {
            bad("window.width_ms", e.to_string());
        }
        if self.window.allowed_lateness_ms < 0 {
            bad("window.allowed_lateness_ms", "must be ≥ 0".into());
        }
        if self.window.idle_close_ms <= 0 {
            bad("window.idle_close_ms", "must be > 0".into());
        }
        if self.store.commit_interval_ms == 0 {
            bad("store.commit_interval_ms", "must be > 0".into());
        }
        if self.outbox.max_bytes < 4096 {
            bad("outbox.max_bytes", "must be at least 4096".into());
        }
        if self.outbox.batch_max_partials == 0 {
            bad("outbox.batch_max_partials", "must be > 0".into());
        }
        let mut prev = self.window.width_ms;
        for (i, &w) in self.outbox.coarsen_widths_ms.iter().enumerate() {
            if w <= prev || prev <= 0 || w % prev != 0 || Width::new(w).is_err() {
                bad(
                    &format!("outbox.coarsen_widths_ms[{i}]"),
                    format!("{w} ms must be a larger multiple of {prev} ms (and at most 366 days)"),
                );
            }
            prev = w;
        }
        if self.uplink.max_in_flight == 0 {
            bad("uplink.max_in_flight", "must be > 0".into());
        }
        if self.uplink.confirm_timeout_ms == 0 {
            bad("uplink.confirm_timeout_ms", "must be > 0".into());
        }
        if self.uplink.reconnect_min_ms == 0
            || self.uplink.reconnect_max_ms < self.uplink.reconnect_min_ms
        {
            bad(
                "uplink.reconnect_max_ms",
                "need 0 < reconnect_min_ms ≤ reconnect_max_ms".into(),
            );
        }
        if self.uplink.enabled && self.uplink.host.is_empty() {
            bad("uplink.host", "is empty".into());
        }
        if self.limits.max_tags > tributary_core::series::MAX_TAGS {
            bad(
                "limits.max_tags",
                format!("at most {}", tributary_core::series::MAX_TAGS),
            );
        }
        for (k, e) in GlobalTags::check(&self.tags) {
            bad(&format!("tags.{k}"), e.to_string());
        }
        if self.tags.len() > self.limits.max_tags {
            bad(
                "tags",
                format!(
                    "{} tags; limits.max_tags is {}",
                    self.tags.len(),
                    self.limits.max_tags
                ),
            );
        }
        if self.limits.max_series == 0 {
            bad("limits.max_series", "must be > 0".into());
        }
        if Quantum::new(self.limits.default_quantum).is_err() {
            bad("limits.default_quantum", "must lie in -18..=18".into());
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9187",
                    self.http.listen
                ),
            );
        }
        for (i, s) in self.serial.iter().enumerate() {
            if s.baud == 0 {
                bad(&format!("serial[{i}].baud"), "must be > 0".into());
            }
        }
        let sim = &self.simulated;
        if sim.devices > 0 {
            if sim.dropout_per_mille > 1000 {
                bad("simulated.dropout_per_mille", "must lie in 0..=1000".into());
            }
            if sim.resend_ms == 0 {
                bad("simulated.resend_ms", "must be > 0".into());
            }
            if sim.device_window_ms == 0
                || self.window.width_ms % i64::from(sim.device_window_ms) != 0
            {
                bad(
                    "simulated.device_window_ms",
                    format!(
                        "must be > 0 and divide window.width_ms ({})",
                        self.window.width_ms
                    ),
                );
            }
            if sim.readings_per_window == 0 || sim.readings_per_window > sim.device_window_ms {
                bad(
                    "simulated.readings_per_window",
                    "must lie in 1..=device_window_ms".into(),
                );
            }
            if sim.start_ms != 0
                && sim.device_window_ms > 0
                && sim.start_ms % i64::from(sim.device_window_ms) != 0
            {
                bad(
                    "simulated.start_ms",
                    "must be a multiple of device_window_ms".into(),
                );
            }
            if sim.max_unacked == 0 {
                bad("simulated.max_unacked", "must be > 0".into());
            }
            if let Err(e) = validate_id("device id", &format!("{}0", sim.prefix)) {
                bad("simulated.prefix", e.to_string());
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    /// The agent window width.
    pub fn width(&self) -> Width {
        Width::new(self.window.width_ms).unwrap_or(DEFAULT_WIDTH)
    }

    /// The global tags (`[tags]`).
    pub fn global_tags(&self) -> GlobalTags {
        GlobalTags::new(self.tags.clone())
    }

    /// The path of the SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("agent.db")
    }
}

fn parse_env_value(v: &str) -> toml::Value {
    format!("x = {v}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("x"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../config/agent.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.window.width_ms, 60_000);
        // The commented `[tags]` examples are valid when uncommented.
        let c = Config::from_toml(
            &text
                .replace("# site = ", "site = ")
                .replace("# gateway = ", "gateway = "),
        )
        .unwrap();
        assert_eq!(c.tags.len(), 2);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("agent_id = \"a\"\n[window]\nwidht_ms = 5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("window") && msg.contains("widht_ms"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::from_toml("agent_id = \"a\"\n[uplink]\nport = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("uplink.port"), "{err}");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let err = Config::from_toml(
            "agent_id = \"a b\"\n[window]\nallowed_lateness_ms = -1\n[simulated]\ndevices = 1\ndevice_window_ms = 7000\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("agent_id"), "{msg}");
        assert!(msg.contains("window.allowed_lateness_ms"), "{msg}");
        assert!(msg.contains("simulated.device_window_ms"), "{msg}");
    }

    #[test]
    fn global_tags_load_and_env_adds_them_as_text() {
        let c = Config::from_toml("agent_id = \"a\"\n[tags]\nsite = \"berlin\"\n").unwrap();
        assert_eq!(c.tags.get("site").map(String::as_str), Some("berlin"));
        let env = vec![
            ("TRIBUTARY_TAGS_FLOOR".to_string(), "2".to_string()),
            ("TRIBUTARY_TAGS_SITE".to_string(), "paris".to_string()),
        ];
        let c = Config::from_toml_with_env("agent_id = \"a\"\n[tags]\nsite = \"berlin\"\n", env)
            .unwrap();
        let tags: Vec<(&str, &str)> = c
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(tags, [("floor", "2"), ("site", "paris")]);
        assert_eq!(c.global_tags().tags(), &c.tags);
        assert!(Config::from_toml("agent_id = \"a\"\n")
            .unwrap()
            .tags
            .is_empty());
    }

    #[test]
    fn bad_global_tags_name_the_key() {
        let err = Config::from_toml(
            "agent_id = \"a\"\n[tags]\nsite = \"a,b\"\ndevice = \"x\"\n\"9lives\" = \"y\"\nok = \"fine\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`tags.site`") && msg.contains("','"), "{msg}");
        assert!(
            msg.contains("`tags.device`") && msg.contains("reserved"),
            "{msg}"
        );
        assert!(msg.contains("`tags.9lives`"), "{msg}");
        assert!(!msg.contains("tags.ok"), "{msg}");
        let err = Config::from_toml("agent_id = \"a\"\n[tags]\nsite = 3\n").unwrap_err();
        assert!(err.to_string().contains("tags.site"), "{err}");
        let err = Config::from_toml(
            "agent_id = \"a\"\n[limits]\nmax_tags = 1\n[tags]\na = \"1\"\nb = \"2\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("`tags`: 2 tags; limits.max_tags is 1"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            ("TRIBUTARY_UPLINK_PORT".to_string(), "1999".to_string()),
            ("TRIBUTARY_AGENT_ID".to_string(), "gw-9".to_string()),
            (
                "TRIBUTARY_LOCAL_MQTT_ENABLED".to_string(),
                "true".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::from_toml_with_env("agent_id = \"a\"\n", env).unwrap();
        assert_eq!(c.uplink.port, 1999);
        assert_eq!(c.agent_id, "gw-9");
        assert!(c.local_mqtt.enabled);
        let env = vec![("TRIBUTARY_UPLINK_PORT".to_string(), "big".to_string())];
        let err = Config::from_toml_with_env("agent_id = \"a\"\n", env).unwrap_err();
        assert!(err.to_string().contains("uplink.port"), "{err}");
    }
}
