//! `[[opcua]]`: one OPC UA server, one subscription, with its
//! `[[opcua.items]]`, each a monitored item and a series `{metric}` of
//! device `{name}` (with the item's `tags`).
//!
//! Every key is documented with its default in `config/agent.toml`. This
//! file is compiled without the `opcua` cargo feature too, so that such an
//! agent names the section it cannot serve instead of an unknown key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use tributary_core::series::validate_id;
use tributary_core::{Quantum, SeriesKey};
use tributary_runtime::config::{Problems, Secret};

use crate::sources::scaling::Scaling;

/// `[[opcua]]`: one server, served by a task of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaConfig {
    /// The device id of its series (required).
    pub name: String,
    /// The server's endpoint URL, `opc.tcp://host:port[/path]` (required).
    pub endpoint: String,
    /// `"None"` or `"Basic256Sha256"`. Default `"None"`.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// `"none"`, `"sign"` or `"sign_and_encrypt"`; `"none"` exactly when
    /// the policy is `"None"`. Default `"none"`.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// The client's own certificate and key (and trusted/rejected server
    /// certificates) for a secure policy; a self-signed pair is made on
    /// first use. Default `{data_dir}/opcua-pki`.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// Trust a server certificate not yet in `pki_dir/trusted` (it is
    /// stored there). Default false: copy the server's certificate there.
    #[serde(default)]
    pub trust_server_certs: bool,
    /// User name (default none: anonymous; used with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password of `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The subscription's publishing interval (ms). Default 1000.
    #[serde(default = "default_publishing_interval_ms")]
    pub publishing_interval_ms: u64,
    /// Longest wait for one request (connect, subscribe) (ms). Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The monitored items (at least one).
    #[serde(default)]
    pub items: Vec<ItemConfig>,
}

/// The message security policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SecurityPolicy {
    /// No security (the mode must be `"none"`).
    #[default]
    None,
    /// RSA-OAEP, AES-256-CBC, SHA-256.
    Basic256Sha256,
}

/// The message security mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Plain messages.
    #[default]
    None,
    /// Signed messages.
    Sign,
    /// Signed and encrypted messages.
    SignAndEncrypt,
}

/// The data change filter's trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Status changes only.
    Status,
    /// Status or value changes.
    StatusValue,
    /// Status, value or SourceTimestamp changes: every sample.
    #[default]
    StatusValueTimestamp,
}

/// `[[opcua.items]]`: one monitored item, one series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemConfig {
    /// The variable's node id, e.g. `"ns=2;s=Temp"` or `"ns=2;i=1001"`
    /// (required).
    pub node_id: String,
    /// The series' metric name (required).
    pub metric: String,
    /// The series' own tags (default none; the global `[tags]` are added).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// How often the server samples the variable (ms); 0 asks for the
    /// fastest it offers (event-driven on many servers). Default: the
    /// publishing interval.
    #[serde(default)]
    pub sampling_interval_ms: Option<u64>,
    /// What the server reports: `"status_value_timestamp"` (every new
    /// SourceTimestamp is a reading, even of the same value),
    /// `"status_value"` (only changed values: the OPC UA default; repeated
    /// values are then not counted) or `"status"`. Default
    /// `"status_value_timestamp"`.
    #[serde(default)]
    pub trigger: Trigger,
    /// Changes the server keeps between publishes (the oldest is dropped
    /// when full). Default 10.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// value = raw × scale + offset, in the series' unit. Default 1.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Default 0.
    #[serde(default)]
    pub offset: f64,
    /// The series' quantum exponent: values are held as ticks of
    /// 10^quantum. Default 0 (whole units). Scale and offset must land on
    /// it (integer values are scaled exactly); floats are rounded once.
    #[serde(default)]
    pub quantum: i8,
}

fn default_publishing_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_queue_size() -> u32 {
    10
}
fn default_scale() -> f64 {
    1.0
}

/// An item's scaling for integer and for float values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemScaling {
    /// For Boolean and integer variants: exact.
    pub int: Scaling,
    /// For Float and Double: rounded once.
    pub float: Scaling,
}

