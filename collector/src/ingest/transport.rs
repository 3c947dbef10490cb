//! The MQTT transport of ingest: one small interface over rumqttc's MQTT
//! 3.1.1 client and its MQTT 5 client, so the ingest pipeline (check, group,
//! commit, ack, confirm) exists once whatever the protocol.
//!
//! Both flavours connect with a persistent session (3.1.1: clean session
//! off; 5: clean start off and a session expiry interval) and manual acks.
//! A received message keeps only its packet id and QoS for its PUBACK, not
//! the whole packet, so a group waiting for its commit pins no read buffers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::{TlsConfiguration, Transport};

use super::config::IngestConfig;

/// Which MQTT protocol version the collector speaks to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (the default; what the agents and the embedded broker of
    /// the demo speak).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5 (shared subscriptions as the standard defines them, session
    /// expiry, reason codes).
    #[serde(rename = "5")]
    V5,
}

impl Protocol {
    /// The version as written in the config (`"3.1.1"` or `"5"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// Why the transport could not be set up (before any connection attempt).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// The CA file is unusable, or rustls refused the configuration.
    #[error(transparent)]
    Tls(#[from] tributary_runtime::tls::TlsError),
    /// The password could not be read.
    #[error("{0}")]
    Password(String),
}

/// How a connection attempt or a connection failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The broker answered CONNECT with a refusal (its reason code).
    Refused {
        /// The reason, as the protocol names it.
        code: String,
        /// Whether the reason is about credentials or authorization.
        auth: bool,
    },
    /// Network, TLS or protocol trouble.
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { code, auth: true } => write!(
                f,
                "the broker refused the login ({code}): check [mqtt] username and password (or password_file, TRIBUTARY_MQTT_PASSWORD) and the broker's ACL"
            ),
            Failure::Refused { code, auth: false } => {
                write!(f, "the broker refused the connection ({code})")
            }
            Failure::Failed(e) => f.write_str(e),
        }
    }
}

/// What a received PUBLISH needs for its PUBACK: its packet id, and the
/// connection it came on (a PUBACK only means something on that one, see
/// [`Outbox::flush`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckToken {
    pkid: u16,
    qos: u8,
    /// [`Connection::epoch`] when it arrived.
    epoch: u32,
}

/// A received PUBLISH.
#[derive(Debug)]
pub(crate) struct Message {
    /// The topic (`None` when it is not UTF-8).
    pub(crate) topic: Option<String>,
    /// The payload.
    pub(crate) payload: Bytes,
    /// For the PUBACK.
    pub(crate) ack: AckToken,
}

/// What the connection produced.
#[derive(Debug)]
pub(crate) enum Event {
    /// CONNACK accepted.
    Connected {
        /// Whether the broker resumed the persistent session.
        session_present: bool,
    },
    /// SUBACK: the filters refused (empty when all were granted).
    Subscribed {
        /// Reason codes of refused filters.
        refused: Vec<String>,
    },
    /// A message.
    Message(Message),
    /// The broker sent DISCONNECT (MQTT 5) with this reason.
    Disconnected(String),
    /// Anything else (pings, acks of our publishes, outgoing packets).
    Other,
}

/// The sending half.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The receiving half (drives the connection; poll it continually).
#[derive(Debug)]
pub(crate) struct Connection {
    link: Link,
    /// Counts the broker's CONNACKs and the failures: which connection a
    /// message came on.
    epoch: u32,
}

/// The event loop of either protocol.
enum Link {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::V311(_) => f.write_str("Link::V311"),
            Link::V5(_) => f.write_str("Link::V5"),
        }
    }
}

fn tls_config(tls: &TlsOptions) -> Result<rustls::ClientConfig, SetupError> {
    Ok(tributary_runtime::tls::client_config(
        tls.ca_file.as_deref(),
        "mqtt.ca_file",
    )?)
}

/// The largest MQTT packet: the largest remaining length (268,435,455)
/// plus the fixed header (at most 5 bytes).
const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// MQTT 5 receive maximum for groups of `group` batches.
fn receive_maximum(group: usize) -> u16 {
    u16::try_from(group.saturating_mul(2).clamp(16, 65_535)).unwrap_or(u16::MAX)
}

