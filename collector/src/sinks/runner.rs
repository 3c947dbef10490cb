//! One sink's loop: follow the store's change feed from the durable cursor,
//! push the rows that are final, advance the cursor after each answered
//! request.
//!
//! A row that is not final yet (an agent behind, or data stamped in the
//! future) does not hold back the rows after it: it is *parked* in the store
//! ([`Feed::park`]) before the cursor passes it, looked at again at every
//! poll (a page of `batch_size` parked rows per look, round-robin), pushed
//! once it is final and then un-parked. Parking is durable, so a restart or
//! another instance taking over goes on from the same cursor and parked set.
//!
//! A sink pushes only while this instance holds its lease `sink:<name>`
//! (`crate::lease`), checked — and renewed once a third of `lease_ms`
//! has passed — before every request, between retries and at each poll;
//! the sink's config keeps `lease_ms` at least twice a request's timeout
//! and the poll interval, so a request never outlasts the lease it started
//! under. On taking the lease the cursor and the parked rows are read
//! again: the previous holder moved them. The lease is given up when the
//! sink stops.
//!
//! The store is reached through its async roles (feed, leases, query):
//! nothing here blocks a thread. Stopping is checked at every wait: a request in flight is
//! abandoned without advancing the cursor, so its points are pushed again
//! on the next start (at-least-once; receivers upsert by point identity).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tributary_core::{SeriesKey, Width};

use super::config::SinkConfig;
use super::http::Endpoint;
use super::{SinkCounters, SinkError};
use crate::finality::Finality;
use crate::lease::{HeldLease, Role};
use crate::query::stats::Stat;
use crate::store::{Changed, Feed, Leases, Query};
use tributary_runtime::now_ms;

/// At most this many rows are counted for the lag gauge.
pub(crate) const LAG_CAP: usize = 10_000;
/// How often a full backlog is re-counted for the lag gauge.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// A row's place: (series, window start) at the sink's width.
type RowKey = (SeriesKey, i64);

/// The place of `row`.
fn row_key(row: &Changed) -> RowKey {
    (row.series.clone(), row.stored.window.start())
}

/// Where a sink is, as read from the store when its lease was taken.
pub(super) struct Position {
    /// The change number of the last feed row pushed, skipped or parked.
    pub(super) cursor: u64,
    /// The parked rows, and since when this process knows them parked.
    parked: HashMap<RowKey, Instant>,
    /// The change number after which the next look reads parked rows.
    scan: u64,
}

/// What one look found.
struct Look {
    /// Parked rows that are final now, in change order.
    parked_ready: Vec<Changed>,
    /// Rows after the cursor that are final, in change order.
    ready: Vec<Changed>,
    /// Rows after the cursor that are not final: parked before the cursor
    /// passes them.
    park: Vec<RowKey>,
    /// The change number of the last row after the cursor looked at.
    through: Option<u64>,
    /// Where the next look reads parked rows from.
    scan: u64,
    /// Rows after the cursor (up to [`LAG_CAP`]), when counted this time.
    waiting: Option<u64>,
}

/// How often windows parked for that long are logged (again).
const PARKED_WARN_EVERY: Duration = Duration::from_secs(300);

/// Parked rows read per store query when loading a sink's position.
const LOAD_PAGE: usize = 10_000;

/// Whether to go on.
pub(super) enum Flow {
    /// Look again at once.
    Go,
    /// Look again after the poll interval.
    Wait,
    Stop,
    /// The lease was lost (or lost and taken again): re-read the position.
    Lost,
}

/// One sink's state.
pub(crate) struct Runner<S> {
    pub(super) cfg: SinkConfig,
    width: Width,
    pub(super) stats: Vec<Stat>,
    pub(super) endpoint: Endpoint,
    store: S,
    finality: Finality,
    pub(super) counters: Arc<SinkCounters>,
    pub(super) stop: watch::Receiver<bool>,
    lag_counted: Option<Instant>,
    /// When long-parked windows were last logged.
    parked_warned: Option<Instant>,
    /// The sink's lease, held while this instance pushes.
    pub(super) lease: HeldLease,
}

