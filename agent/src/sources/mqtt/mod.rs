//! Devices on the local broker: JSON readings ([`crate::link::json`]) on
//! `tributary/v1/devices/{device}/readings` and binary link frames (Hello,
//! Summary, Reading) on `…/{device}/summaries`.
//!
//! The subscription uses a persistent session and manual acknowledgements:
//! a message is PUBACKed only after the engine committed its effect, so a
//! crash before the commit makes the broker redeliver it. Bad input is
//! acknowledged (it will never become good), logged and counted.
//!
//! # Broker queue limits
//! mosquitto queues QoS 1 messages per subscriber beyond the in-flight ones
//! (`max_inflight_messages`, default 20) up to `max_queued_messages` (default
//! 1000) and silently drops the rest ("Outgoing messages are being dropped
//! for client …") after having PUBACKed them to the device. This source
//! PUBACKs only after the engine's group commit, so the broker must be able
//! to hold what devices publish during a commit interval plus a commit and
//! any pause (a checkpoint, a disk stall); with mosquitto's defaults, JSON
//! traffic near the agent's capacity overflows that queue (`tributary-agent
//! bench --paths mqtt --broker default --mqtt-rate 1000000`: 0.55 % of
//! readings lost). `config/mosquitto.conf` documents the limits a gateway's
//! local broker needs (none lost in the same run with them). Committing
//! early whenever the in-flight window fills was tried and made matters
//! worse (an fsync per few messages lowers the agent's capacity).
//!
//! # Oversized and malformed messages
//! The client accepts every packet size MQTT allows (256 MiB), so a payload
//! over `limits.max_payload_bytes` arrives, is refused, counted
//! (`oversized`) and PUBACKed in order like any bad input, and the messages
//! behind it flow. A client limit instead would be a poison message: MQTT
//! 3.1.1 cannot skip a packet, so the client drops the connection and the
//! broker redelivers the message at every reconnect, for ever. The real
//! bound on the memory one message takes is therefore the broker's: set
//! mosquitto's `max_packet_size` (`config/mosquitto.conf`) so huge
//! payloads never reach the agent.
//!
//! PUBACKs go out in the order the messages arrived, as MQTT 3.1.1 §4.6
//! requires (brokers such as rumqttd drop a client that acks out of order):
//! one task awaits each message's commit in arrival order and acks it, so
//! a refused message is acked only after the good ones before it.
//!
//! A message waiting for its commit keeps only what its PUBACK needs (packet
//! id and QoS), not the payload: holding the `Publish` kept rumqttc's read
//! buffers alive and, with thousands of messages awaiting their ack under
//! overload, grew the process past 1 GiB (and slowed it, so the broker's
//! queue overflowed more: 5.9–21 % lost at 1 M readings/s before, 0.55 %
//! after). `tributary_agent_local_mqtt_unacked` shows how many wait.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::frame::{FrameDecoder, MAX_FRAME};
use tributary_core::topic;
use tributary_runtime::now_ms;
use tributary_runtime::tls::TlsError;

use crate::engine::Input;
use crate::link::json;
use crate::metrics::{Metrics, Reject};
use crate::mqtt_client;
pub use config::LocalMqttConfig;

/// A PUBACK waiting for its message's commit: (what to await, the PUBACK's
/// packet id and QoS).
type PendingAck = (Option<oneshot::Receiver<()>>, rumqttc::Publish);

/// The local-broker source.
pub(crate) struct LocalMqtt {
    options: MqttOptions,
    max_payload: usize,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
}

