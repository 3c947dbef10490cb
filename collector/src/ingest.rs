//! Ingest: agents' partial batches from MQTT into the store, confirmed end
//! to end (DESIGN §4).
//!
//! Subscribes to `tributary/v1/agents/+/partials` at QoS 1 with manual acks.
//! Each payload is checked — size, topic, decoding (JSON or binary, version),
//! the batch's agent id against the topic, the number of partials — and a
//! refused one is logged, counted by reason and acknowledged so the broker
//! does not redeliver it forever. Valid batches are gathered into a group
//! (bounded in count and time), applied in one store transaction, and only
//! after the commit are their PUBACKs sent and a [`Confirm`] published to each
//! agent listing the sequences applied (new or duplicate). If the commit
//! fails nothing is acknowledged: the agent resends, and the store's
//! de-duplication makes that harmless.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;
use tributary_core::batch::{Batch, Confirm};
use tributary_core::topic;

use crate::store::{Applied, Store};

/// Where and how to ingest.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id (a persistent session keeps unacked batches across restarts).
    pub client_id: String,
    /// Largest accepted payload (bytes).
    pub max_payload_bytes: usize,
    /// Most partials in one batch.
    pub max_partials: usize,
    /// Most batches per store transaction.
    pub group_batches: usize,
    /// Longest wait before a group is committed.
    pub group_wait: Duration,
    /// Shared-subscription group: subscribe to `$share/<group>/…` so the
    /// broker balances batches over the instances of the group.
    pub share_group: Option<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "tributary-collector".into(),
            max_payload_bytes: 4 << 20,
            max_partials: 100_000,
            group_batches: 256,
            group_wait: Duration::from_millis(10),
            share_group: None,
        }
    }
}

/// Why a payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Larger than `max_payload_bytes`.
    Oversized,
    /// Not a batch: malformed, unknown version, invalid summary.
    Malformed,
    /// The batch's agent differs from its topic's.
    AgentMismatch,
    /// More partials than `max_partials`.
    TooManyPartials,
    /// A topic outside the agents' partials tree.
    BadTopic,
    /// A partial cannot merge into its stored window (quantum mismatch, overflow).
    Unmergeable,
}

const REFUSED: [(Refused, &str); 6] = [
    (Refused::Oversized, "oversized"),
    (Refused::Malformed, "malformed"),
    (Refused::AgentMismatch, "agent_mismatch"),
    (Refused::TooManyPartials, "too_many_partials"),
    (Refused::BadTopic, "bad_topic"),
    (Refused::Unmergeable, "unmergeable"),
];

/// Ingest counters.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Batches applied for the first time.
    pub batches_new: AtomicU64,
    /// Batches that had been applied before.
    pub batches_duplicate: AtomicU64,
    /// Partials merged.
    pub partials: AtomicU64,
    /// Readings in the partials merged (each counted once).
    pub readings: AtomicU64,
    /// Payload bytes of the batches applied for the first time.
    pub bytes: AtomicU64,
    /// Store transactions that failed.
    pub store_errors: AtomicU64,
    refused: [AtomicU64; 6],
}

impl IngestCounters {
    /// Payloads refused for `r`.
    pub fn refused(&self, r: Refused) -> u64 {
        self.refused[r as usize].load(Relaxed)
    }

    /// Prometheus text lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE tributary_collector_batches_total counter\n");
        out.push_str(&format!(
            "tributary_collector_batches_total{{result=\"new\"}} {}\n",
            self.batches_new.load(Relaxed)
        ));
        out.push_str(&format!(
            "tributary_collector_batches_total{{result=\"duplicate\"}} {}\n",
            self.batches_duplicate.load(Relaxed)
        ));
        for (name, help, v) in [
            ("partials", "Partials merged.", &self.partials),
            (
                "readings",
                "Readings in the partials merged.",
                &self.readings,
            ),
            (
                "batch_bytes",
                "Payload bytes of batches applied.",
                &self.bytes,
            ),
            (
                "store_errors",
                "Store transactions that failed.",
                &self.store_errors,
            ),
        ] {
            out.push_str(&format!(
                "# HELP tributary_collector_{name}_total {help}\n# TYPE tributary_collector_{name}_total counter\ntributary_collector_{name}_total {}\n",
                v.load(Relaxed)
            ));
        }
        out.push_str("# TYPE tributary_collector_refused_total counter\n");
        for (r, name) in REFUSED {
            out.push_str(&format!(
                "tributary_collector_refused_total{{reason=\"{name}\"}} {}\n",
                self.refused(r)
            ));
        }
        out
    }
}

/// The subscription filter: every agent's partials, through the shared
/// group `share_group` when set.
pub fn subscription(share_group: Option<&str>) -> String {
    match share_group {
        Some(g) => format!("$share/{g}/{}", topic::ALL_PARTIALS),
        None => topic::ALL_PARTIALS.to_string(),
    }
}

