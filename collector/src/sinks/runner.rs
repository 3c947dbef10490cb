//! One sink's loop: follow the store's change feed from the durable cursor,
//! push the final prefix, advance the cursor after each answered request.
//!
//! A sink pushes only while this instance holds its lease in the store
//! (`sink:<name>`, [`Store::lease`]): every instance sharing a database may
//! configure the same sink, one of them pushes, and another takes over when
//! it stops (at once, as a stopping instance gives the lease up) or dies
//! (when its lease expires, `lease_ms`). The lease is renewed once a third
//! of it has passed — before a request, between retries and at each poll —
//! and `lease_ms` is at least twice a request's timeout and the poll
//! interval, so a request never outlasts the lease it started under. On
//! taking the lease the cursor is read again: the previous holder moved it.
//!
//! The store is locked only inside `spawn_blocking` (`with_store`: a
//! blocking database client may sit behind it) and never across an
//! `.await`. Stopping is checked at every wait: a request in flight is
//! abandoned without advancing the cursor, so its points are pushed again
//! on the next start (at-least-once; receivers upsert by point identity).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tributary_core::{SeriesKey, Width};

use super::config::SinkConfig;
use super::http::{backoff, Attempt, Endpoint};
use super::{SinkCounters, SinkError};
use crate::finality::{now_ms, Finality};
use crate::stats::Stat;
use crate::store::{Changed, Lease, Store};

/// At most this many rows are counted for the lag gauge.
pub(crate) const LAG_CAP: usize = 10_000;
/// How often a full backlog is re-counted for the lag gauge.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// What one look at the feed found.
struct Look {
    /// The rows after the cursor that are final, up to the first that is not.
    ready: Vec<Changed>,
    /// Rows after the cursor (up to [`LAG_CAP`]), when counted this time.
    waiting: Option<u64>,
    /// The first row that is not final yet, which holds back the rest.
    head: Option<Changed>,
}

/// The row holding a sink back, and since when.
struct Held {
    change: u64,
    since: Instant,
    warned: Option<Instant>,
}

/// How long a row may hold a sink back before it is logged (again).
const HELD_WARN_EVERY: Duration = Duration::from_secs(300);

/// Whether to go on.
enum Flow {
    Go,
    Stop,
    /// The lease was lost (or lost and taken again): re-read the cursor.
    Lost,
}

/// How pushing one chunk ended.
enum Outcome {
    Delivered,
    Rejected { status: u16, body: String },
    Stopped,
    Lost,
}

/// Whether this instance may push now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// It holds the sink's lease; `taken` when it did not at the previous
    /// check (so another instance may have moved the cursor meanwhile).
    Leader { taken: bool },
    /// Another instance holds it, or the store could not say.
    Standby,
}

/// One sink's state.
pub(crate) struct Runner<S> {
    cfg: SinkConfig,
    width: Width,
    stats: Vec<Stat>,
    endpoint: Endpoint,
    store: Arc<Mutex<S>>,
    finality: Finality,
    counters: Arc<SinkCounters>,
    stop: watch::Receiver<bool>,
    lag_counted: Option<Instant>,
    held: Option<Held>,
    /// This instance's name in the sink's lease.
    holder: String,
    /// When the lease was last taken or renewed (asked), while it is ours.
    renewed: Option<Instant>,
    /// The other holder last logged while standing by.
    standby: Option<String>,
}

