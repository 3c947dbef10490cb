//! Devices on the local broker: JSON readings ([`super::json`]) on
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

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::frame::{FrameDecoder, MAX_FRAME};
use tributary_core::topic;

use super::json;
use crate::config::Config;
use crate::engine::{now_ms, Cmd};
use crate::metrics::{Metrics, Reject};

/// Runs the local-broker source until shutdown.
pub(crate) async fn run(
    cfg: Config,
    engine: mpsc::Sender<Cmd>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let l = &cfg.local_mqtt;
    let id = if l.client_id.is_empty() {
        format!("tributary-agent-{}-local", cfg.agent_id)
    } else {
        l.client_id.clone()
    };
    let mut o = MqttOptions::new(id, l.host.clone(), l.port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(30));
    let max = cfg.limits.max_payload_bytes;
    o.set_max_packet_size(max * 2 + 1024, 64 * 1024);
    if let (Some(u), Some(p)) = (&l.username, &l.password) {
        o.set_credentials(u.clone(), p.clone());
    }
    let (client, mut events) = AsyncClient::new(o, 256);
    // The acks, in arrival order: (what to await, the PUBACK's packet id and QoS).
    let (acks, mut in_order) =
        mpsc::unbounded_channel::<(Option<oneshot::Receiver<()>>, rumqttc::Publish)>();
    let acker = {
        let (c, m) = (client.clone(), metrics.clone());
        tokio::spawn(async move {
            while let Some((done, ack)) = in_order.recv().await {
                if let Some(rx) = done {
                    if rx.await.is_err() {
                        return; // engine gone: no more acks, the broker redelivers
                    }
                }
                let _ = c.ack(&ack).await;
                m.local_unacked.fetch_sub(1, Relaxed);
            }
        })
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!("local broker connected");
                    metrics.local_connects.fetch_add(1, Relaxed);
                    metrics.local_subscribed.store(0, Relaxed);
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
                    metrics.local_subscribed.store(u64::from(granted), Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let done = handle(&p.topic, &p.payload, max, &engine, &metrics).await;
                    metrics.local_unacked.fetch_add(1, Relaxed);
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
                    metrics.local_subscribed.store(0, Relaxed);
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
async fn handle(
    t: &str,
    payload: &[u8],
    max: usize,
    engine: &mpsc::Sender<Cmd>,
    metrics: &Metrics,
) -> Option<oneshot::Receiver<()>> {
    let Some((device, leaf)) = topic::device_topic(t) else {
        tracing::warn!(topic = t, "message outside the device topic tree refused");
        metrics.reject(Reject::BadTopic);
        return None;
    };
    if payload.len() > max {
        tracing::warn!(
            device,
            bytes = payload.len(),
            limit = max,
            "payload over limits.max_payload_bytes refused"
        );
        metrics.reject(Reject::Oversized);
        return None;
    }
    let (tx, rx) = oneshot::channel();
    let cmd = match leaf {
        "readings" => match json::parse(payload) {
            Ok(msg) => Cmd::Json {
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
        "summaries" => {
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
                        metrics.reject(Reject::CorruptFrame);
                    }
                    None => {}
                }
            }
            if frames.is_empty() {
                return None;
            }
            Cmd::Link {
                link: format!("mqtt:{device}"),
                frames,
                reply: None,
                fixed_offset: None,
                done: Some(tx),
            }
        }
        _ => {
            tracing::warn!(topic = t, "unknown device topic leaf refused");
            metrics.reject(Reject::BadTopic);
            return None;
        }
    };
    engine.send(cmd).await.ok()?;
    Some(rx)
}
