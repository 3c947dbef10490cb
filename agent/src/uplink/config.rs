//! `[uplink]`: the upstream broker the batches go to.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_core::batch::Encoding;
use tributary_runtime::config::{Problems, Secret};

use crate::mqtt_client::Endpoint;

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Whether to connect upstream at all. Default true.
    pub enabled: bool,
    /// Broker host. Default `127.0.0.1`.
    pub host: String,
    /// Broker port. Default 1883.
    pub port: u16,
    /// MQTT client id; empty (the default) means `tributary-agent-{agent_id}`.
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
    /// Batch encoding: `json` (the default) or `binary`.
    pub encoding: Encoding,
    /// Batches published but not yet confirmed, at most. Default 16.
    pub max_in_flight: usize,
    /// Resend a batch not confirmed after this long (ms). Default 10 000.
    pub confirm_timeout_ms: u64,
    /// First reconnect delay (ms); doubles up to `reconnect_max_ms`, with
    /// jitter. Default 200.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay (ms). Default 30 000.
    pub reconnect_max_ms: u64,
    /// MQTT keep-alive (s; at least 5 is used). Default 30.
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
            encoding: Encoding::Json,
            max_in_flight: 16,
            confirm_timeout_ms: 10_000,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            keep_alive_s: 30,
        }
    }
}

impl UplinkConfig {
    /// Records every invalid value in `p`.
    pub fn check(&self, p: &mut Problems) {
        if self.max_in_flight == 0 {
            p.bad("uplink.max_in_flight", "must be > 0");
        }
        if self.confirm_timeout_ms == 0 {
            p.bad("uplink.confirm_timeout_ms", "must be > 0");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            p.bad(
                "uplink.reconnect_max_ms",
                "need 0 < reconnect_min_ms ≤ reconnect_max_ms",
            );
        }
        if self.enabled && self.host.is_empty() {
            p.bad("uplink.host", "is empty");
        }
    }

    /// The connection of agent `agent_id`.
    pub(crate) fn endpoint(&self, agent_id: &str) -> Endpoint<'_> {
        Endpoint {
            client_id: if self.client_id.is_empty() {
                format!("tributary-agent-{agent_id}")
            } else {
                self.client_id.clone()
            },
            host: &self.host,
            port: self.port,
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            tls: self.tls,
            ca_file: self.ca_file.as_deref(),
            ca_key: "uplink.ca_file",
            keep_alive: Duration::from_secs(self.keep_alive_s.max(5)),
        }
    }
}