impl ItemConfig {
    /// Its scaling, or why an integer value could not land exactly.
    pub fn scaling(&self) -> Result<ItemScaling, String> {
        let q = Quantum::new(self.quantum).map_err(|e| e.to_string())?;
        Ok(ItemScaling {
            int: Scaling::new(self.scale, self.offset, q, false)?,
            float: Scaling::new(self.scale, self.offset, q, true)?,
        })
    }

    /// Its series key (the engine adds the global tags).
    pub fn key(&self, device: &str) -> Result<SeriesKey, String> {
        SeriesKey::new(self.metric.as_str(), device, self.tags.clone()).map_err(|e| e.to_string())
    }

    /// The sampling interval to ask for.
    pub fn sampling_ms(&self, publishing_interval_ms: u64) -> u64 {
        self.sampling_interval_ms.unwrap_or(publishing_interval_ms)
    }
}

impl OpcuaConfig {
    /// Records every invalid value in `p`; `i` is the table's index.
    pub fn check(&self, i: usize, p: &mut Problems) {
        let at = |k: &str| format!("opcua[{i}].{k}");
        // Under `cargo fuzz` (`cfg(fuzzing)`, built without the library to
        // keep the fuzz build short) a section loads, so the code after
        // loading is fuzzed with OPC UA items too.
        if !cfg!(feature = "opcua") && !cfg!(fuzzing) {
            p.bad(
                at("name"),
                "this agent was built without the `opcua` cargo feature",
            );
        }
        p.check(at("name"), validate_id("device id", &self.name));
        if !self.endpoint.starts_with("opc.tcp://") {
            p.bad(at("endpoint"), "must start with opc.tcp://");
        }
        let plain = self.security_policy == SecurityPolicy::None;
        if plain != (self.security_mode == SecurityMode::None) {
            p.bad(
                at("security_mode"),
                "\"none\" exactly when security_policy is \"None\"",
            );
        }
        if self.username.is_some() != self.password.is_some() {
            p.bad(at("password"), "username and password go together");
        }
        if self.publishing_interval_ms == 0 {
            p.bad(at("publishing_interval_ms"), "must be > 0");
        }
        if self.timeout_ms == 0 {
            p.bad(at("timeout_ms"), "must be > 0");
        }
        if self.items.is_empty() {
            p.bad(at("items"), "at least one item");
        }
        let mut metrics = BTreeSet::new();
        for (j, item) in self.items.iter().enumerate() {
            let at = |k: &str| format!("opcua[{i}].items[{j}].{k}");
            if !valid_node_id(&item.node_id) {
                p.bad(
                    at("node_id"),
                    format!(
                        "{:?} is not a node id like \"ns=2;s=Temp\" or \"ns=2;i=1001\"",
                        item.node_id
                    ),
                );
            }
            p.check(at("metric"), validate_id("metric", &item.metric));
            if let Err(e) = item.key(&self.name) {
                p.bad(at("tags"), e);
            }
            if !metrics.insert((item.metric.as_str(), &item.tags)) {
                p.bad(at("metric"), "two items of one server name the same series");
            }
            if item.queue_size == 0 {
                p.bad(at("queue_size"), "must be > 0");
            }
            if let Err(e) = item.scaling() {
                p.bad(at("scale"), e);
            }
        }
    }
}