/// The user name and password to log in with, the password read now.
fn credentials(cfg: &IngestConfig) -> Result<Option<(String, String)>, SetupError> {
    let Some(user) = &cfg.username else {
        return Ok(None);
    };
    let password = match &cfg.password {
        Some(p) => p
            .resolve("mqtt.password_file")
            .map_err(SetupError::Password)?,
        None => String::new(),
    };
    Ok(Some((user.clone(), password)))
}

/// Builds the client for `cfg.protocol`; nothing connects until the
/// connection is polled.
pub(crate) fn client(cfg: &IngestConfig) -> Result<(Client, Connection), SetupError> {
    let transport = match &cfg.tls {
        Some(tls) => Some(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(tls)?),
        ))),
        None => None,
    };
    let login = credentials(cfg)?;
    // Accept every packet MQTT allows: the pipeline refuses (and counts) a
    // payload over `max_payload_bytes`. A smaller client limit would be a
    // poison message: MQTT 3.1.1 has no way to skip a packet, so rumqttc
    // drops the connection and the broker redelivers it forever; an MQTT 5
    // broker would drop it silently. Bound the size at the broker instead
    // (mosquitto: `max_packet_size`), so huge payloads never travel.
    let max_packet = MQTT_MAX_PACKET;
    let keep_alive = cfg.keep_alive.max(Duration::from_secs(5));
    // Room for a few groups of requests (a PUBACK per batch and a
    // confirmation per agent); more waits in the ingest task's `Outbox`.
    let cap = cfg.group_batches.saturating_mul(4).max(1024);
    Ok(match cfg.protocol {
        Protocol::V311 => {
            let mut o =
                rumqttc::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_clean_session(false);
            o.set_manual_acks(true);
            o.set_keep_alive(keep_alive);
            o.set_max_packet_size(max_packet, 64 * 1024);
            if let Some((u, p)) = login {
                o.set_credentials(u, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, e) = rumqttc::AsyncClient::new(o, cap);
            (Client::V311(c), Connection::new(Link::V311(Box::new(e))))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(cfg.session_expiry_s));
            o.set_manual_acks(true);
            o.set_keep_alive(keep_alive);
            o.set_max_packet_size(Some(u32::try_from(max_packet).unwrap_or(u32::MAX)));
            // Flow control: the broker sends at most this many batches ahead
            // of their PUBACKs (two groups, so one fills while one commits).
            o.set_receive_maximum(Some(receive_maximum(cfg.group_batches)));
            if let Some((u, p)) = login {
                o.set_credentials(u, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, e) = v5::AsyncClient::new(o, cap);
            (Client::V5(c), Connection::new(Link::V5(Box::new(e))))
        }
    })
}

impl Connection {
    fn new(link: Link) -> Self {
        Connection { link, epoch: 0 }
    }

    /// The current connection's number (it moves on at each CONNACK and
    /// each failure).
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Re-reads the password (a `password_file` may have changed) before the
    /// next connection attempt.
    pub(crate) fn refresh_credentials(&mut self, cfg: &IngestConfig) -> Result<(), SetupError> {
        if let Some((u, p)) = credentials(cfg)? {
            match &mut self.link {
                Link::V311(e) => {
                    e.mqtt_options.set_credentials(u, p);
                }
                Link::V5(e) => {
                    e.options.set_credentials(u, p);
                }
            }
        }
        Ok(())
    }

    /// The next event; an error means the connection is down (polling again
    /// reconnects).
    pub(crate) async fn poll(&mut self) -> Result<Event, Failure> {
        let ev = self.poll_link().await;
        // A new epoch as soon as the connection is down (rumqttc has just
        // dropped the PUBACKs in its queue; those still in ingest's outbox,
        // and those of a group that lands before the reconnect, must not
        // take their place) and again when one is up.
        if matches!(ev, Ok(Event::Connected { .. }) | Err(_)) {
            self.epoch = self.epoch.wrapping_add(1);
        }
        ev
    }