impl LocalMqtt {
    /// The source of agent `agent_id` as `[local_mqtt]` sets it up, refusing
    /// payloads over `max_payload_bytes` (`limits.max_payload_bytes`); TLS
    /// problems are reported here, at start.
    pub(crate) fn new(
        agent_id: &str,
        cfg: &LocalMqttConfig,
        max_payload_bytes: usize,
        engine: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TlsError> {
        let mut options = mqtt_client::options(&cfg.endpoint(agent_id))?;
        options.set_clean_session(false);
        options.set_manual_acks(true);
        // Accept every packet MQTT allows and refuse by size in `handle`:
        // a smaller client limit made rumqttc drop the connection on an
        // oversized message, which the broker then redelivered forever
        // (66 reconnects and 30 s of stalled readings for one 1 MiB
        // message), and no `oversized` was counted. The bound on memory is
        // the broker's `max_packet_size` (see the module documentation).
        options.set_max_packet_size(mqtt_client::MQTT_MAX_PACKET, 64 * 1024);
        Ok(LocalMqtt {
            options,
            max_payload: max_payload_bytes,
            engine,
            metrics,
        })
    }

    /// Runs until shutdown.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (client, mut events) = AsyncClient::new(self.options.clone(), 256);
        let (acks, in_order) = mpsc::unbounded_channel::<PendingAck>();
        let acker = tokio::spawn(ack_in_order(client.clone(), in_order, self.metrics.clone()));
        let metrics = &self.metrics;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!("local broker connected");
                        metrics.local_connects.inc();
                        metrics.local_subscribed.set(0);
                        let _ = client.try_subscribe(topic::ALL_DEVICES, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                        if !granted {
                            tracing::error!(filter = topic::ALL_DEVICES, codes = ?ack.return_codes,
                                "the local broker refused the subscription: check its ACL for this agent");
                        }
                        metrics.local_subscribed.set(i64::from(granted));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let done = self.handle(&p.topic, &p.payload).await;
                        metrics.local_unacked.inc();
                        // Keep only what the PUBACK needs, not the payload.
                        let mut ack = rumqttc::Publish::new("", p.qos, Vec::<u8>::new());
                        ack.pkid = p.pkid;
                        drop(p);
                        if acks.send((done, ack)).is_err() {
                            break; // the acker ended: the engine is gone
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.local_subscribed.set(0);
                        tracing::warn!(error = %e, "local broker connection failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        // The event loop is no longer polled, so no further ack could reach the
        // broker; what stays unacked is redelivered after a restart.
        acker.abort();
    }

    /// Sends one message's content to the engine; returns what to await before acking.
    async fn handle(&self, t: &str, payload: &[u8]) -> Option<oneshot::Receiver<()>> {
        let metrics = &self.metrics;
        let Some((device, leaf)) = topic::device_topic(t) else {
            tracing::warn!(topic = t, "message outside the device topic tree refused");
            metrics.reject(Reject::BadTopic);
            return None;
        };
        if payload.len() > self.max_payload {
            tracing::warn!(
                device,
                bytes = payload.len(),
                limit = self.max_payload,
                "payload over limits.max_payload_bytes refused"
            );
            metrics.reject(Reject::Oversized);
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let input = match leaf {
            "readings" => match json::parse(payload) {
                Ok(msg) => Input::Json {
                    device: device.to_string(),
                    msg,
                    done: Some(tx),
                },
                Err((reason, why)) => {
                    tracing::warn!(device, ?reason, "JSON readings refused: {why}");
                    metrics.reject(reason);
                    return None;
                }
            },
            "summaries" => Input::Link {
                link: format!("mqtt:{device}"),
                frames: self.frames(device, payload)?,
                reply: None,
                fixed_offset: None,
                done: Some(tx),
            },
            _ => {
                tracing::warn!(topic = t, "unknown device topic leaf refused");
                metrics.reject(Reject::BadTopic);
                return None;
            }
        };
        self.engine.send(input).await.ok()?;
        Some(rx)
    }

    /// The link frames of a `summaries` payload (one or more COBS frames;
    /// the last delimiter may be left out); none if not one decodes.
    fn frames(
        &self,
        device: &str,
        payload: &[u8],
    ) -> Option<Vec<(tributary_core::frame::Message, i64)>> {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut frames = Vec::new();
        let arrival = now_ms();
        let tail = if payload.last() == Some(&0) {
            None
        } else {
            Some(0u8)
        };
        for &b in payload.iter().chain(tail.iter()) {
            match dec.push(b) {
                Some(Ok(m)) => frames.push((m, arrival)),
                Some(Err(e)) => {
                    tracing::warn!(device, error = %e, "corrupt summary frame refused");
                    self.metrics.reject(Reject::CorruptFrame);
                }
                None => {}
            }
        }
        (!frames.is_empty()).then_some(frames)
    }
}

/// Acks each message in arrival order once its commit is done.
async fn ack_in_order(
    client: AsyncClient,
    mut in_order: mpsc::UnboundedReceiver<PendingAck>,
    metrics: Arc<Metrics>,
) {
    while let Some((done, ack)) = in_order.recv().await {
        if let Some(rx) = done {
            if rx.await.is_err() {
                return; // engine gone: no more acks, the broker redelivers
            }
        }
        let _ = client.ack(&ack).await;
        metrics.local_unacked.dec();
    }
}