/// Checks one payload; returns the batch or why it was refused.
pub fn check(
    cfg: &IngestConfig,
    topic_name: &str,
    payload: &[u8],
) -> Result<Batch, (Refused, String)> {
    let Some(agent) = topic::agent_of_partials(topic_name) else {
        return Err((
            Refused::BadTopic,
            format!("topic {topic_name:?} is not tributary/v1/agents/{{agent}}/partials"),
        ));
    };
    if payload.len() > cfg.max_payload_bytes {
        return Err((
            Refused::Oversized,
            format!(
                "{} bytes; the limit is {}",
                payload.len(),
                cfg.max_payload_bytes
            ),
        ));
    }
    let batch = Batch::decode(payload).map_err(|e| (Refused::Malformed, e.to_string()))?;
    if batch.agent != agent {
        return Err((
            Refused::AgentMismatch,
            format!(
                "batch of agent {:?} on the topic of agent {agent:?}",
                batch.agent
            ),
        ));
    }
    if batch.partials.len() > cfg.max_partials {
        return Err((
            Refused::TooManyPartials,
            format!(
                "{} partials; the limit is {}",
                batch.partials.len(),
                cfg.max_partials
            ),
        ));
    }
    Ok(batch)
}

/// Runs ingest until `shutdown` turns true.
pub async fn run<S: Store + Send + 'static>(
    cfg: IngestConfig,
    store: Arc<Mutex<S>>,
    counters: Arc<IngestCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(cfg.max_payload_bytes * 2 + 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(o, 1024);
    let mut group: Vec<(Publish, Batch)> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline =
            flush_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep_until(deadline), if flush_at.is_some() => {
                commit(&client, &store, &counters, std::mem::take(&mut group)).await;
                flush_at = None;
            }
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(host = cfg.host, port = cfg.port, "broker connected");
                    let _ = client.try_subscribe(subscription(cfg.share_group.as_deref()), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => match check(&cfg, &p.topic, &p.payload) {
                    Ok(batch) => {
                        group.push((p, batch));
                        flush_at.get_or_insert_with(|| tokio::time::Instant::now() + cfg.group_wait);
                        if group.len() >= cfg.group_batches {
                            commit(&client, &store, &counters, std::mem::take(&mut group)).await;
                            flush_at = None;
                        }
                    }
                    Err((reason, why)) => {
                        tracing::warn!(topic = p.topic, ?reason, "batch refused: {why}");
                        counters.refused[reason as usize].fetch_add(1, Relaxed);
                        let _ = client.ack(&p).await;
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "broker connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    if !group.is_empty() {
        commit(&client, &store, &counters, group).await;
    }
    let _ = client.disconnect().await;
}

/// Applies a group in one transaction, then acks and confirms it.
async fn commit<S: Store + Send + 'static>(
    client: &AsyncClient,
    store: &Arc<Mutex<S>>,
    counters: &IngestCounters,
    group: Vec<(Publish, Batch)>,
) {
    let sizes: Vec<usize> = group.iter().map(|(p, _)| p.payload.len()).collect();
    let (publishes, batches): (Vec<Publish>, Vec<Batch>) = group.into_iter().unzip();
    let st = store.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let mut guard = st.lock().map_err(|_| "store lock poisoned".to_string())?;
        match guard.apply(&batches) {
            Ok(a) => Ok((a.into_iter().map(Ok).collect::<Vec<_>>(), batches)),
            // One batch that cannot merge (e.g. a quantum that differs from the
            // stored window's) must not hold back the others: apply each on
            // its own and refuse only the ones that fail.
            Err(crate::store::StoreError::Merge { .. }) => {
                let each = batches
                    .iter()
                    .map(|b| guard.apply(std::slice::from_ref(b)).map(|a| a[0]))
                    .collect();
                Ok((each, batches))
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let (outcome, batches) = match applied {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            counters.store_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "store transaction failed; batches left unacknowledged for resend");
            return;
        }
        Err(e) => {
            counters.store_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "store task failed");
            return;
        }
    };
    let mut confirms: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for ((b, a), size) in batches.iter().zip(&outcome).zip(&sizes) {
        match a {
            Err(crate::store::StoreError::Merge {
                series,
                window,
                source,
            }) => {
                // Confirmed so the agent stops resending what can never apply;
                // logged and counted, never silent.
                tracing::warn!(agent = b.agent, seq = b.seq, %series, %window, error = %source,
                    "batch refused: cannot merge into the stored window");
                counters.refused[Refused::Unmergeable as usize].fetch_add(1, Relaxed);
            }
            Err(e) => {
                counters.store_errors.fetch_add(1, Relaxed);
                tracing::error!(agent = b.agent, seq = b.seq, error = %e,
                    "store transaction failed; batch left for resend");
                continue;
            }
            Ok(Applied::New) => {
                counters.batches_new.fetch_add(1, Relaxed);
                counters
                    .partials
                    .fetch_add(b.partials.len() as u64, Relaxed);
                counters
                    .readings
                    .fetch_add(b.partials.iter().map(|p| p.summary.count()).sum(), Relaxed);
                counters.bytes.fetch_add(*size as u64, Relaxed);
            }
            Ok(Applied::Duplicate) => {
                counters.batches_duplicate.fetch_add(1, Relaxed);
            }
        }
        confirms.entry(b.agent.as_str()).or_default().push(b.seq);
    }
    for p in &publishes {
        let _ = client.ack(p).await;
    }
    for (agent, seqs) in confirms {
        let c = Confirm::new(agent, seqs);
        if let Err(e) = client
            .publish(topic::acks(agent), QoS::AtLeastOnce, false, c.encode())
            .await
        {
            tracing::warn!(agent, error = %e, "confirmation not sent; the agent will resend");
        }
    }
}
