//! Ingest: agents' partial batches from MQTT into the store, confirmed end
//! to end (DESIGN §4).
//!
//! Subscribes to `tributary/v1/agents/+/partials` at QoS 1 with manual acks,
//! over MQTT 3.1.1 or MQTT 5 ([`Protocol`]; the [`transport`] hides which),
//! optionally as a member of a shared-subscription group (`$share/<group>/…`)
//! so a broker balances batches over several collector instances.
//! Each payload is checked — size, topic, decoding (JSON or binary, version),
//! the batch's agent id against the topic, the number of partials — and a
//! refused one is logged, counted by reason and acknowledged so the broker
//! does not redeliver it forever — in arrival order, behind the valid
//! batches still awaiting their commit (MQTT 3.1.1 §4.6). Valid batches are gathered into a group
//! (bounded in count and time), applied in one store transaction, and only
//! after the commit are their PUBACKs sent and a [`Confirm`] published to each
//! agent listing the sequences applied (new or duplicate). If the commit
//! fails nothing is acknowledged: the agent resends, and the store's
//! de-duplication makes that harmless.
//!
//! The topic carries the publisher's identity only as far as the broker
//! enforces it: with authentication on, each agent logs in with its agent id
//! as user name and an ACL lets it publish only on its own topic (see
//! `config/multi-instance/`), so "batch agent == topic agent" also proves
//! the publishing client's identity. MQTT does not tell a subscriber who
//! published a message, so the collector cannot check more than that.
//!
//! A refused login (wrong user name or password) or a lost connection is
//! logged, counted (`tributary_collector_mqtt_connects_total`) and retried
//! with a backoff of 0.5 s doubling up to 10 s (reset once a connection has
//! lasted 30 s); ingest never gives up.
//!
//! The client accepts every packet size MQTT allows, so a payload over
//! `max_payload_bytes` is refused and counted like any bad input rather
//! than breaking the connection (with MQTT 3.1.1 that would redeliver it
//! forever); bound sizes at the broker so huge payloads never travel.

mod transport;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tributary_core::batch::{Batch, Confirm};
use tributary_core::topic;

pub use transport::{Password, Protocol, TlsOptions};

