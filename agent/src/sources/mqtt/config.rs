//! `[local_mqtt]`: the local broker devices publish to.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_runtime::config::Secret;

use crate::mqtt_client::Endpoint;

/// `[local_mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalMqttConfig {
    /// Whether to subscribe to the local broker. Default false.
    pub enabled: bool,
    /// Broker host. Default `127.0.0.1`.
    pub host: String,
    /// Broker port. Default 1883.
    pub port: u16,
    /// Client id (a persistent session, so unacknowledged messages survive
    /// an agent restart); empty (the default) means
    /// `tributary-agent-{agent_id}-local`.
    pub client_id: String,
    /// Username (default none; used with `password`).
    pub username: Option<String>,
    /// Password (default none).
    pub password: Option<Secret>,
    /// Use TLS (rustls). Default false.
    pub tls: bool,
    /// PEM file of CA certificates; without it (the default) the system
    /// roots are used.
    pub ca_file: Option<PathBuf>,
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
            tls: false,
            ca_file: None,
        }
    }
}

impl LocalMqttConfig {
    /// The connection of agent `agent_id`.
    pub(crate) fn endpoint(&self, agent_id: &str) -> Endpoint<'_> {
        Endpoint {
            client_id: if self.client_id.is_empty() {
                format!("tributary-agent-{agent_id}-local")
            } else {
                self.client_id.clone()
            },
            host: &self.host,
            port: self.port,
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            tls: self.tls,
            ca_file: self.ca_file.as_deref(),
            ca_key: "local_mqtt.ca_file",
            keep_alive: Duration::from_secs(30),
        }
    }
}
