//! The uplink: batches of partials to the upstream broker, deleted only on
//! the collector's end-to-end confirmation (DESIGN §4, §5).
//!
//! # Design
//! The protocol state — what is held, what is due, what a Confirm releases —
//! is [`state::UplinkState`], a synchronous struct; this module is the thin
//! async shell around rumqttc. Batches flow one way: the engine forms them
//! and hands them over on a channel (see `crate::engine`'s `outbound`); the
//! uplink publishes them with QoS 1 on `topic::partials(agent)`, and when a
//! [`Confirm`] on `topic::acks(agent)` releases held batches it sends their
//! sequences to the engine ([`Input::Confirmed`]), which deletes them and
//! forms more. Only a Confirm of this database's incarnation releases
//! anything: one of another incarnation of the agent id (the database this
//! one replaced, or another gateway misconfigured with the same id) names
//! sequences of other batches, and is logged and ignored. The uplink learns
//! the incarnation from the batches it is handed (the store may open only
//! after the uplink starts: a full disk or a corrupt file is retried). It
//! tells the engine whether it is connected (a `watch`), so
//! that nothing new is frozen into batches during an outage.
//!
//! What goes on the wire is counted as it is sent: the bytes of every batch
//! PUBLISH packet as rumqttc encodes it (MQTT 3.1.1, QoS 1: fixed header,
//! topic, packet id, payload; [`publish_packet_len`]), first sends and
//! resends, in `tributary_agent_uplink_publish_bytes_total`.
//!
//! Connection errors back off exponentially from `reconnect_min_ms` to
//! `reconnect_max_ms` with full jitter. Publishing never blocks the event
//! loop (`try_publish`): what could not be queued stays due and goes out at
//! the next tick.
//!
//! - [`config`] — `[uplink]`.
//! - [`state`] — the protocol state.

pub mod config;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tributary_core::batch::Confirm;
use tributary_core::{topic, Incarnation};
use tributary_runtime::tls::TlsError;

use crate::engine::Input;
use crate::metrics::Metrics;
use crate::mqtt_client;
use crate::store::FormedBatch;
pub use config::UplinkConfig;
use state::{Publication, UplinkState};

/// How often due batches are looked for.
const TICK: Duration = Duration::from_millis(200);

/// The bytes of the MQTT PUBLISH packet (QoS 1, MQTT 3.1.1) that carries
/// `payload` on `topic`, as rumqttc writes it to the socket (TCP/IP and TLS
/// framing not included).
///
/// Computed, not written: the fixed header byte, the remaining length as a
/// variable byte integer, then the topic's length (2) and bytes, the packet
/// id (2: QoS 1 packets carry one) and the payload (MQTT 3.1.1 §2.2, §3.3).
pub fn publish_packet_len(topic: &str, payload: &[u8]) -> usize {
    let remaining = 2 + topic.len() + 2 + payload.len();
    1 + varint_len(remaining) + remaining
}

/// The bytes of `n` as an MQTT variable byte integer (7 bits a byte).
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// TLS could not be set up (e.g. `uplink.ca_file`).
    #[error("uplink: {0}")]
    Tls(#[from] TlsError),
}

/// The uplink's ends of its channels to the engine.
#[derive(Debug)]
pub(crate) struct Channels {
    /// Batches the engine formed.
    pub(crate) batches: mpsc::UnboundedReceiver<FormedBatch>,
    /// Where confirmations go.
    pub(crate) engine: mpsc::Sender<Input>,
    /// Whether the uplink is connected.
    pub(crate) connected: watch::Sender<bool>,
}

/// The uplink task.
pub(crate) struct Uplink {
    options: MqttOptions,
    /// Broker host and port, for logs.
    broker: (String, u16),
    /// Capacity of rumqttc's request queue.
    queue: usize,
    agent: String,
    /// The incarnation of the batches handed over (none before the first).
    incarnation: Option<Incarnation>,
    topic: String,
    acks: String,
    reconnect_min: Duration,
    reconnect_max: Duration,
    state: UplinkState,
    ch: Channels,
    metrics: Arc<Metrics>,
}