    /// [`Connection::poll`] of the link.
    async fn poll_link(&mut self) -> Result<Event, Failure> {
        let epoch = self.epoch;
        match &mut self.link {
            Link::V311(e) => {
                use rumqttc::{ConnectReturnCode as Code, ConnectionError, Event as E, Packet};
                match e.poll().await {
                    Ok(E::Incoming(Packet::ConnAck(c))) => Ok(Event::Connected {
                        session_present: c.session_present,
                    }),
                    Ok(E::Incoming(Packet::SubAck(s))) => Ok(Event::Subscribed {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    }),
                    Ok(E::Incoming(Packet::Publish(p))) => Ok(Event::Message(Message {
                        topic: Some(p.topic),
                        payload: p.payload,
                        ack: AckToken {
                            pkid: p.pkid,
                            qos: p.qos as u8,
                            epoch,
                        },
                    })),
                    Ok(_) => Ok(Event::Other),
                    Err(ConnectionError::ConnectionRefused(code)) => Err(Failure::Refused {
                        auth: matches!(code, Code::BadUserNamePassword | Code::NotAuthorized),
                        code: format!("{code:?}"),
                    }),
                    Err(e) => Err(Failure::Failed(e.to_string())),
                }
            }
            Link::V5(e) => {
                use v5::mqttbytes::v5::{ConnectReturnCode as Code, Packet, SubscribeReasonCode};
                use v5::{ConnectionError, Event as E};
                match e.poll().await {
                    Ok(E::Incoming(Packet::ConnAck(c))) => Ok(Event::Connected {
                        session_present: c.session_present,
                    }),
                    Ok(E::Incoming(Packet::SubAck(s))) => Ok(Event::Subscribed {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    }),
                    Ok(E::Incoming(Packet::Publish(p))) => Ok(Event::Message(Message {
                        topic: String::from_utf8(p.topic.to_vec()).ok(),
                        payload: p.payload,
                        ack: AckToken {
                            pkid: p.pkid,
                            qos: p.qos as u8,
                            epoch,
                        },
                    })),
                    Ok(E::Incoming(Packet::Disconnect(d))) => {
                        Ok(Event::Disconnected(format!("{:?}", d.reason_code)))
                    }
                    Ok(_) => Ok(Event::Other),
                    Err(ConnectionError::ConnectionRefused(code)) => Err(Failure::Refused {
                        auth: matches!(
                            code,
                            Code::BadUserNamePassword
                                | Code::NotAuthorized
                                | Code::BadAuthenticationMethod
                                | Code::Banned
                        ),
                        code: format!("{code:?}"),
                    }),
                    Err(e) => Err(Failure::Failed(e.to_string())),
                }
            }
        }
    }
}

