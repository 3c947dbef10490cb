//! The uplink: batches of partials to the upstream broker, deleted only on
//! the collector's end-to-end confirmation (DESIGN §4, §5).
//!
//! # Design
//! - Batches are formed by the engine (identity committed first) when there
//!   is room in the in-flight window (`uplink.max_in_flight`), published with
//!   QoS 1 on `topic::partials(agent)`, and kept in `in_flight` until a
//!   [`Confirm`] naming them arrives on `topic::acks(agent)`; then the engine
//!   deletes them. A PUBACK alone proves nothing: a broker may drop a QoS 1
//!   message after acknowledging it.
//! - A batch unconfirmed after `confirm_timeout_ms`, and every batch after a
//!   reconnect, is published again with the same bytes; the collector's
//!   de-duplication by (agent, seq) makes that harmless.
//! - Connection errors back off exponentially from `reconnect_min_ms` to
//!   `reconnect_max_ms` with full jitter. Publishing never blocks the event
//!   loop (`try_publish`); what could not be queued is resent by the timer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tributary_core::batch::Confirm;
use tributary_core::topic;

use crate::config::{Config, UplinkConfig};
use crate::engine::Cmd;
use crate::metrics::Metrics;
use crate::store::FormedBatch;

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The CA file could not be read or parsed.
    #[error("uplink.ca_file: {0}")]
    Ca(String),
    /// TLS setup failed.
    #[error("uplink TLS: {0}")]
    Tls(#[from] rustls::Error),
}

fn tls_config(cfg: &UplinkConfig) -> Result<rustls::ClientConfig, UplinkError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| UplinkError::Ca(format!("{}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| UplinkError::Ca(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| UplinkError::Ca(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The MQTT options for the upstream broker.
pub fn options(cfg: &Config) -> Result<MqttOptions, UplinkError> {
    let u = &cfg.uplink;
    let id = if u.client_id.is_empty() {
        format!("tributary-agent-{}", cfg.agent_id)
    } else {
        u.client_id.clone()
    };
    let mut o = MqttOptions::new(id, u.host.clone(), u.port);
    o.set_keep_alive(Duration::from_secs(u.keep_alive_s.max(5)));
    o.set_clean_session(true);
    o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let (Some(user), Some(pass)) = (&u.username, &u.password) {
        o.set_credentials(user.clone(), pass.clone());
    }
    if u.tls {
        let tls = tls_config(u)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(o)
}

struct InFlight {
    payload: Vec<u8>,
    sent: Option<Instant>,
}

/// The uplink task's state.
pub(crate) struct Uplink {
    cfg: Config,
    engine: mpsc::Sender<Cmd>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    in_flight: BTreeMap<u64, InFlight>,
    topic: String,
    acks: String,
}

impl Uplink {
    pub(crate) fn new(
        cfg: Config,
        engine: mpsc::Sender<Cmd>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let topic = topic::partials(&cfg.agent_id);
        let acks = topic::acks(&cfg.agent_id);
        Uplink {
            cfg,
            engine,
            wake,
            metrics,
            in_flight: BTreeMap::new(),
            topic,
            acks,
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.engine.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    fn publish(&mut self, client: &AsyncClient, seq: u64) {
        let Some(b) = self.in_flight.get_mut(&seq) else {
            return;
        };
        match client.try_publish(
            self.topic.clone(),
            QoS::AtLeastOnce,
            false,
            b.payload.clone(),
        ) {
            Ok(()) => {
                if b.sent.is_some() {
                    self.metrics.batches_resent.fetch_add(1, Relaxed);
                } else {
                    self.metrics.batches_sent.fetch_add(1, Relaxed);
                }
                b.sent = Some(Instant::now());
            }
            Err(e) => tracing::debug!(seq, error = %e, "publish queue full; will resend"),
        }
    }

    fn add(&mut self, batches: Vec<FormedBatch>) -> Vec<u64> {
        let mut new = Vec::new();
        for b in batches {
            if let std::collections::btree_map::Entry::Vacant(e) = self.in_flight.entry(b.seq) {
                e.insert(InFlight {
                    payload: b.payload,
                    sent: None,
                });
                new.push(b.seq);
            }
        }
        new
    }

    /// Runs until `shutdown` turns true.
    pub(crate) async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), UplinkError> {
        let opts = options(&self.cfg)?;
        let cap = self.cfg.uplink.max_in_flight * 2 + 16;
        let (client, mut events) = AsyncClient::new(opts, cap);
        let timeout = Duration::from_millis(self.cfg.uplink.confirm_timeout_ms);
        let mut backoff = Duration::from_millis(self.cfg.uplink.reconnect_min_ms);
        let max_backoff = Duration::from_millis(self.cfg.uplink.reconnect_max_ms);
        let mut connected = false;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(self.cfg.uplink.reconnect_min_ms);
                        self.metrics.uplink_up.store(1, Relaxed);
                        self.metrics.uplink_connects.fetch_add(1, Relaxed);
                        tracing::info!(host = %self.cfg.uplink.host, port = self.cfg.uplink.port, "uplink connected");
                        if let Err(e) = client.try_subscribe(self.acks.clone(), QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "cannot subscribe to confirmations");
                        }
                        if let Some(old) = self.ask(|reply| Cmd::Unconfirmed { reply }).await {
                            self.add(old);
                        }
                        let seqs: Vec<u64> = self.in_flight.keys().copied().collect();
                        for s in seqs {
                            self.publish(&client, s);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == self.acks => {
                        match Confirm::decode(&p.payload) {
                            Ok(c) if c.agent == self.cfg.agent_id => {
                                let seqs: Vec<u64> = c.seqs.into_iter().filter(|s| self.in_flight.remove(s).is_some()).collect();
                                if !seqs.is_empty() && self.engine.send(Cmd::Confirmed(seqs)).await.is_err() {
                                    break;
                                }
                            }
                            Ok(c) => tracing::warn!(agent = c.agent, "confirmation for another agent ignored"),
                            Err(e) => tracing::warn!(error = %e, "malformed confirmation ignored"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            tracing::warn!(error = %e, "uplink connection lost");
                        } else {
                            tracing::debug!(error = %e, "uplink connect failed");
                        }
                        connected = false;
                        self.metrics.uplink_up.store(0, Relaxed);
                        let jitter = fastrand::u64(0..=backoff.as_millis() as u64);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(jitter)) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(max_backoff);
                    }
                },
                _ = self.wake.notified() => {
                    if connected { self.fill(&client).await; }
                }
                _ = tick.tick() => {
                    if connected {
                        self.fill(&client).await;
                        let due: Vec<u64> = self.in_flight.iter()
                            .filter(|(_, b)| b.sent.is_none_or(|t| t.elapsed() >= timeout))
                            .map(|(s, _)| *s).collect();
                        for s in due {
                            self.publish(&client, s);
                        }
                    }
                }
            }
        }
        let _ = client.try_disconnect();
        Ok(())
    }

    async fn fill(&mut self, client: &AsyncClient) {
        let room = self
            .cfg
            .uplink
            .max_in_flight
            .saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        let Some(batches) = self
            .ask(|reply| Cmd::FormBatches { max: room, reply })
            .await
        else {
            return;
        };
        for s in self.add(batches) {
            self.publish(client, s);
        }
    }
}
