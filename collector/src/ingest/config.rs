//! Ingest's configuration: the `[mqtt]` section (the broker the agents
//! publish to, and how the collector connects to it: protocol, login, TLS,
//! session, shared group) and the `[limits]` section (what a batch may
//! be), turned into the [`IngestConfig`] ingest runs with.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_runtime::config::{Password, Problems, Secret};

use super::check::Limits;
use super::transport::{Protocol, TlsOptions};

/// The environment variable that overrides `mqtt.password` and
/// `mqtt.password_file`.
pub const MQTT_PASSWORD_ENV: &str = "TRIBUTARY_MQTT_PASSWORD";

/// Where and how to ingest.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT protocol version (default 3.1.1).
    pub protocol: Protocol,
    /// Client id (a persistent session keeps unacked batches across restarts).
    pub client_id: String,
    /// User name to log in with (default none: anonymous).
    pub username: Option<String>,
    /// Password for `username` (default none: an empty password).
    pub password: Option<Password>,
    /// TLS to the broker (default none: plain TCP).
    pub tls: Option<TlsOptions>,
    /// MQTT keep-alive (default 30 s, at least 5 s).
    pub keep_alive: Duration,
    /// MQTT 5 session expiry interval in seconds: how long the broker keeps
    /// the session (and queues batches for it) while the collector is away
    /// (default 86,400 = 1 day).
    pub session_expiry_s: u32,
    /// Largest accepted payload (bytes).
    pub max_payload_bytes: usize,
    /// Most partials in one batch.
    pub max_partials: usize,
    /// How far ahead of the clock a partial's window may start and an
    /// agent's watermark may be (ms).
    pub max_future_ms: i64,
    /// How long ago a partial's window may start (ms); `None`: no bound.
    pub max_age_ms: Option<i64>,
    /// Most batches per store transaction.
    pub group_batches: usize,
    /// Longest wait for more batches before a group is committed (it is
    /// committed earlier when full). Zero, the default: commit as soon as
    /// no further message is ready — under load the batches that arrive
    /// while one group commits form the next, so groups grow with the load
    /// and an idle collector adds no wait.
    pub group_wait: Duration,
    /// Shared-subscription group: subscribe to `$share/<group>/…` so the
    /// broker balances batches over the instances of the group.
    pub share_group: Option<String>,
    /// How long each width is kept: a partial for an expired window is
    /// refused (default: everything kept).
    pub retention: crate::retention::Policy,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            protocol: Protocol::V311,
            client_id: "tributary-collector".into(),
            username: None,
            password: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            session_expiry_s: 86_400,
            max_payload_bytes: 4 << 20,
            max_partials: 100_000,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            max_age_ms: None,
            group_batches: 256,
            group_wait: Duration::ZERO,
            share_group: None,
            retention: crate::retention::Policy::default(),
        }
    }
}

impl IngestConfig {
    /// The limits payloads are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_partials: self.max_partials,
            max_future_ms: self.max_future_ms,
            max_age_ms: self.max_age_ms,
        }
    }
}

/// The default of [`LimitsConfig::max_future_ms`]: 10 minutes.
const DEFAULT_MAX_FUTURE_MS: i64 = 600_000;

/// The `[limits]` section: a batch over a limit is refused and counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted payload in bytes (default 4 MiB).
    pub max_payload_bytes: usize,
    /// Most partials in one batch (default 10,000).
    pub max_partials: usize,
    /// How far ahead of the collector's clock a partial's window may start
    /// (ms); a later partial is taken out of its batch and counted
    /// (`time_future`), and a watermark further ahead is clamped to it
    /// (default 600,000 = 10 minutes; agents bound their own readings at
    /// 5 minutes ahead of theirs).
    pub max_future_ms: i64,
    /// How long ago a partial's window may start (ms); an older partial is
    /// taken out and counted (`time_past`). Default none: agents bound the
    /// age of readings themselves and may deliver old windows after a long
    /// outage. Windows within 366 days of either end of `i64` are refused
    /// whatever this says.
    pub max_age_ms: Option<i64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 4 * 1024 * 1024,
            max_partials: 10_000,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            max_age_ms: None,
        }
    }
}

impl LimitsConfig {
    /// Checks every value of the section.
    pub fn check(&self, p: &mut Problems) {
        if self.max_payload_bytes == 0 {
            p.bad("limits.max_payload_bytes", "must be > 0");
        }
        if self.max_partials == 0 {
            p.bad("limits.max_partials", "must be > 0");
        }
        if self.max_future_ms < 0 {
            p.bad("limits.max_future_ms", "must be ≥ 0");
        }
        if self.max_age_ms.is_some_and(|a| a <= 0) {
            p.bad("limits.max_age_ms", "must be > 0 when set");
        }
    }
}