impl<S: Store + Send + 'static> Runner<S> {
    /// A runner of a validated sink.
    pub(crate) fn new(
        cfg: SinkConfig,
        holder: &str,
        store: Arc<Mutex<S>>,
        finality: Finality,
        counters: Arc<SinkCounters>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, SinkError> {
        let width = cfg.width().ok_or_else(|| SinkError::Config {
            key: "width_ms".into(),
            reason: format!("{} is not a valid width", cfg.width_ms),
        })?;
        Ok(Runner {
            width,
            stats: cfg.stats(),
            endpoint: Endpoint::new(&cfg)?,
            cfg,
            store,
            finality,
            counters,
            stop,
            lag_counted: None,
            held: None,
            holder: holder.to_string(),
            renewed: None,
            standby: None,
        })
    }

    /// Runs until stopped.
    pub(crate) async fn run(mut self) {
        let mut url = self.endpoint.url().clone();
        let _ = url.set_password(None); // never log credentials
        tracing::info!(sink = %self.cfg.name, %url, width_ms = self.cfg.width_ms, holder = %self.holder, "sink running");
        let poll = Duration::from_millis(self.cfg.poll_ms);
        // `None` until read, and again whenever the lease changed hands.
        let mut cursor: Option<u64> = None;
        loop {
            if *self.stop.borrow() {
                break;
            }
            match self.role().await {
                Role::Standby => {
                    cursor = None;
                    if self.pause(poll).await {
                        break;
                    }
                    continue;
                }
                Role::Leader { taken: true } => cursor = None,
                Role::Leader { taken: false } => {}
            }
            let mut at = match cursor {
                Some(c) => c,
                None => match self.load_cursor().await {
                    Ok(c) => {
                        self.counters.cursor.store(c, Relaxed);
                        c
                    }
                    Err(e) => {
                        self.counters.store_errors.fetch_add(1, Relaxed);
                        tracing::warn!(sink = %self.cfg.name, error = %e, "cannot read the sink's cursor; retrying");
                        if self.pause(poll).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            cursor = Some(at);
            match self.look(at).await {
                Ok(look) => {
                    if let Some(w) = look.waiting {
                        self.counters.lag.store(w, Relaxed);
                    }
                    self.note_head(look.head.as_ref());
                    if !look.ready.is_empty() {
                        let flow = self.push(&mut at, look.ready).await;
                        cursor = Some(at);
                        match flow {
                            // Look again at once: more may be ready.
                            Flow::Go => continue,
                            Flow::Stop => break,
                            Flow::Lost => {
                                cursor = None;
                                continue;
                            }
                        }
                    }
                }
                Err(e) => {
                    self.counters.store_errors.fetch_add(1, Relaxed);
                    tracing::warn!(sink = %self.cfg.name, error = %e, "reading the change feed failed");
                }
            }
            if self.pause(poll).await {
                break;
            }
        }
        self.give_up_lease().await;
        tracing::info!(sink = %self.cfg.name, cursor, "sink stopped");
    }

    /// Runs `f` on the locked store on a blocking thread.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = store.lock().map_err(|_| SinkError::Poisoned)?;
            f(&mut st)
        })
        .await?
    }

    /// The lease's time to live.
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.cfg.lease_ms)
    }

    /// Whether this instance may push: takes the sink's lease, or renews it
    /// once a third of it has passed since the last renewal.
    async fn role(&mut self) -> Role {
        let ttl = self.ttl();
        if self.renewed.is_some_and(|t| t.elapsed() < ttl / 3) {
            return Role::Leader { taken: false };
        }
        let asked = Instant::now();
        let (name, holder) = (self.cfg.cursor_name(), self.holder.clone());
        let res = self
            .with_store(move |st| Ok(st.lease(&name, &holder, ttl)?))
            .await;
        let was_ours = self.renewed.is_some();
        match res {
            Ok(Lease::Ours) => {
                // Counted from before the request, so never longer than the
                // store's own expiry.
                self.renewed = Some(asked);
                self.counters.leader.store(1, Relaxed);
                if !was_ours {
                    self.standby = None;
                    tracing::info!(sink = %self.cfg.name, holder = %self.holder, "this instance holds the sink's lease; pushing");
                }
                Role::Leader { taken: !was_ours }
            }
            Ok(Lease::Theirs(other)) => {
                self.renewed = None;
                self.counters.leader.store(0, Relaxed);
                if was_ours {
                    tracing::warn!(sink = %self.cfg.name, holder = %other, "the sink's lease passed to another instance; standing by");
                } else if self.standby.as_ref() != Some(&other) {
                    tracing::info!(sink = %self.cfg.name, holder = %other, "another instance runs this sink; standing by");
                }
                self.standby = Some(other);
                Role::Standby
            }
            Err(e) => {
                self.renewed = None;
                self.standby = None;
                self.counters.leader.store(0, Relaxed);
                self.counters.store_errors.fetch_add(1, Relaxed);
                tracing::warn!(sink = %self.cfg.name, error = %e, "cannot take or renew the sink's lease; not pushing until it can");
                Role::Standby
            }
        }
    }

    /// Gives the lease up when stopping, so another instance takes over at
    /// once rather than when it expires.
    async fn give_up_lease(&mut self) {
        if self.renewed.take().is_none() {
            return;
        }
        self.counters.leader.store(0, Relaxed);
        let (name, holder) = (self.cfg.cursor_name(), self.holder.clone());
        let res = self
            .with_store(move |st| Ok(st.release(&name, &holder)?))
            .await;
        if let Err(e) = res {
            self.counters.store_errors.fetch_add(1, Relaxed);
            tracing::warn!(sink = %self.cfg.name, error = %e, "cannot give up the sink's lease; another instance takes over when it expires");
        }
    }

    /// Waits `d`; true when asked to stop meanwhile.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            _ = self.stop.wait_for(|s| *s) => true,
        }
    }

    /// Waits `d` (a retry's backoff, possibly longer than the lease) while
    /// keeping the lease; how it ended early, if it did.
    async fn pause_leading(&mut self, d: Duration) -> Option<Outcome> {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.pause(left.min(self.ttl() / 3)).await {
                return Some(Outcome::Stopped);
            }
            if self.role().await != (Role::Leader { taken: false }) {
                return Some(Outcome::Lost);
            }
        }
    }

    async fn load_cursor(&self) -> Result<u64, SinkError> {
        let name = self.cfg.cursor_name();
        self.with_store(move |st| Ok(st.cursor(&name)?)).await
    }

    async fn save_cursor(&self, value: u64) {
        self.counters.cursor.store(value, Relaxed);
        let name = self.cfg.cursor_name();
        let res = self
            .with_store(move |st| Ok(st.set_cursor(&name, value)?))
            .await;
        if let Err(e) = res {
            // The points are delivered; the next save writes a later value.
            // Until then a restart pushes them again (receivers upsert).
            self.counters.store_errors.fetch_add(1, Relaxed);
            tracing::warn!(sink = %self.cfg.name, error = %e, "cannot save the sink's cursor");
        }
    }

    /// Reads the rows after `cursor` and keeps the final prefix.
    async fn look(&mut self, cursor: u64) -> Result<Look, SinkError> {
        let (width, limit, finality) = (self.width, self.cfg.batch_size, self.finality);
        let count_lag = self.lag_counted.is_none_or(|t| t.elapsed() >= LAG_EVERY);
        let look = self
            .with_store(move |st| {
                let rows = st.changed_since(width, cursor, limit)?;
                let waiting = if rows.len() < limit {
                    Some(rows.len() as u64)
                } else if count_lag {
                    Some(st.changed_since(width, cursor, LAG_CAP)?.len() as u64)
                } else {
                    None
                };
                let now = now_ms();
                let mut through: HashMap<SeriesKey, Option<i64>> = HashMap::new();
                let mut ready = Vec::new();
                let mut head = None;
                for row in rows {
                    let t = match through.get(&row.series) {
                        Some(t) => *t,
                        None => {
                            let t = finality.final_through(&st.progress(&row.series)?, now);
                            through.insert(row.series.clone(), t);
                            t
                        }
                    };
                    let is_final = t.is_some_and(|t| row.stored.window.end() <= t);
                    if !is_final {
                        head = Some(row);
                        break;
                    }
                    ready.push(row);
                }
                Ok(Look {
                    ready,
                    waiting,
                    head,
                })
            })
            .await?;
        if look.waiting.is_some_and(|w| w as usize >= limit) {
            self.lag_counted = Some(Instant::now());
        }
        Ok(look)
    }

    /// Tracks the row that holds the sink back (`tributary_sink_held_seconds`)
    /// and logs it when it has held it for long: a window that stays
    /// non-final (an agent far behind, or data stamped in the future) stops
    /// every row after it, by design, until it is final.
    fn note_head(&mut self, head: Option<&Changed>) {
        let Some(row) = head else {
            self.held = None;
            self.counters.held_ms.store(0, Relaxed);
            return;
        };
        let held = match &mut self.held {
            Some(h) if h.change == row.change => h,
            slot => slot.insert(Held {
                change: row.change,
                since: Instant::now(),
                warned: None,
            }),
        };
        let waited = held.since.elapsed();
        self.counters.held_ms.store(
            u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        );
        let due = held.warned.map_or(waited >= HELD_WARN_EVERY, |t| {
            t.elapsed() >= HELD_WARN_EVERY
        });
        if due {
            held.warned = Some(Instant::now());
            tracing::warn!(
                sink = %self.cfg.name,
                series = %row.series,
                start = row.stored.window.start(),
                held_s = waited.as_secs(),
                "a window that is not final yet holds this sink back (its agents' watermarks have not passed its end plus the lateness)"
            );
        }
    }

    /// Pushes `rows` (final, in change order) in requests of at most
    /// `batch_size`, advancing the cursor after each answered one. A
    /// refused request is split in halves until the refused point is alone;
    /// that point is logged, counted and skipped.
    async fn push(&mut self, cursor: &mut u64, rows: Vec<Changed>) -> Flow {
        let mut rest: &[Changed] = &rows;
        let mut take = rest.len();
        while !rest.is_empty() {
            let n = take.clamp(1, rest.len());
            let chunk = &rest[..n];
            match self.deliver(chunk).await {
                Outcome::Stopped => return Flow::Stop,
                Outcome::Lost => return Flow::Lost,
                Outcome::Delivered => {
                    let c = &self.counters;
                    c.pushed.fetch_add(n as u64, Relaxed);
                    c.batches.fetch_add(1, Relaxed);
                    c.last_success_ms.store(now_ms(), Relaxed);
                }
                Outcome::Rejected { status, body } if n > 1 => {
                    tracing::debug!(sink = %self.cfg.name, status, points = n, body, "batch refused; splitting it to find the refused point");
                    take = n / 2;
                    continue;
                }
                Outcome::Rejected { status, body } => {
                    let row = &chunk[0];
                    tracing::error!(
                        sink = %self.cfg.name,
                        status,
                        series = %row.series,
                        start = row.stored.window.start(),
                        revision = row.stored.revision,
                        body,
                        "point refused by the sink; skipped"
                    );
                    self.counters.rejected.fetch_add(1, Relaxed);
                }
            }
            *cursor = chunk[n - 1].change;
            rest = &rest[n..];
            take = rest.len();
            let _ = self
                .counters
                .lag
                .fetch_update(Relaxed, Relaxed, |l| Some(l.saturating_sub(n as u64)));
            self.save_cursor(*cursor).await;
        }
        Flow::Go
    }

    /// Sends one chunk until it is answered for good or the sink stops.
    async fn deliver(&mut self, chunk: &[Changed]) -> Outcome {
        let body = self.endpoint.encode(chunk, &self.stats);
        let (min, max) = (
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        );
        let mut attempt: u32 = 0;
        loop {
            if self.role().await != (Role::Leader { taken: false }) {
                return Outcome::Lost;
            }
            let res = tokio::select! {
                a = self.endpoint.send(body.clone()) => a,
                _ = self.stop.wait_for(|s| *s) => return Outcome::Stopped,
            };
            if !matches!(res, Attempt::Retry { .. }) {
                self.counters.failing.store(0, Relaxed);
            }
            match res {
                Attempt::Delivered => return Outcome::Delivered,
                Attempt::Rejected { status, body } => {
                    return Outcome::Rejected {
                        status: status.as_u16(),
                        body,
                    }
                }
                Attempt::Retry { reason, after } => {
                    self.counters.failing.fetch_add(1, Relaxed);
                    self.counters.retries.fetch_add(1, Relaxed);
                    let delay =
                        after.map_or_else(|| backoff(attempt, min, max), |a| a.clamp(min, max));
                    tracing::warn!(
                        sink = %self.cfg.name,
                        attempt = attempt + 1,
                        retry_in_ms = delay.as_millis() as u64,
                        points = chunk.len(),
                        reason,
                        "push failed; retrying"
                    );
                    if let Some(end) = self.pause_leading(delay).await {
                        return end;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
