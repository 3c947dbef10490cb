//! Ingest: agents' partial batches from MQTT into the store, confirmed end
//! to end (DESIGN §4).
//!
//! Subscribes to `tributary/v1/agents/+/partials` at QoS 1 with manual acks,
//! over MQTT 3.1.1 or MQTT 5 ([`Protocol`]; the [`transport`] hides which),
//! optionally as a member of a shared-subscription group (`$share/<group>/…`)
//! so a broker balances batches over several collector instances.
//! Each payload is checked ([`check`]) and a refused one is logged, counted
//! by reason and acknowledged so the broker does not redeliver it forever.
//! Valid batches are gathered into a [`group`] (bounded in count and time),
//! applied in one store transaction, and only after the commit are their
//! PUBACKs sent (in arrival order) and a [`Confirm`] published to each agent
//! incarnation listing the sequences applied. An agent incarnation seen for
//! the first time is logged and counted (`incarnations_total`; another
//! incarnation of a known agent with a warning), and the readings agents
//! report dropped in their new batches are counted per agent
//! (`agent_dropped_readings_total`; durably, per incarnation, in the store).
//! This module is the async shell: it polls the connection, feeds the group
//! and sends what the group says.
//!
//! One group commits at a time, on a task of its own, while the connection
//! goes on being polled and the next group gathers (up to
//! `mqtt.max_group` batches; then the broker's window holds the rest): the
//! store's transaction and the decoding and checking of what follows run
//! side by side on two workers. Keep-alives and PUBACKs keep flowing during
//! a commit until the next group is full; from then until the commit lands
//! the connection is not polled (a commit longer than 1.5 keep-alive
//! intervals with a full group waiting would lose the session, which the
//! broker then redelivers).
//!
//! # Store faults
//! If a commit fails (a full disk, a database that is down) nothing is
//! acknowledged and the group is kept and committed again, with a backoff
//! of 0.1 s doubling up to 5 s ([`STORE_BACKOFF`]) while the connection
//! keeps being polled (keep-alive, and the broker's in-flight window: what
//! it sends meanwhile joins the group). Dropping the group instead, as this
//! did before issue #12, left its messages unacknowledged on a live
//! connection: the broker resends only on a reconnect, so they held its
//! in-flight window and ingest stopped for good. Once the store is back the
//! group commits, in order, and nothing is lost or applied twice (batches a
//! per-batch retry or a committed lane had already applied are duplicates
//! then, and counted as new once, with the group: [`commit`]). Each failure is
//! counted (`tributary_collector_store_errors_total`), shown
//! (`tributary_collector_store_writable` 0) and makes `/health/ready`
//! answer 503 once the oldest uncommitted message is older than its bound.
//!
//! A fault of one batch rather than of the database (it cannot merge, or
//! the store's code panics on it) is isolated instead: the group is applied batch
//! by batch and the one that fails alone is refused whole, recorded
//! durably per agent incarnation (`/api/agents`, reasons `unmergeable`
//! and `store_failed`), counted (`tributary_collector_refused_total`) and
//! confirmed, so it can neither stall ingest nor be resent for ever (see
//! [`commit`]).
//!
//! The topic carries the publisher's identity only as far as the broker
//! enforces it: with authentication on — the production default — each
//! agent logs in with its agent id as user name and an ACL lets it publish
//! only on its own topic (see `config/multi-instance/`), so "batch agent ==
//! topic agent" also proves the publishing client's identity. MQTT does not
//! tell a subscriber who published a message, so the collector can check
//! no more than that a batch's identity could be the topic agent's
//! ([`check`]); without per-agent credentials anyone who can publish can
//! impersonate an agent.
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

mod check;
mod commit;
mod config;
mod group;
mod metrics;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tributary_core::batch::Confirm;
use tributary_core::topic;

pub use check::{check, drop_expired, Checked, Limits, PartialRefused, Refused};
pub use config::{IngestConfig, LimitsConfig, MqttConfig, MQTT_PASSWORD_ENV};
pub use metrics::{IngestCounters, MAX_AGENT_LABELS, OTHER_AGENTS};
pub use transport::{Protocol, TlsOptions};
pub use tributary_runtime::config::Password;

use crate::store::{Ingest, StoreError};
use commit::{apply, Progress};
use group::{Group, Outcome, Taken};
use transport::{AckToken, Client, Connection, Event, Failure, Message, Out, Outbox};

/// The subscription filter: every agent's partials, through the shared
/// group `share_group` when set.
pub fn subscription(share_group: Option<&str>) -> String {
    match share_group {
        Some(g) => format!("$share/{g}/{}", topic::ALL_PARTIALS),
        None => topic::ALL_PARTIALS.to_string(),
    }
}

