//! What the agent's two MQTT clients — the uplink and the local broker
//! source — share: the options of a connection from their config section,
//! with TLS from [`tributary_runtime::tls`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use tributary_runtime::config::Secret;
use tributary_runtime::tls::{self, TlsError};

/// The largest MQTT packet: the largest remaining length (268,435,455)
/// plus the fixed header (at most 5 bytes). A client that accepts less
/// drops its connection on a larger packet, and the broker redelivers it.
pub(crate) const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// One broker connection as a config section describes it.
#[derive(Debug)]
pub(crate) struct Endpoint<'a> {
    /// The MQTT client id.
    pub(crate) client_id: String,
    /// Broker host.
    pub(crate) host: &'a str,
    /// Broker port.
    pub(crate) port: u16,
    /// Login, used when both are set.
    pub(crate) username: Option<&'a str>,
    /// See `username`.
    pub(crate) password: Option<&'a Secret>,
    /// Whether to use TLS.
    pub(crate) tls: bool,
    /// The CA file TLS trusts (else the system roots).
    pub(crate) ca_file: Option<&'a Path>,
    /// The config key of `ca_file`, for errors.
    pub(crate) ca_key: &'static str,
    /// MQTT keep-alive.
    pub(crate) keep_alive: Duration,
}

/// The client options of `e`: id, address, keep-alive, login and TLS.
pub(crate) fn options(e: &Endpoint<'_>) -> Result<MqttOptions, TlsError> {
    let mut o = MqttOptions::new(e.client_id.clone(), e.host, e.port);
    o.set_keep_alive(e.keep_alive);
    if let (Some(user), Some(pass)) = (e.username, e.password) {
        o.set_credentials(user, pass.0.clone());
    }
    if e.tls {
        let cfg = tls::client_config(e.ca_file, e.ca_key)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(cfg),
        )));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use crate::sources::mqtt::LocalMqttConfig;
    use crate::uplink::UplinkConfig;

    use super::*;

    #[test]
    fn both_clients_build_tls_from_their_own_section() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let uplink = UplinkConfig {
            tls: true,
            ca_file: Some(missing.clone()),
            ..UplinkConfig::default()
        };
        let e = options(&uplink.endpoint("gw-1")).unwrap_err();
        assert!(e.to_string().starts_with("uplink.ca_file "), "{e}");
        let local = LocalMqttConfig {
            tls: true,
            ca_file: Some(missing),
            ..LocalMqttConfig::default()
        };
        let e = options(&local.endpoint("gw-1")).unwrap_err();
        assert!(e.to_string().starts_with("local_mqtt.ca_file "), "{e}");
        // With the system roots, TLS is set up.
        let o = options(
            &LocalMqttConfig {
                ca_file: None,
                ..local
            }
            .endpoint("gw-1"),
        )
        .unwrap();
        assert!(matches!(o.transport(), Transport::Tls(_)));
        assert_eq!(o.client_id(), "tributary-agent-gw-1-local");
        let o = options(&UplinkConfig::default().endpoint("gw-1")).unwrap();
        assert!(matches!(o.transport(), Transport::Tcp));
        assert_eq!(o.client_id(), "tributary-agent-gw-1");
    }
}