impl<S: Feed + Leases + Query + Clone + 'static> Runner<S> {
    /// A runner of a validated sink.
    pub(crate) fn new(
        cfg: SinkConfig,
        holder: &str,
        store: S,
        finality: Finality,
        counters: Arc<SinkCounters>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, SinkError> {
        let width = cfg.width().ok_or_else(|| SinkError::Config {
            key: "width_ms".into(),
            reason: format!("{} is not a valid width", cfg.width_ms),
        })?;
        Ok(Runner {
            lease: HeldLease::new(
                &cfg.store_name(),
                holder,
                Duration::from_millis(cfg.lease_ms),
                counters.leader.clone(),
            ),
            width,
            stats: cfg.stats(),
            endpoint: Endpoint::new(&cfg)?,
            cfg,
            store,
            finality,
            counters,
            stop,
            lag_counted: None,
            parked_warned: None,
        })
    }

    /// Runs until stopped.
    pub(crate) async fn run(mut self) {
        let mut url = self.endpoint.url().clone();
        let _ = url.set_password(None); // never log credentials
        tracing::info!(sink = %self.cfg.name, %url, width_ms = self.cfg.width_ms, holder = %self.lease.holder(), "sink running");
        let poll = Duration::from_millis(self.cfg.poll_ms);
        // `None` until read, and again whenever the lease changed hands.
        let mut position: Option<Position> = None;
        loop {
            if *self.stop.borrow() {
                break;
            }
            match self.role().await {
                Role::Standby => {
                    position = None;
                    if self.pause(poll).await {
                        break;
                    }
                    continue;
                }
                Role::Leader { taken: true } => position = None,
                Role::Leader { taken: false } => {}
            }
            let pos = match &mut position {
                Some(p) => p,
                None => match self.load_position().await {
                    Ok(p) => position.insert(p),
                    Err(e) => {
                        self.counters.store_errors.inc();
                        tracing::warn!(sink = %self.cfg.name, error = %e, "cannot read the sink's cursor and parked windows; retrying");
                        if self.pause(poll).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let flow = match self.look(pos).await {
                Ok(look) => self.act(pos, look).await,
                Err(e) => {
                    self.counters.store_errors.inc();
                    tracing::warn!(sink = %self.cfg.name, error = %e, "reading the change feed failed");
                    Flow::Wait
                }
            };
            self.note_parked(pos);
            match flow {
                // Look again at once: more may be ready.
                Flow::Go => continue,
                Flow::Stop => break,
                Flow::Lost => {
                    position = None;
                    continue;
                }
                Flow::Wait => {}
            }
            if self.pause(poll).await {
                break;
            }
        }
        let cursor = position.map(|p| p.cursor);
        if self.lease.give_up(&self.store).await.is_err() {
            self.counters.store_errors.inc();
        }
        tracing::info!(sink = %self.cfg.name, cursor, "sink stopped");
    }

    /// Whether this instance may push now (takes or renews the lease); a
    /// store error counts and stands by.
    pub(super) async fn role(&mut self) -> Role {
        self.lease.role(&self.store).await.unwrap_or_else(|_| {
            self.counters.store_errors.inc();
            Role::Standby
        })
    }

    /// Waits `d`; true when asked to stop meanwhile.
    pub(super) async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            _ = self.stop.wait_for(|s| *s) => true,
        }
    }

    /// Reads the cursor and the parked rows (as another instance may have
    /// left them).
    async fn load_position(&self) -> Result<Position, SinkError> {
        let name = self.cfg.store_name();
        let cursor = self.store.cursor(&name).await?;
        let mut keys = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .store
                .parked(&name, self.width, after, LOAD_PAGE)
                .await?;
            keys.extend(page.iter().map(row_key));
            match page.last() {
                Some(last) if page.len() == LOAD_PAGE => after = last.change,
                _ => break,
            }
        }
        self.counters.cursor.set(gauge(cursor));
        let now = Instant::now();
        Ok(Position {
            cursor,
            parked: keys.into_iter().map(|k| (k, now)).collect(),
            scan: 0,
        })
    }

    /// Parks `keys` (before the cursor passes them).
    async fn park(&self, pos: &mut Position, keys: Vec<RowKey>) -> Result<(), SinkError> {
        self.store
            .park(&self.cfg.store_name(), self.width, &keys)
            .await?;
        let now = Instant::now();
        for k in keys {
            pos.parked.entry(k).or_insert(now);
        }
        Ok(())
    }

    /// Un-parks those of `rows` that are parked (pushed or skipped now);
    /// false when the store failed, which only means they are pushed once
    /// more later.
    pub(super) async fn unpark(&self, pos: &mut Position, rows: &[Changed]) -> bool {
        let keys: Vec<RowKey> = rows
            .iter()
            .map(row_key)
            .filter(|k| pos.parked.contains_key(k))
            .collect();
        if keys.is_empty() {
            return true;
        }
        for k in &keys {
            pos.parked.remove(k);
        }
        let res = self
            .store
            .unpark(&self.cfg.store_name(), self.width, &keys)
            .await;
        if let Err(e) = res {
            self.counters.store_errors.inc();
            tracing::warn!(sink = %self.cfg.name, error = %e, "cannot un-park pushed windows (they will be pushed again)");
            return false;
        }
        true
    }

    /// Saves the cursor; false when the store failed.
    pub(super) async fn save_cursor(&self, value: u64) -> bool {
        self.counters.cursor.set(gauge(value));
        if let Err(e) = self.store.set_cursor(&self.cfg.store_name(), value).await {
            // The points are delivered; the next save writes a later value.
            // Until then a restart pushes them again (receivers upsert).
            self.counters.store_errors.inc();
            tracing::warn!(sink = %self.cfg.name, error = %e, "cannot save the sink's cursor");
            return false;
        }
        true
    }

    /// Up to which window end each series of `rows` is final, now.
    async fn final_through<'r>(
        &self,
        rows: impl Iterator<Item = &'r Changed>,
    ) -> Result<HashMap<SeriesKey, Option<i64>>, SinkError> {
        let keys: Vec<SeriesKey> = rows
            .map(|r| r.series.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let progress = self.store.progress_of(&keys).await?;
        let now = now_ms();
        Ok(keys
            .into_iter()
            .zip(progress)
            .map(|(k, p)| (k, self.finality.final_through(&p, now)))
            .collect())
    }

    /// Reads the rows after the cursor and a page of the parked rows, and
    /// sorts them by whether they are final.
    async fn look(&mut self, pos: &Position) -> Result<Look, SinkError> {
        let (width, limit) = (self.width, self.cfg.batch_size);
        let name = self.cfg.store_name();
        let count_lag = self.lag_counted.is_none_or(|t| t.elapsed() >= LAG_EVERY);
        let rows = self.store.changed_since(width, pos.cursor, limit).await?;
        let waiting = if rows.len() < limit {
            Some(rows.len() as u64)
        } else if count_lag {
            let all = self.store.changed_since(width, pos.cursor, LAG_CAP).await?;
            Some(all.len() as u64)
        } else {
            None
        };
        let mut parked = self.store.parked(&name, width, pos.scan, limit).await?;
        // A short page ends the round: the next starts over.
        let scan = match parked.last() {
            Some(last) if parked.len() == limit => last.change,
            _ => 0,
        };
        // A parked row also in the feed (written again) is handled there.
        let in_feed: HashSet<RowKey> = rows.iter().map(row_key).collect();
        parked.retain(|r| !in_feed.contains(&row_key(r)));
        let through = self.final_through(rows.iter().chain(&parked)).await?;
        let is_final = |row: &Changed| {
            through
                .get(&row.series)
                .copied()
                .flatten()
                .is_some_and(|t| row.stored.window.end() <= t)
        };
        let parked_ready: Vec<Changed> = parked.into_iter().filter(|r| is_final(r)).collect();
        let through_change = rows.last().map(|r| r.change);
        let (mut ready, mut park) = (Vec::new(), Vec::new());
        for row in rows {
            if is_final(&row) {
                ready.push(row);
            } else {
                park.push(row_key(&row));
            }
        }
        if waiting.is_some_and(|w| w as usize >= limit) {
            self.lag_counted = Some(Instant::now());
        }
        Ok(Look {
            parked_ready,
            ready,
            park,
            through: through_change,
            scan,
            waiting,
        })
    }

    /// Parks what is not final, pushes what is (parked rows first), then
    /// moves the cursor past everything looked at.
    async fn act(&mut self, pos: &mut Position, look: Look) -> Flow {
        if let Some(w) = look.waiting {
            self.counters.lag.set(gauge(w));
        }
        pos.scan = look.scan;
        if !look.park.is_empty() {
            if let Err(e) = self.park(pos, look.park).await {
                self.counters.store_errors.inc();
                tracing::warn!(sink = %self.cfg.name, error = %e, "cannot park windows that are not final yet; retrying");
                return Flow::Wait;
            }
        }
        let busy = !look.parked_ready.is_empty() || look.through.is_some();
        let mut flow = if busy { Flow::Go } else { Flow::Wait };
        for (rows, from_feed) in [(look.parked_ready, false), (look.ready, true)] {
            match self.push(pos, rows, from_feed).await {
                Flow::Go => {}
                // A store write failed: do not spin on it.
                Flow::Wait => flow = Flow::Wait,
                other => return other,
            }
        }
        if let Some(through) = look.through.filter(|t| *t > pos.cursor) {
            pos.cursor = through;
            if !self.save_cursor(through).await {
                flow = Flow::Wait;
            }
        }
        flow
    }

    /// Shows the parked windows (`tributary_sink_parked_windows`, and for
    /// how long the oldest has waited: `tributary_sink_held_seconds`) and
    /// logs them when some have waited long: a window stays parked while
    /// its agents' watermarks have not passed its end plus the lateness.
    fn note_parked(&mut self, pos: &Position) {
        let c = &self.counters;
        c.parked.set(gauge(pos.parked.len()));
        let oldest = pos.parked.iter().min_by_key(|(_, since)| **since);
        let waited = oldest.map_or(Duration::ZERO, |(_, since)| since.elapsed());
        c.held.set(waited.as_secs_f64());
        let due = waited >= PARKED_WARN_EVERY
            && self
                .parked_warned
                .is_none_or(|t| t.elapsed() >= PARKED_WARN_EVERY);
        if let (true, Some(((series, start), _))) = (due, oldest) {
            self.parked_warned = Some(Instant::now());
            tracing::warn!(
                sink = %self.cfg.name,
                parked = pos.parked.len(),
                oldest_series = %series,
                oldest_start = start,
                waited_s = waited.as_secs(),
                "windows not final yet wait parked (their agents' watermarks have not passed their end plus the lateness); the rest of the feed goes on"
            );
        }
    }
}

/// A count as a gauge value.
pub(super) fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