/// First and longest wait before reconnecting after a failure.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// First and longest wait before committing a group again after the store
/// failed.
pub const STORE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// A connection that lasted this long resets the backoff; one lost sooner
/// keeps doubling it (a broker that accepts and then drops the collector
/// is not hammered every 0.5 s).
const STABLE: Duration = Duration::from_secs(30);

/// Runs ingest until `shutdown` turns true. Never returns early: a broker
/// that refuses the login or cannot be reached is retried with backoff.
pub async fn run<S: Ingest + Clone + 'static>(
    cfg: IngestConfig,
    store: S,
    counters: Arc<IngestCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    counters.set_protocol(cfg.protocol);
    let mut backoff = BACKOFF.0;
    let (client, mut conn) = loop {
        match transport::client(&cfg) {
            Ok(c) => break c,
            Err(e) => {
                counters.connects_failed.inc();
                tracing::error!(error = %e, "cannot set up the MQTT connection; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    };
    let mut shell = Shell {
        filter: subscription(cfg.share_group.as_deref()),
        cfg,
        counters,
        group: Group::default(),
        outbox: Outbox::default(),
        backoff,
        connected_at: None,
        store_backoff: None,
        progress: Progress::default(),
    };
    let mut flush_at: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    // The group committing, if any: its transaction runs while the
    // connection goes on being polled and the next group gathers.
    let mut committing: Option<Commit> = None;
    loop {
        shell.outbox.flush(&client, conn.epoch());
        shell.counters.outbox.set(gauge(shell.outbox.len()));
        let far = Instant::now() + Duration::from_secs(3600);
        // The next group stops gathering at its bound while one commits
        // (the broker's window then holds the rest).
        let full = shell.group.valid() >= shell.cfg.group_batches;
        let idle = committing.is_none();
        // Biased: a landed commit is settled first (its acks and
        // confirmations go out, and the writer is free for the next group
        // even while messages keep arriving); then the connection before
        // the wait, so a group is committed when its wait is over *and* no
        // further message is ready — with no wait, whatever arrived while
        // the last commit ran.
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            joined = async {
                match committing.as_mut() {
                    Some(commit) => commit.await,
                    None => std::future::pending().await,
                }
            }, if !idle => {
                committing = None;
                // Panics are caught in the task, so it fails only when the
                // runtime shuts down: stop as on a shutdown.
                let Ok((taken, landed)) = joined else {
                    tracing::error!("the store transaction's task was cancelled; ingest stops");
                    break;
                };
                if let Some(retry) = shell.finish(taken, landed) {
                    flush_at = Some(retry);
                } else if shell.group.valid() >= shell.cfg.group_batches {
                    // What gathered meanwhile is full: it commits now;
                    // otherwise when its wait (already running) ends.
                    committing = Some(shell.start(&store));
                    flush_at = None;
                }
            }
            ev = conn.poll(), if retry_at.is_none() && (idle || !full) => match ev {
                Ok(Event::Message(m)) => {
                    if shell.on_message(m) {
                        flush_at.get_or_insert_with(|| Instant::now() + shell.cfg.group_wait);
                    }
                    // A full group commits at once, unless one commits
                    // already or the store is failing: then it waits.
                    if committing.is_none() && shell.group.valid() >= shell.cfg.group_batches
                        && shell.store_backoff.is_none() {
                        committing = Some(shell.start(&store));
                        flush_at = None;
                    }
                }
                Ok(ev) => shell.on_event(ev, &client),
                Err(failure) => retry_at = Some(shell.on_failure(&failure)),
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() && idle => {
                flush_at = None;
                committing = Some(shell.start(&store));
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                retry_at = None;
                if let Err(e) = conn.refresh_credentials(&shell.cfg) {
                    tracing::error!(error = %e, "keeping the previous MQTT password");
                }
            }
        }
    }
    // The group committing lands; then one last attempt for the rest. What
    // fails stays unacknowledged for redelivery.
    if let Some(commit) = committing.take() {
        if let Ok((taken, landed)) = commit.await {
            shell.finish(taken, landed);
        }
    }
    if !shell.group.is_empty() && !shell.group.committing() {
        if let Ok((taken, landed)) = shell.start(&store).await {
            shell.finish(taken, landed);
        }
    }
    shell.counters.set_connected(false);
    drain(&client, &mut conn, &mut shell.outbox).await;
}

/// A count as a gauge value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sends the PUBACKs and confirmations still waiting, then DISCONNECT
/// (bounded: a dead broker must not hold up the shutdown; what is not sent
/// is redelivered or resent, and de-duplicated).
async fn drain(client: &Client, conn: &mut Connection, outbox: &mut Outbox) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            outbox.flush(client, conn.epoch());
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

/// A group's commit under way: the store's transaction on a task of its
/// own (so the connection goes on being polled meanwhile, on another
/// worker), answering the group taken and what became of it ([`Landed`]).
type Commit = tokio::task::JoinHandle<(Taken<AckToken>, Landed)>;

/// What a commit answers besides its group: the outcome of each of its
/// batches (or the store's error), and what the attempts so far applied
/// (kept across failed attempts, see [`Shell::progress`]).
struct Landed {
    outcomes: Result<Vec<Outcome>, StoreError>,
    progress: Progress,
    /// How long the store's transaction took.
    took: Duration,
}

/// Ingest's state between events.
struct Shell {
    cfg: IngestConfig,
    counters: Arc<IngestCounters>,
    filter: String,
    group: Group<AckToken>,
    outbox: Outbox,
    backoff: Duration,
    connected_at: Option<Instant>,
    /// The wait before the next commit attempt while the store fails.
    store_backoff: Option<Duration>,
    /// What attempts that failed applied (batches applied alone by a
    /// per-batch retry, or by lanes that committed, and the new
    /// incarnations they reported): on the next attempt those batches are
    /// duplicates and would report nothing, so this is kept until the
    /// group commits, and they are counted then, once.
    progress: Progress,
}

impl Shell {
    /// Checks a message and adds it to the group; true when a valid batch
    /// joined it.
    fn on_message(&mut self, m: Message) -> bool {
        let size = m.payload.len();
        let now = tributary_runtime::now_ms();
        let checked = match m.topic.as_deref() {
            Some(t) => check(self.cfg.limits(), t, &m.payload, now)
                .map(|c| check::drop_expired(&self.cfg.retention, c, now)),
            None => Err((Refused::BadTopic, "the topic is not UTF-8".to_string())),
        };
        let valid = match checked {
            Ok(c) => {
                self.count_trimmed(&c);
                self.group.push_valid(m.ack, c.batch, c.refused, size, now);
                true
            }
            Err((reason, why)) => {
                tracing::warn!(topic = m.topic, ?reason, "batch refused: {why}");
                self.counters.refuse(reason);
                if let Some(ack) = self.group.push_refused(m.ack, now) {
                    self.outbox.push(Out::Ack(ack));
                }
                false
            }
        };
        self.show_oldest();
        valid
    }

    /// Shows when the oldest message not yet acknowledged arrived (0:
    /// none waits), for readiness's ingest lag.
    fn show_oldest(&self) {
        let oldest = self.group.oldest().unwrap_or(0);
        self.counters.oldest_pending_ms.set(oldest);
    }

    /// Counts and logs what the time check took out of a batch.
    fn count_trimmed(&self, c: &Checked) {
        let (b, counters) = (&c.batch, &self.counters);
        for (reason, n) in [
            (PartialRefused::TimeFuture, c.future),
            (PartialRefused::TimePast, c.past),
            (PartialRefused::Expired, c.expired),
        ] {
            if n > 0 {
                tracing::warn!(
                    agent = b.agent,
                    seq = b.seq,
                    n,
                    reason = reason.name(),
                    "partials outside the time bounds ([limits] max_future_ms, max_age_ms) or past [retention] refused"
                );
                counters.refuse_partials(reason, n);
            }
        }
        if let Some(was) = c.clamped_watermark {
            tracing::warn!(
                agent = b.agent,
                seq = b.seq,
                watermark = was,
                clamped = b.watermark,
                "watermark beyond [limits] max_future_ms clamped"
            );
            counters.watermarks_clamped.inc();
        }
    }

    /// Handles a connection event other than a message.
    fn on_event(&mut self, ev: Event, client: &Client) {
        let (cfg, counters) = (&self.cfg, &self.counters);
        match ev {
            Event::Connected { session_present } => {
                self.connected_at = Some(Instant::now());
                counters.connects_ok.inc();
                counters.set_connected(true);
                counters.subscribed.set(0);
                tracing::info!(host = cfg.host, port = cfg.port, protocol = %cfg.protocol,
                    client_id = cfg.client_id, session_present, "broker connected");
                if let Err(e) = client.subscribe(self.filter.clone()) {
                    tracing::error!(filter = self.filter, error = %e, "cannot queue the subscription");
                }
            }
            Event::Subscribed { refused } if !refused.is_empty() => {
                counters.subscribed.set(0);
                tracing::error!(
                    filter = self.filter,
                    ?refused,
                    "the broker refused the subscription: check its ACL for this collector"
                );
            }
            Event::Subscribed { .. } => {
                counters.subscribed.set(1);
                tracing::debug!(filter = self.filter, "subscribed");
            }
            Event::Disconnected(reason) => {
                // SessionTakenOver: another client connected with this
                // client id (each instance needs its own).
                tracing::warn!(
                    reason,
                    client_id = cfg.client_id,
                    "the broker disconnected the collector"
                );
            }
            Event::Message(_) | Event::Other => {}
        }
    }

    /// Counts and logs a failed connection; returns when to try again.
    fn on_failure(&mut self, failure: &Failure) -> Instant {
        let (cfg, counters) = (&self.cfg, &self.counters);
        counters.set_connected(false);
        if self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE)
        {
            self.backoff = BACKOFF.0;
        }
        let retry_in = self.backoff;
        match failure {
            Failure::Refused { .. } => {
                counters.connects_refused.inc();
                tracing::error!(
                    host = cfg.host,
                    port = cfg.port,
                    client_id = cfg.client_id,
                    user = cfg.username,
                    ?retry_in,
                    "{failure}"
                );
            }
            Failure::Failed(_) => {
                counters.connects_failed.inc();
                tracing::warn!(host = cfg.host, port = cfg.port, ?retry_in,
                    error = %failure, "broker connection failed; retrying");
            }
        }
        self.backoff = (self.backoff * 2).min(BACKOFF.1);
        Instant::now() + retry_in
    }

    /// Takes the group and starts its transaction; [`Shell::finish`] takes
    /// what it answers.
    fn start<S: Ingest + Clone + 'static>(&mut self, store: &S) -> Commit {
        let taken = self.group.take();
        let mut progress = std::mem::take(&mut self.progress);
        let store = store.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let (batches, refused) = (taken.batches(), taken.refused());
            let outcomes = apply(&store, batches, refused, &mut progress).await;
            let landed = Landed {
                outcomes,
                progress,
                took: began.elapsed(),
            };
            (taken, landed)
        })
    }

    /// Settles a commit: queues its PUBACKs (in arrival order) and the
    /// confirmations to its agents. If the store failed, the group goes
    /// back in front of what gathered meanwhile and the answer is when to
    /// try again.
    fn finish(&mut self, taken: Taken<AckToken>, landed: Landed) -> Option<Instant> {
        self.progress = landed.progress;
        self.counters
            .store_commit_seconds
            .observe(landed.took.as_secs_f64());
        let outcomes = match landed.outcomes {
            Ok(o) => o,
            Err(e) => {
                let wait = self
                    .store_backoff
                    .map_or(STORE_BACKOFF.0, |b| (b * 2).min(STORE_BACKOFF.1));
                self.store_backoff = Some(wait);
                self.counters.store_errors.inc();
                self.counters.store_writable.set(0);
                tracing::error!(error = %e, batches = taken.valid(), retry_in = ?wait,
                    "store transaction failed; the group stays unacknowledged and is committed again");
                self.group.restore(taken);
                self.show_oldest();
                return Some(Instant::now() + wait);
            }
        };
        if self.store_backoff.take().is_some() {
            tracing::info!("store transaction succeeded again; ingest resumes");
        }
        self.counters.store_writable.set(1);
        self.counters
            .store_group_batches
            .observe(taken.valid() as f64);
        let settled = self.group.settle(taken, &outcomes);
        let (c, t) = (&self.counters, settled.tally);
        c.batches_new.inc_by(t.new);
        c.batches_duplicate.inc_by(t.duplicate);
        c.partials.inc_by(t.partials);
        c.readings.inc_by(t.readings);
        c.bytes.inc_by(t.bytes);
        for _ in 0..t.unmergeable {
            c.refuse(Refused::Unmergeable);
        }
        for _ in 0..t.store_failed {
            c.refuse(Refused::StoreFailed);
        }
        for (agent, n) in &settled.dropped {
            c.add_dropped(agent, *n);
        }
        for new in std::mem::take(&mut self.progress.incarnations) {
            c.new_incarnation(new.known_agent);
            if new.known_agent {
                tracing::warn!(agent = new.agent, incarnation = %new.incarnation,
                    "another incarnation of a known agent: its database was replaced, or a second gateway runs with its agent id");
            } else {
                tracing::info!(agent = new.agent, incarnation = %new.incarnation, "first batch of a new agent");
            }
        }
        for a in settled.acks {
            self.outbox.push(Out::Ack(a));
        }
        for ((agent, incarnation), seqs) in settled.confirms {
            self.outbox.push(Out::Publish {
                topic: topic::acks(&agent),
                payload: Confirm::new(agent.as_str(), incarnation, seqs).encode(),
            });
        }
        // Refused messages that waited behind the group, and nothing valid
        // since: their acks go now.
        if self.group.valid() == 0 && !self.group.is_empty() {
            let rest = self.group.take();
            for a in self.group.settle(rest, &[]).acks {
                self.outbox.push(Out::Ack(a));
            }
        }
        self.show_oldest();
        None
    }
}