use crate::store::{Applied, Store};
use transport::{AckToken, Event, Failure, Out, Outbox};

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
            group_batches: 256,
            group_wait: Duration::ZERO,
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
    /// Connections the broker accepted.
    pub connects_ok: AtomicU64,
    /// Connection attempts the broker refused (e.g. a wrong password).
    pub connects_refused: AtomicU64,
    /// Connections that failed or were lost (network, TLS, protocol).
    pub connects_failed: AtomicU64,
    /// 1 while connected to the broker, else 0.
    pub connected: AtomicU64,
    /// 1 once the broker has granted the partials subscription on the
    /// current connection, else 0 (refused by an ACL, or not yet answered).
    pub subscribed: AtomicU64,
    /// The protocol in use: 0 until ingest starts, 4 for 3.1.1, 5 for 5.
    pub protocol_level: AtomicU64,
    /// PUBACKs and confirmations waiting for room in the MQTT client's
    /// request queue.
    pub outbox: AtomicU64,
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
        let protocol = match self.protocol_level.load(Relaxed) {
            4 => Protocol::V311.as_str(),
            5 => Protocol::V5.as_str(),
            _ => "none",
        };
        out.push_str(&format!(
            "# HELP tributary_collector_mqtt_connected 1 while connected to the broker.\n# TYPE tributary_collector_mqtt_connected gauge\ntributary_collector_mqtt_connected{{protocol=\"{protocol}\"}} {}\n",
            self.connected.load(Relaxed)
        ));
        out.push_str(&format!(
            "# HELP tributary_collector_mqtt_subscribed 1 once the broker granted the partials subscription (0: refused by its ACL, or not answered yet).\n# TYPE tributary_collector_mqtt_subscribed gauge\ntributary_collector_mqtt_subscribed {}\n",
            self.subscribed.load(Relaxed)
        ));
        out.push_str(&format!(
            "# HELP tributary_collector_mqtt_outbox PUBACKs and confirmations waiting to be handed to the MQTT client.\n# TYPE tributary_collector_mqtt_outbox gauge\ntributary_collector_mqtt_outbox {}\n",
            self.outbox.load(Relaxed)
        ));
        out.push_str("# HELP tributary_collector_mqtt_connects_total Connection attempts by outcome (refused: the broker said no, e.g. a wrong password; failed: network, TLS or protocol).\n# TYPE tributary_collector_mqtt_connects_total counter\n");
        for (result, v) in [
            ("ok", &self.connects_ok),
            ("refused", &self.connects_refused),
            ("failed", &self.connects_failed),
        ] {
            out.push_str(&format!(
                "tributary_collector_mqtt_connects_total{{result=\"{result}\"}} {}\n",
                v.load(Relaxed)
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

/// First and longest wait before reconnecting after a failure.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// A connection that lasted this long resets the backoff; one lost sooner
/// keeps doubling it (a broker that accepts and then drops the collector
/// is not hammered every 0.5 s).
const STABLE: Duration = Duration::from_secs(30);

/// Runs ingest until `shutdown` turns true. Never returns early: a broker
/// that refuses the login or cannot be reached is retried with backoff.
pub async fn run<S: Store + Send + 'static>(
    cfg: IngestConfig,
    store: Arc<Mutex<S>>,
    counters: Arc<IngestCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    counters.protocol_level.store(
        match cfg.protocol {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        },
        Relaxed,
    );
    let mut backoff = BACKOFF.0;
    let (client, mut conn) = loop {
        match transport::client(&cfg) {
            Ok(c) => break c,
            Err(e) => {
                counters.connects_failed.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "cannot set up the MQTT connection; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    };
    let filter = subscription(cfg.share_group.as_deref());
    // Messages awaiting the group's commit, in arrival order: (ack, payload
    // size, the batch — none for a refused message queued behind valid ones).
    let mut group: Vec<(AckToken, usize, Option<Batch>)> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut connected_at: Option<tokio::time::Instant> = None;
    let mut outbox = Outbox::default();
    loop {
        outbox.flush(&client);
        counters.outbox.store(outbox.len() as u64, Relaxed);
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        // Biased, the connection first: a group is committed when its wait
        // is over *and* no further message is ready, so with no wait a
        // group is whatever arrived while the last commit ran.
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            ev = conn.poll(), if retry_at.is_none() => match ev {
                Ok(Event::Connected { session_present }) => {
                    connected_at = Some(tokio::time::Instant::now());
                    counters.connects_ok.fetch_add(1, Relaxed);
                    counters.connected.store(1, Relaxed);
                    counters.subscribed.store(0, Relaxed);
                    tracing::info!(host = cfg.host, port = cfg.port, protocol = %cfg.protocol,
                        client_id = cfg.client_id, session_present, "broker connected");
                    if let Err(e) = client.subscribe(filter.clone()) {
                        tracing::error!(filter, error = %e, "cannot queue the subscription");
                    }
                }
                Ok(Event::Subscribed { refused }) if !refused.is_empty() => {
                    counters.subscribed.store(0, Relaxed);
                    tracing::error!(filter, ?refused,
                        "the broker refused the subscription: check its ACL for this collector");
                }
                Ok(Event::Subscribed { .. }) => {
                    counters.subscribed.store(1, Relaxed);
                    tracing::debug!(filter, "subscribed");
                }
                Ok(Event::Disconnected(reason)) => {
                    // SessionTakenOver: another client connected with this
                    // client id (each instance needs its own).
                    tracing::warn!(reason, client_id = cfg.client_id,
                        "the broker disconnected the collector");
                }
                Ok(Event::Message(m)) => {
                    let size = m.payload.len();
                    let checked = match m.topic.as_deref() {
                        Some(t) => check(&cfg, t, &m.payload),
                        None => Err((Refused::BadTopic, "the topic is not UTF-8".to_string())),
                    };
                    match checked {
                        Ok(batch) => {
                            group.push((m.ack, size, Some(batch)));
                            flush_at.get_or_insert_with(|| tokio::time::Instant::now() + cfg.group_wait);
                            if group.len() >= cfg.group_batches {
                                commit(&store, &counters, std::mem::take(&mut group), &mut outbox).await;
                                flush_at = None;
                            }
                        }
                        Err((reason, why)) => {
                            tracing::warn!(topic = m.topic, ?reason, "batch refused: {why}");
                            counters.refused[reason as usize].fetch_add(1, Relaxed);
                            // PUBACKs go in arrival order (MQTT 3.1.1 §4.6, and
                            // rumqttd drops a client that breaks it): behind the
                            // valid batches awaiting their commit, if any.
                            if group.is_empty() {
                                outbox.push(Out::Ack(m.ack));
                            } else {
                                group.push((m.ack, size, None));
                            }
                        }
                    }
                }
                Ok(Event::Other) => {}
                Err(failure) => {
                    counters.connected.store(0, Relaxed);
                    counters.subscribed.store(0, Relaxed);
                    if connected_at.take().is_some_and(|t| t.elapsed() >= STABLE) {
                        backoff = BACKOFF.0;
                    }
                    match &failure {
                        Failure::Refused { .. } => {
                            counters.connects_refused.fetch_add(1, Relaxed);
                            tracing::error!(host = cfg.host, port = cfg.port, client_id = cfg.client_id,
                                user = cfg.username, retry_in = ?backoff, "{failure}");
                        }
                        Failure::Failed(_) => {
                            counters.connects_failed.fetch_add(1, Relaxed);
                            tracing::warn!(host = cfg.host, port = cfg.port, retry_in = ?backoff,
                                error = %failure, "broker connection failed; retrying");
                        }
                    }
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() => {
                commit(&store, &counters, std::mem::take(&mut group), &mut outbox).await;
                flush_at = None;
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                retry_at = None;
                if let Err(e) = conn.refresh_credentials(&cfg) {
                    tracing::error!(error = %e, "keeping the previous MQTT password");
                }
            }
        }
    }
    if !group.is_empty() {
        commit(&store, &counters, group, &mut outbox).await;
    }
    counters.connected.store(0, Relaxed);
    counters.subscribed.store(0, Relaxed);
    // Send the PUBACKs and confirmations still waiting, then DISCONNECT
    // (bounded: a dead broker must not hold up the shutdown; what is not
    // sent is redelivered or resent, and de-duplicated).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            outbox.flush(&client);
            if outbox.is_empty() {
                break;
            }
            if conn.poll().await.is_err() {
                return;
            }
        }
        while !client.try_disconnect() {
            if conn.poll().await.is_err() {
                return;
            }
        }
        while conn.poll().await.is_ok() {}
    })
    .await;
}

/// Applies a group in one transaction, then acks every message of it in
/// arrival order (refused ones queued behind valid ones included) and
/// confirms the batches to their agents.
async fn commit<S: Store + Send + 'static>(
    store: &Arc<Mutex<S>>,
    counters: &IngestCounters,
    group: Vec<(AckToken, usize, Option<Batch>)>,
    outbox: &mut Outbox,
) {
    let mut acks = Vec::with_capacity(group.len());
    let mut sizes = Vec::with_capacity(group.len());
    let mut batches = Vec::with_capacity(group.len());
    for (a, size, b) in group {
        acks.push(a);
        if let Some(b) = b {
            sizes.push(size);
            batches.push(b);
        }
    }
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
    for a in acks {
        outbox.push(Out::Ack(a));
    }
    for (agent, seqs) in confirms {
        outbox.push(Out::Publish {
            topic: topic::acks(agent),
            payload: Confirm::new(agent, seqs).encode(),
        });
    }
}