/// Whether `text` reads as an OPC UA node id: `[ns=N;]` then `i=`, `s=`,
/// `g=` or `b=` and a value (the client library parses it the same way).
pub fn valid_node_id(text: &str) -> bool {
    let rest = match text.strip_prefix("ns=") {
        Some(r) => match r.split_once(';') {
            Some((ns, rest)) if ns.parse::<u16>().is_ok() => rest,
            _ => return false,
        },
        None => text,
    };
    match rest.split_at_checked(2) {
        Some(("i=", v)) => v.parse::<u32>().is_ok(),
        Some(("s=" | "g=" | "b=", v)) => !v.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(servers: &str) -> Result<Config, String> {
        Config::from_toml(&format!("agent_id = \"gw\"\n{servers}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_documented_server_loads() {
        let c = load(
            "[[opcua]]\nname = \"press\"\nendpoint = \"opc.tcp://127.0.0.1:4840\"\n\
             username = \"op\"\npassword = \"pw\"\n\
             [[opcua.items]]\nnode_id = \"ns=2;s=Temp\"\nmetric = \"t\"\nscale = 0.1\nquantum = -1\n\
             [[opcua.items]]\nnode_id = \"ns=2;i=1001\"\nmetric = \"p\"\n\
             sampling_interval_ms = 250\ntags = { line = \"2\" }\n",
        )
        .unwrap();
        let s = &c.opcua[0];
        assert_eq!((s.publishing_interval_ms, s.timeout_ms), (1000, 5000));
        assert_eq!(s.items[0].sampling_ms(1000), 1000);
        assert_eq!(s.items[1].sampling_ms(1000), 250);
        assert_eq!(s.items[0].queue_size, 10);
        assert_eq!(c.series_bound().known, 2);
    }

    #[test]
    fn the_shipped_example_loads_uncommented() {
        let text = include_str!("../../../../config/agent.toml");
        let section: String = text
            .lines()
            .skip_while(|l| *l != "# [[opcua]]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let c = load(&section).unwrap();
        let s = &c.opcua[0];
        assert_eq!((s.name.as_str(), s.items.len()), ("press-3", 1));
        assert_eq!(s.items[0].node_id, "ns=2;s=Temp");
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let e = load(
            "[[opcua]]\nname = \"press\"\nendpoint = \"http://x\"\n\
             security_policy = \"Basic256Sha256\"\nusername = \"op\"\n\
             [[opcua.items]]\nnode_id = \"ns=x;s=T\"\nmetric = \"t\"\nscale = 0.001\nquantum = -2\n\
             [[opcua.items]]\nnode_id = \"i=\"\nmetric = \"t\"\nqueue_size = 0\n\
             [[opcua]]\nname = \"press\"\nendpoint = \"opc.tcp://h:1\"\n",
        )
        .unwrap_err();
        for key in [
            "opcua[0].endpoint",
            "opcua[0].security_mode",
            "opcua[0].password",
            "opcua[0].items[0].node_id",
            "opcua[0].items[0].scale",
            "opcua[0].items[1].node_id",
            "opcua[0].items[1].metric",
            "opcua[0].items[1].queue_size",
            "opcua[1].items",
            "opcua[1].name",
        ] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        assert!(e.contains("two OPC UA servers of one name"), "{e}");
        // Modbus devices and OPC UA servers share one name space (the
        // `device` label of their metrics).
        let e = load(
            "[[modbus]]\nname = \"press\"\ntcp = \"127.0.0.1:502\"\n\
             [[modbus.registers]]\nmetric = \"t\"\naddress = 3\n\
             [[opcua]]\nname = \"oven\"\nendpoint = \"opc.tcp://h:1\"\n\
             [[opcua.items]]\nnode_id = \"ns=2;s=T\"\nmetric = \"t\"\n\
             [[opcua]]\nname = \"press\"\nendpoint = \"opc.tcp://h:2\"\n\
             [[opcua.items]]\nnode_id = \"ns=2;s=T\"\nmetric = \"t\"\n",
        )
        .unwrap_err();
        assert!(e.contains("opcua[1].name"), "{e}");
        assert!(
            e.contains("a Modbus device and an OPC UA server of one name"),
            "{e}"
        );
        assert!(!e.contains("opcua[0]"), "{e}");
        assert!(!e.contains("modbus[0]"), "{e}");
    }

    #[test]
    fn node_ids_read_as_the_client_reads_them() {
        use super::valid_node_id as ok;
        for good in [
            "ns=2;s=Temp",
            "ns=2;i=1001",
            "i=2258",
            "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "ns=3;b=M/RbKBsRVkePCePcx24oRA==",
        ] {
            assert!(ok(good), "{good}");
            #[cfg(feature = "opcua")]
            assert!(
                good.parse::<opcua::types::NodeId>().is_ok(),
                "the client library reads {good}"
            );
        }
        for bad in ["", "ns=2", "ns=2;x=1", "ns=70000;i=1", "i=x", "s="] {
            assert!(!ok(bad), "{bad}");
        }
    }
}