/// The MQTT broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host (default `127.0.0.1`).
    pub host: String,
    /// Broker port (default 1883).
    pub port: u16,
    /// Protocol version, `"3.1.1"` (default) or `"5"`.
    pub protocol: Protocol,
    /// MQTT client id (default `tributary-collector`).
    pub client_id: String,
    /// User name to log in with (default none: anonymous).
    pub username: Option<String>,
    /// Password for `username` (default none). Prefer `password_file` or the
    /// environment variable `TRIBUTARY_MQTT_PASSWORD`, which overrides both.
    pub password: Option<Secret>,
    /// File holding the password (default none). Read at every connection
    /// attempt, so a rotated password needs no restart; a missing file is
    /// logged (naming this key) and retried, like a refused login.
    pub password_file: Option<PathBuf>,
    /// TLS to the broker (rustls; default false).
    pub tls: bool,
    /// PEM file of the CA to trust with `tls = true` (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// Keep-alive in seconds (default 30, at least 5).
    pub keep_alive_s: u64,
    /// MQTT 5 only: how long the broker keeps this collector's session, and
    /// queues batches for it, while it is disconnected (seconds, default
    /// 86,400 = 1 day; at least 1).
    pub session_expiry_s: u32,
    /// Batches applied per store transaction at most (default 256). A group
    /// is committed as soon as no further batch is ready, so under load the
    /// batches that arrive while one group commits form the next.
    pub max_group: usize,
    /// Shared-subscription group (default none). When set, the collector
    /// subscribes to `$share/<group>/tributary/v1/agents/+/partials` and the
    /// broker spreads batches over every instance in the group; each
    /// instance needs its own `client_id`.
    pub share_group: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            protocol: Protocol::V311,
            client_id: "tributary-collector".into(),
            username: None,
            password: None,
            password_file: None,
            tls: false,
            ca_file: None,
            keep_alive_s: 30,
            session_expiry_s: 86_400,
            max_group: 256,
            share_group: None,
        }
    }
}

impl MqttConfig {
    /// Where the password comes from: `TRIBUTARY_MQTT_PASSWORD` when set,
    /// else `password_file`, else `password`.
    pub fn password_source(&self) -> Option<Password> {
        if let Ok(p) = std::env::var(MQTT_PASSWORD_ENV) {
            return Some(Password::Value(p));
        }
        match (&self.password_file, &self.password) {
            (Some(f), _) => Some(Password::File(f.clone())),
            (None, Some(p)) => Some(Password::Value(p.0.clone())),
            (None, None) => None,
        }
    }

    /// The ingest settings of this section and `limits`.
    pub fn ingest(&self, limits: &LimitsConfig) -> IngestConfig {
        IngestConfig {
            host: self.host.clone(),
            port: self.port,
            protocol: self.protocol,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: self.password_source(),
            tls: self.tls.then(|| TlsOptions {
                ca_file: self.ca_file.clone(),
            }),
            keep_alive: Duration::from_secs(self.keep_alive_s.max(5)),
            session_expiry_s: self.session_expiry_s,
            max_payload_bytes: limits.max_payload_bytes,
            max_partials: limits.max_partials,
            max_future_ms: limits.max_future_ms,
            max_age_ms: limits.max_age_ms,
            group_batches: self.max_group,
            share_group: self.share_group.clone(),
            ..IngestConfig::default()
        }
    }

    /// Checks every value of the section.
    pub fn check(&self, p: &mut Problems) {
        if self.host.is_empty() {
            p.bad("mqtt.host", "must not be empty");
        }
        if self.client_id.is_empty() {
            p.bad("mqtt.client_id", "must not be empty");
        }
        if self.max_group == 0 {
            p.bad("mqtt.max_group", "must be > 0");
        }
        if self.session_expiry_s == 0 {
            p.bad(
                "mqtt.session_expiry_s",
                "must be > 0 (0 ends the session, and its queued batches, at every disconnect)",
            );
        }
        if let Some(g) = &self.share_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                p.bad(
                    "mqtt.share_group",
                    format!("`{g}` must be non-empty without `/`, `+` or `#`"),
                );
            }
        }
        if matches!(&self.username, Some(u) if u.is_empty()) {
            p.bad("mqtt.username", "must not be empty when set");
        }
        if self.password.is_some() && self.password_file.is_some() {
            p.bad(
                "mqtt.password_file",
                "set either password or password_file, not both",
            );
        }
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            p.bad("mqtt.username", "required with password or password_file");
        }
        if let Some(f) = &self.ca_file {
            if !self.tls {
                p.bad("mqtt.ca_file", "only used with tls = true");
            } else if let Err(e) = std::fs::read(f) {
                p.bad("mqtt.ca_file", format!("cannot read {}: {e}", f.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_mqtt_section_names_its_keys() {
        use crate::ingest::{Password, Protocol};
        let c = Config::from_toml(
            "[mqtt]\nprotocol = \"5\"\nusername = \"collector\"\npassword = \"s3cret\"\nsession_expiry_s = 60\n",
        )
        .unwrap();
        assert_eq!(c.mqtt.protocol, Protocol::V5);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug shows no password"
        );
        let i = c.mqtt.ingest(&c.limits);
        assert_eq!(
            (i.protocol, i.username.as_deref(), i.session_expiry_s),
            (Protocol::V5, Some("collector"), 60)
        );
        if std::env::var(MQTT_PASSWORD_ENV).is_err() {
            assert_eq!(i.password, Some(Password::Value("s3cret".into())));
            assert!(!format!("{i:?}").contains("s3cret"));
        }
        assert_eq!(Config::from_toml("").unwrap().mqtt.protocol, Protocol::V311);
        let e = Config::from_toml("[mqtt]\nprotocol = \"4\"\n").unwrap_err();
        assert!(e.to_string().contains("mqtt.protocol"), "{e}");
        let e = Config::from_toml(
            "[mqtt]\npassword = \"x\"\npassword_file = \"/p\"\nsession_expiry_s = 0\nca_file = \"/ca.pem\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "mqtt.username",
            "mqtt.password_file",
            "mqtt.session_expiry_s",
            "mqtt.ca_file",
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