impl Uplink {
    /// The uplink of agent `agent_id` as `[uplink]` sets it up; TLS
    /// problems are reported here, at start.
    pub(crate) fn new(
        agent_id: &str,
        cfg: &UplinkConfig,
        ch: Channels,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UplinkError> {
        let mut options = mqtt_client::options(&cfg.endpoint(agent_id))?;
        options.set_clean_session(true);
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        Ok(Uplink {
            options,
            broker: (cfg.host.clone(), cfg.port),
            queue: cfg.max_in_flight * 2 + 16,
            agent: agent_id.to_string(),
            incarnation: None,
            topic: topic::partials(agent_id),
            acks: topic::acks(agent_id),
            reconnect_min: Duration::from_millis(cfg.reconnect_min_ms),
            reconnect_max: Duration::from_millis(cfg.reconnect_max_ms),
            state: UplinkState::new(Duration::from_millis(cfg.confirm_timeout_ms)),
            ch,
            metrics,
        })
    }

    /// Runs until `shutdown` turns true (or the engine is gone).
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (client, mut events) = AsyncClient::new(self.options.clone(), self.queue);
        let mut backoff = self.reconnect_min;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(b) = self.ch.batches.recv() => {
                    self.incarnation = Some(b.incarnation);
                    self.state.hold(b.seq, b.payload);
                    self.publish_due(&client);
                }
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = self.reconnect_min;
                        self.on_connect(&client);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == self.acks => {
                        if !self.on_confirm(&p.payload).await {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.on_lost(&e);
                        let jitter = fastrand::u64(0..=backoff.as_millis() as u64);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(jitter)) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(self.reconnect_max);
                    }
                },
                _ = tick.tick() => self.publish_due(&client),
            }
        }
        self.set_connected(false);
        let _ = client.try_disconnect();
    }

    fn set_connected(&mut self, up: bool) {
        if up {
            self.state.connected();
        } else {
            self.state.disconnected();
        }
        self.metrics.uplink_up.set(i64::from(up));
        self.ch.connected.send_replace(up);
    }

    fn on_connect(&mut self, client: &AsyncClient) {
        self.metrics.uplink_connects.inc();
        tracing::info!(host = %self.broker.0, port = self.broker.1, "uplink connected");
        if let Err(e) = client.try_subscribe(self.acks.clone(), QoS::AtLeastOnce) {
            tracing::warn!(error = %e, "cannot subscribe to confirmations");
        }
        self.set_connected(true);
        self.publish_due(client);
    }

    fn on_lost(&mut self, e: &rumqttc::ConnectionError) {
        if self.state.is_connected() {
            tracing::warn!(error = %e, "uplink connection lost");
        } else {
            tracing::debug!(error = %e, "uplink connect failed");
        }
        self.set_connected(false);
    }

    /// A Confirm arrived: tell the engine what it released. False when the
    /// engine is gone.
    async fn on_confirm(&mut self, payload: &[u8]) -> bool {
        let seqs = match Confirm::decode(payload) {
            Ok(c) if c.agent == self.agent && Some(c.incarnation) == self.incarnation => {
                self.state.confirm(c.seqs)
            }
            Ok(c) if c.agent == self.agent => {
                tracing::warn!(
                    incarnation = %c.incarnation,
                    ours = ?self.incarnation.map(|i| i.to_string()),
                    "confirmation for another incarnation of this agent id ignored \
                     (its previous database, or another gateway with the same agent_id)"
                );
                return true;
            }
            Ok(c) => {
                tracing::warn!(agent = c.agent, "confirmation for another agent ignored");
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed confirmation ignored");
                return true;
            }
        };
        seqs.is_empty() || self.ch.engine.send(Input::Confirmed(seqs)).await.is_ok()
    }

    /// Publishes every due batch, oldest first, until rumqttc's queue is full.
    fn publish_due(&mut self, client: &AsyncClient) {
        let now = Instant::now();
        for seq in self.state.due(now) {
            let Some(payload) = self.state.payload(seq) else {
                continue;
            };
            if let Err(e) = client.try_publish(
                self.topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            ) {
                tracing::debug!(seq, error = %e, "publish queue full; will resend");
                return;
            }
            let wire = publish_packet_len(&self.topic, payload);
            self.metrics.uplink_publish_bytes.inc_by(wire as u64);
            let counter = match self.state.published(seq, now) {
                Some(Publication::First) => &self.metrics.batches_sent,
                Some(Publication::Again) => &self.metrics.batches_resent,
                None => continue,
            };
            counter.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MQTT 3.1.1 §3.3: fixed header byte, remaining length (1 byte below
    /// 128, 2 below 16 384), topic length (2) and topic, packet id (2),
    /// payload.
    #[test]
    fn publish_packets_are_counted_as_mqtt_frames_them() {
        assert_eq!(publish_packet_len("a/b", &[0; 10]), 1 + 1 + 2 + 3 + 2 + 10);
        assert_eq!(
            publish_packet_len("a/b", &[0; 120]),
            1 + 1 + 2 + 3 + 2 + 120
        );
        assert_eq!(
            publish_packet_len("a/b", &[0; 121]),
            1 + 2 + 2 + 3 + 2 + 121
        );
        let topic = topic::partials("gw-0");
        let mut buf = bytes::BytesMut::new();
        let mut p = rumqttc::Publish::new(&topic, QoS::AtLeastOnce, vec![7; 5_000]);
        p.pkid = 65_535;
        let written = p.write(&mut buf).unwrap();
        assert_eq!(buf.len(), written);
        assert_eq!(publish_packet_len(&topic, &[7; 5_000]), buf.len());
        // Each width of the remaining length, at both its ends, as rumqttc
        // writes it.
        for payload in [0, 120, 121, 16_376, 16_377, 2_097_144, 2_097_145, 3_000_000] {
            let mut buf = bytes::BytesMut::new();
            let mut p = rumqttc::Publish::new("a/b", QoS::AtLeastOnce, vec![0; payload]);
            p.pkid = 1;
            p.write(&mut buf).unwrap();
            assert_eq!(
                publish_packet_len("a/b", &vec![0; payload]),
                buf.len(),
                "{payload}"
            );
        }
    }
}
