//! The embedded MQTT broker (`rumqttd`) of the self-contained mode: the demo
//! and single-machine trials run agents and collector against it, so nothing
//! has to be installed. Production runs an external broker (mosquitto, EMQX,
//! …; see `config/`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the embedded broker did not come up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Its thread could not be spawned.
    #[error("cannot start the embedded broker thread: {0}")]
    Spawn(std::io::Error),
    /// It did not accept connections in time (port taken?).
    #[error("the embedded broker did not listen on {0} within 10 s (is the port taken?)")]
    NotListening(SocketAddr),
}

/// Limits of the embedded broker.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// Largest publish payload accepted (bytes).
    pub max_payload_bytes: usize,
    /// QoS 1 messages in flight per connection.
    pub max_inflight: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_payload_bytes: 4 * 1024 * 1024,
            max_inflight: 100,
        }
    }
}

/// Tracing directives for a process that runs the embedded broker. rumqttd
/// logs ordinary disconnects as ERRORs: "router-drop" for each client's
/// DISCONNECT in its connection module, "no-connection … already gone" in
/// its router when a client leaves during shutdown; `tracing`'s filter
/// cannot single those out, so both modules are off (a client whose
/// connection fails logs that itself) and the rest of rumqttd is kept to
/// warnings.
pub const LOG_DIRECTIVES: &str =
    "rumqttd=warn,rumqttd::server::broker=off,rumqttd::router::routing=off";

/// Logs of a program that may run the embedded broker go to stderr,
/// filtered by `RUST_LOG` or else by `level` plus [`LOG_DIRECTIVES`].
pub fn init_logging(level: &str) {
    tributary_runtime::logging::init(&format!("{level},{LOG_DIRECTIVES}"));
}

/// A running embedded broker. It lives until the process exits (`rumqttd`
/// has no stop); start it once per process.
#[derive(Debug)]
pub struct Embedded {
    addr: SocketAddr,
}

impl Embedded {
    /// Starts an MQTT 3.1.1 and an MQTT 5 listener — on `v4` and `v5` —
    /// and waits until the 3.1.1 one accepts connections.
    pub fn start(
        v4: SocketAddr,
        v5: Option<SocketAddr>,
        opts: EmbeddedOptions,
    ) -> Result<Embedded, BrokerError> {
        let connections = ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: opts.max_payload_bytes,
            max_inflight_count: opts.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = |name: &str, listen| ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: connections.clone(),
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_000,
                max_outgoing_packet_count: 200,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..RouterConfig::default()
            },
            v4: Some(HashMap::from([("1".to_string(), server("v4", v4))])),
            v5: v5.map(|a| HashMap::from([("1".to_string(), server("v5", a))])),
            ..Config::default()
        };
        let mut broker = Broker::new(config);
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Spawn)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_connect(v4) {
            if Instant::now() > deadline {
                return Err(BrokerError::NotListening(v4));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Embedded { addr: v4 })
    }

    /// The MQTT 3.1.1 address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Whether an MQTT 3.1.1 server at `addr` accepts a connection: a whole
/// CONNECT, its CONNACK, then DISCONNECT — a bare TCP probe that hangs up
/// mid-handshake is logged by the broker as an error.
fn answers_connect(addr: SocketAddr) -> bool {
    use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Disconnect, Packet};
    const MAX: usize = 1024;
    let timeout = Duration::from_millis(200);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let mut out = BytesMut::new();
    if Connect::new("tributary-probe").write(&mut out).is_err() {
        return false;
    }
    // A CONNACK is 4 bytes.
    let mut connack = [0u8; 4];
    let accepted = s.set_read_timeout(Some(timeout)).is_ok()
        && s.write_all(&out).is_ok()
        && s.read_exact(&mut connack).is_ok()
        && matches!(
            Packet::read(&mut BytesMut::from(&connack[..]), MAX),
            Ok(Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }))
        );
    out.clear();
    if Disconnect.write(&mut out).is_ok() {
        let _ = s.write_all(&out);
    }
    accepted
}