fn qos_v311(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        2 => rumqttc::QoS::ExactlyOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

fn qos_v5(q: u8) -> v5::mqttbytes::QoS {
    match q {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        2 => v5::mqttbytes::QoS::ExactlyOnce,
        _ => v5::mqttbytes::QoS::AtLeastOnce,
    }
}

/// A request for the broker that waits in the [`Outbox`].
#[derive(Debug)]
pub(crate) enum Out {
    /// The PUBACK of a received message.
    Ack(AckToken),
    /// A QoS 1 publication (a confirmation to an agent).
    Publish {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
}

/// Requests waiting for room in the client's request queue.
///
/// The ingest task is the only one that polls the connection, so it must
/// never wait for room in the request queue: the queue drains only while
/// the connection is polled, and rumqttc reads a whole burst of incoming
/// messages for every request it sends, so under load PUBACKs pile up
/// faster than they leave and an awaiting sender would deadlock (measured
/// on mosquitto: ingest stopped for good after 2,404, and in another run
/// 4,479, of a 5,000-batch burst). Requests wait
/// here instead — a PUBACK is four bytes — and [`Outbox::flush`] moves them
/// on, in order, before each poll.
#[derive(Debug, Default)]
pub(crate) struct Outbox(std::collections::VecDeque<Out>);

impl Outbox {
    /// Queues `out` behind what waits already.
    pub(crate) fn push(&mut self, out: Out) {
        self.0.push_back(out);
    }

    /// Requests waiting.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves waiting requests into the client's queue while it has room,
    /// dropping the PUBACKs of messages that came on an earlier connection
    /// than `epoch` (see [`Outbox::send`]).
    pub(crate) fn flush(&mut self, client: &Client, epoch: u32) {
        let stale = self.send(epoch, |out| client.try_send(out).is_ok());
        if stale > 0 {
            tracing::debug!(
                stale,
                "PUBACKs of messages from an earlier connection dropped; the broker redelivers those"
            );
        }
    }

    /// Hands waiting requests to `send` in order until it says no (no
    /// room), skipping the PUBACKs of messages received on a connection
    /// other than `epoch`; answers how many it skipped. A packet id names a
    /// message only on its connection: after a reconnect the broker
    /// redelivers the unacknowledged ones (acknowledged again after their
    /// commit, as duplicates), and, its session lost or once an id is
    /// freed, gives the id to another message — which a stale PUBACK would
    /// acknowledge before it is committed. rumqttc drops the PUBACKs still
    /// in its own queue at a disconnect for the same reason.
    fn send(&mut self, epoch: u32, mut send: impl FnMut(&Out) -> bool) -> usize {
        let mut stale = 0;
        while let Some(out) = self.0.front() {
            if matches!(out, Out::Ack(t) if t.epoch != epoch) {
                stale += 1;
            } else if !send(out) {
                break;
            }
            self.0.pop_front();
        }
        stale
    }
}

impl Client {
    /// Subscribes to `filter` at QoS 1 (queued; the SUBACK arrives as an
    /// event).
    pub(crate) fn subscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues `out` without waiting; an error means no room (or no
    /// connection task), and `out` is left to the caller.
    fn try_send(&self, out: &Out) -> Result<(), String> {
        match (self, out) {
            (Client::V311(c), Out::Ack(t)) => {
                let mut p = rumqttc::Publish::new("", qos_v311(t.qos), Vec::new());
                p.pkid = t.pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            (Client::V5(c), Out::Ack(t)) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", qos_v5(t.qos), Bytes::new(), None);
                p.pkid = t.pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            (Client::V311(c), Out::Publish { topic, payload }) => c
                .try_publish(
                    topic.as_str(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .map_err(|e| e.to_string()),
            (Client::V5(c), Out::Publish { topic, payload }) => c
                .try_publish(
                    topic.as_str(),
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues DISCONNECT; false when the request queue has no room.
    pub(crate) fn try_disconnect(&self) -> bool {
        match self {
            Client::V311(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(pkid: u16, epoch: u32) -> Out {
        Out::Ack(AckToken {
            pkid,
            qos: 1,
            epoch,
        })
    }

    /// What `out` is, for comparing.
    fn name(out: &Out) -> String {
        match out {
            Out::Ack(t) => format!("ack {} of {}", t.pkid, t.epoch),
            Out::Publish { topic, .. } => format!("publish {topic}"),
        }
    }

    #[tokio::test]
    async fn the_epoch_moves_on_when_a_connection_fails() {
        // A port nothing listens on: every attempt fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let cfg = IngestConfig {
            port,
            ..IngestConfig::default()
        };
        let Ok((_client, mut conn)) = client(&cfg) else {
            panic!("a client for {cfg:?}");
        };
        assert_eq!(conn.epoch(), 0);
        assert!(conn.poll().await.is_err());
        assert_eq!(conn.epoch(), 1, "a PUBACK of before the failure is stale");
        assert!(conn.poll().await.is_err());
        assert_eq!(conn.epoch(), 2);
    }

    #[test]
    fn pubacks_of_an_earlier_connection_are_never_sent() {
        let mut outbox = Outbox::default();
        for out in [
            ack(1, 1),
            ack(2, 1),
            Out::Publish {
                topic: "confirm".into(),
                payload: vec![1],
            },
            ack(1, 2),
            ack(3, 1),
            ack(4, 2),
        ] {
            outbox.push(out);
        }
        // Room for two requests: a stale PUBACK takes none and is gone.
        let mut sent = Vec::new();
        let stale = outbox.send(2, |o| {
            sent.push(name(o));
            sent.len() < 2
        });
        assert_eq!(sent, ["publish confirm", "ack 1 of 2"]);
        assert_eq!(stale, 2);
        // The one refused for room is still first; the rest in order.
        let mut rest = Vec::new();
        let stale = outbox.send(2, |o| {
            rest.push(name(o));
            true
        });
        assert_eq!(rest, ["ack 1 of 2", "ack 4 of 2"]);
        assert_eq!(stale, 1);
        assert!(outbox.is_empty());
    }
}
