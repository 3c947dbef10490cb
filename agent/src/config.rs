//! The agent's configuration: the root struct, loading (TOML, every key
//! documented in `config/agent.toml`, with `TRIBUTARY_*` environment
//! overrides by [`tributary_runtime::config::parse`]) and validation that
//! asks each section to check itself and reports every problem at once,
//! each naming its key.
//!
//! Each section's struct lives beside its component and is handed only to
//! it: [`WindowConfig`] (`[window]`), [`StoreConfig`] and [`OutboxConfig`]
//! (`[store]`, `[outbox]`), [`UplinkConfig`], [`LimitsConfig`],
//! [`HttpConfig`], [`SerialConfig`] (`[[serial]]`), [`ModbusConfig`]
//! (`[[modbus]]`), [`OpcuaConfig`] (`[[opcua]]`), [`LocalMqttConfig`]
//! and [`SimulatedConfig`] (in `tributary_sim`).
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
use tributary_runtime::config::{self as runtime_config, EnvRules, Problems};

pub use crate::engine::{GlobalTags, LimitsConfig};
pub use crate::http::HttpConfig;
pub use crate::sources::modbus::ModbusConfig;
pub use crate::sources::mqtt::LocalMqttConfig;
pub use crate::sources::opcua::OpcuaConfig;
pub use crate::sources::serial::SerialConfig;
pub use crate::store::config::SeriesBound;
pub use crate::store::{OutboxConfig, StoreConfig, Synchronous};
pub use crate::uplink::UplinkConfig;
pub use crate::window::WindowConfig;
pub use tributary_runtime::config::ConfigError;
pub use tributary_sim::config::{SimMode, SimulatedConfig};

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's id (a valid series id; appears in upstream topics).
    /// Required.
    pub agent_id: String,
    /// Directory of the SQLite database `agent.db`. Default
    /// `/var/lib/tributary-agent`.
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
    /// Serial devices (default none).
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
    /// Modbus TCP/RTU devices (default none).
    #[serde(default)]
    pub modbus: Vec<ModbusConfig>,
    /// OPC UA servers (default none).
    #[serde(default)]
    pub opcua: Vec<OpcuaConfig>,
    /// The local broker devices publish to.
    #[serde(default)]
    pub local_mqtt: LocalMqttConfig,
    /// Simulated devices.
    #[serde(default)]
    pub simulated: SimulatedConfig,
    /// `[tags]`: global tags added to every series key this agent forwards
    /// (a tag the source sets itself wins); see [`GlobalTags`]. Default none.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tributary-agent")
}

/// The agent's environment overrides: the sections `TRIBUTARY_<SECTION>_<KEY>`
/// addresses; `[tags]` values are always text.
const ENV: EnvRules<'static> = EnvRules {
    sections: &[
        "window",
        "store",
        "outbox",
        "uplink",
        "limits",
        "http",
        "local_mqtt",
        "simulated",
        "tags",
    ],
    text_sections: &["tags"],
};

impl Config {
    /// Loads a file, applies `TRIBUTARY_*` overrides from the environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = runtime_config::read(path)?;
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
        let config: Config = runtime_config::parse(text, env, ENV)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        p.check("agent_id", validate_id("agent id", &self.agent_id));
        self.window.check(&mut p);
        self.store.check(&mut p);
        self.outbox.check(self.window.width_ms, &mut p);
        // A refusal is recorded in `p`; a warning is for [`Config::warnings`].
        let _ = self
            .outbox
            .check_capacity(self.window.width_ms, self.series_bound(), &mut p);
        self.uplink.check(&mut p);
        self.limits.check(&mut p);
        for (k, e) in GlobalTags::check(&self.tags) {
            p.bad(format!("tags.{k}"), e.to_string());
        }
        if self.tags.len() > self.limits.max_tags {
            p.bad(
                "tags",
                format!(
                    "{} tags; limits.max_tags is {}",
                    self.tags.len(),
                    self.limits.max_tags
                ),
            );
        }
        self.http.check(&mut p);
        for (i, s) in self.serial.iter().enumerate() {
            s.check(i, &mut p);
        }
        for (i, m) in self.modbus.iter().enumerate() {
            m.check(i, &mut p);
        }
        // One name space: Modbus devices and OPC UA servers share the
        // `device` label of their metrics.
        let mut names = std::collections::BTreeMap::new();
        for (i, m) in self.modbus.iter().enumerate() {
            if names.insert(m.name.as_str(), false).is_some() {
                p.bad(
                    format!("modbus[{i}].name"),
                    "two Modbus devices of one name",
                );
            }
        }
        for (i, o) in self.opcua.iter().enumerate() {
            o.check(i, &mut p);
            // The value: whether the name is an OPC UA server's.
            match names.insert(o.name.as_str(), true) {
                Some(true) => p.bad(format!("opcua[{i}].name"), "two OPC UA servers of one name"),
                Some(false) => p.bad(
                    format!("opcua[{i}].name"),
                    "a Modbus device and an OPC UA server of one name",
                ),
                None => {}
            }
        }
        self.simulated.check(self.window.width_ms, &mut p);
        p.finish()
    }

    /// What is valid but ill-advised, each with its figures and the key to
    /// change (`--check-config` prints them, the agent logs them at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut p = Problems::default();
        self.outbox
            .check_capacity(self.window.width_ms, self.series_bound(), &mut p)
            .into_iter()
            .collect()
    }

    /// The series known in advance (the simulated devices' channels) and
    /// how many more devices on serial ports or the local broker may bring
    /// (up to `limits.max_series` in all).
    pub fn series_bound(&self) -> SeriesBound {
        let channels = tributary_sim::device::SIM_CHANNELS.len() as u64;
        let modbus: u64 = self.modbus.iter().map(|m| m.registers.len() as u64).sum();
        let opcua: u64 = self.opcua.iter().map(|o| o.items.len() as u64).sum();
        let known = (self.simulated.devices as u64)
            .saturating_mul(channels)
            .saturating_add(modbus)
            .saturating_add(opcua);
        let open_ended = self.local_mqtt.enabled || !self.serial.is_empty();
        SeriesBound {
            known,
            unknown: if open_ended {
                (self.limits.max_series as u64).saturating_sub(known)
            } else {
                0
            },
        }
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
    fn an_outbox_too_small_for_the_series_is_refused_or_warned_about() {
        let sims = "agent_id = \"a\"\n[outbox]\nmax_bytes = 8000\n[simulated]\ndevices = 14\n";
        let err = Config::from_toml(sims).unwrap_err().to_string();
        assert!(
            err.contains("`outbox.max_bytes`") && err.contains("42 simulated series"),
            "{err}"
        );
        let open = "agent_id = \"a\"\n[outbox]\nmax_bytes = 100000\n[local_mqtt]\nenabled = true\n";
        let c = Config::from_toml(open).unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("limits.max_series allows 100000"), "{w:?}");
        let fewer = format!("{open}[limits]\nmax_series = 60\n");
        assert!(Config::from_toml(&fewer).unwrap().warnings().is_empty());
        let shipped = Config::from_toml(include_str!("../../config/agent.toml")).unwrap();
        assert!(shipped.warnings().is_empty());
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
