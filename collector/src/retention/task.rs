//! The retention task: every `[retention] interval_ms`, for each stored
//! width with a retention, deletes the expired rows in batches of at most
//! `batch_rows` (one transaction each, the store released in between so
//! ingest waits for one batch at most), then gives the freed space back;
//! and its metrics (`tributary_collector_retention_*`).
//!
//! # Design
//! **One instance at a time.** Instances sharing a database run retention
//! one at a time: a run happens only on the instance holding the store's
//! lease `retention` (`crate::lease`, held under the instance's
//! `mqtt.client_id`, `tributary_collector_retention_leader` 1 there). The
//! others skip their runs (`…_skipped_runs_total`) and take over when the
//! holder stops (it gives the lease up) or dies (once `lease_ms` has
//! passed). The lease's time to live is not stretched to cover a whole run
//! (a run of `max_batches` per width has no useful bound): the holder
//! checks it before every step and every batch of a run, and between runs,
//! renewing it once a third of `lease_ms` has passed, so it lapses only if
//! one step outlasts two thirds of `lease_ms` (the config keeps it well
//! above one). A run that finds the lease lost, or cannot renew it, stops
//! there; the new holder's runs go on from what is left. Even two runs at
//! once would be safe — expiry deletes skip rows another transaction holds
//! and PostgreSQL's partition work waits behind a lock timeout — the lease
//! only saves the repeated work. A lease the store cannot answer means no
//! run: counted as step `lease` in the errors. A holder whose renewal
//! failed asks again every twelfth of `lease_ms` (at most 5 s) until the
//! lease is renewed or has expired, so a transient error does not hand it
//! to a standby; an instance that did not hold it asks at the next tick.
//!
//! Each step of a run — listing the widths, and for each width preparing,
//! expiring and reading the oldest start, then reclaiming — fails alone: a
//! failure is logged with its width and step, counted in
//! `tributary_collector_retention_errors_total{width, step}` and listed in
//! [`Run::failed`], and the run goes on with the width's next step, the
//! next width and the reclaim. So one width the store cannot serve (a
//! PostgreSQL partition that cannot be created, a lock not granted) never
//! stops the expiry of the others, run after run.

use std::sync::Arc;

use tokio::sync::watch;
use tributary_core::Width;
use tributary_runtime::metrics::prometheus_client::metrics::counter::Counter;
use tributary_runtime::metrics::prometheus_client::metrics::family::Family;
use tributary_runtime::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use super::{Policy, RetentionConfig};
use crate::lease::{HeldLease, LeaseClock, Role};
use crate::metrics::{label, Label};
use crate::store::{Answer, Expire, Leases};

/// A step of a run that can fail alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Listing the stored widths (the run then has no width to work on
    /// and goes on with the reclaim).
    Widths,
    /// Making ready ahead of need (PostgreSQL: the width's partitions);
    /// expiry of the width goes on.
    Prepare,
    /// Deleting a batch of expired rows; the width's further batches are
    /// left to the next run.
    Expire,
    /// Reading the width's oldest start; its lag gauge keeps its value.
    Oldest,
    /// Giving freed space back; the rest is left to the next run.
    Reclaim,
    /// Taking or renewing the `retention` lease (a step of the whole run):
    /// the run does not start, or stops where it is.
    Lease,
}

impl Step {
    /// The step's name, as in the `step` label.
    pub fn name(self) -> &'static str {
        match self {
            Step::Widths => "widths",
            Step::Prepare => "prepare",
            Step::Expire => "expire",
            Step::Oldest => "oldest",
            Step::Reclaim => "reclaim",
            Step::Lease => "lease",
        }
    }
}

/// The labels of a failed step: the width in ms (empty for the steps of
/// the whole run, [`Step::Widths`], [`Step::Reclaim`] and [`Step::Lease`])
/// and the step.
type ErrorLabels = [(&'static str, String); 2];

fn error_labels(width: Option<Width>, step: Step) -> ErrorLabels {
    let width = width.map_or_else(String::new, |w| w.ms().to_string());
    [("width", width), ("step", step.name().to_string())]
}

/// The retention task's metrics.
#[derive(Debug, Default)]
pub struct RetentionMetrics {
    /// Rows deleted, by width (ms).
    expired: Family<Label, Counter>,
    /// Bytes given back to the file system (SQLite's incremental vacuum)
    /// or by dropped partitions.
    pub freed_bytes: Counter,
    /// When the last run ended (collector clock, ms since the Unix epoch).
    pub last_run_ms: Gauge,
    /// How far the oldest row still stored is past its width's deletion
    /// point after the last run (ms, 0 when caught up), by width.
    lag: Family<Label, Gauge>,
    /// Steps that failed (the store's error; the next run retries), by
    /// width and step.
    errors: Family<ErrorLabels, Counter>,
    /// 1 while this instance holds the `retention` lease, else 0.
    leader: Gauge,
    /// Runs this instance did.
    runs: Counter,
    /// Runs this instance skipped: another instance held the lease, or the
    /// store could not say who did.
    skipped: Counter,
}

impl RetentionMetrics {
    /// Rows deleted at `width` so far.
    pub fn expired(&self, width: Width) -> u64 {
        self.expired
            .get_or_create(&label("width", width.ms().to_string()))
            .get()
    }

    /// The lag at `width` after the last run.
    pub fn lag_ms(&self, width: Width) -> i64 {
        self.lag
            .get_or_create(&label("width", width.ms().to_string()))
            .get()
    }

    /// How often `step` failed at `width` (`None`: the steps of the whole
    /// run) so far.
    pub fn errors(&self, width: Option<Width>, step: Step) -> u64 {
        self.errors.get_or_create(&error_labels(width, step)).get()
    }

    /// Whether this instance holds the `retention` lease.
    pub fn leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Runs done so far.
    pub fn runs(&self) -> u64 {
        self.runs.get()
    }

    /// Runs skipped so far (another instance held the lease, or the store
    /// could not say who did).
    pub fn skipped(&self) -> u64 {
        self.skipped.get()
    }

    /// Registers the metrics in `r`.
    pub fn register(&self, r: &mut Registry) {
        let name = |s: &str| format!("tributary_collector_retention_{s}");
        r.register(
            name("expired_rows"),
            "Result rows deleted by retention, by width (ms).",
            self.expired.clone(),
        );
        r.register(
            name("freed_bytes"),
            "Bytes given back to the file system after expiry.",
            self.freed_bytes.clone(),
        );
        r.register(
            name("last_run_ms"),
            "When the retention task last finished a run (ms since the Unix epoch).",
            self.last_run_ms.clone(),
        );
        r.register(
            name("lag_ms"),
            "How far the oldest stored row of a width is past its deletion point (0: caught up).",
            self.lag.clone(),
        );
        r.register(
            name("errors"),
            "Retention steps that failed, by width (ms; empty for the whole run's steps) and step (widths, prepare, expire, oldest, reclaim, lease); retried at the next run.",
            self.errors.clone(),
        );
        r.register(
            name("leader"),
            "1 while this instance holds the retention lease and runs retention; 0 while another instance does.",
            self.leader.clone(),
        );
        r.register(
            name("runs"),
            "Retention runs this instance did.",
            self.runs.clone(),
        );
        r.register(
            name("skipped_runs"),
            "Retention runs this instance skipped: another instance held the retention lease, or the store could not say.",
            self.skipped.clone(),
        );
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// Rows deleted per width that had any, by width.
    pub expired: Vec<(Width, u64)>,
    /// Bytes given back.
    pub freed_bytes: u64,
    /// Widths whose expired rows were not all deleted (`max_batches` hit).
    pub behind: Vec<Width>,
    /// The steps that failed, in the order they ran, each with its width
    /// (`None`: a step of the whole run).
    pub failed: Vec<(Option<Width>, Step)>,
    /// The run stopped before its end: the task was asked to stop, or the
    /// `retention` lease was lost or could not be renewed.
    pub cut_short: bool,
}

impl Run {
    /// Whether the run did or missed anything worth a log line.
    pub fn eventful(&self) -> bool {
        !self.expired.is_empty()
            || !self.behind.is_empty()
            || !self.failed.is_empty()
            || self.cut_short
    }
}

/// The name of the lease the instance running retention holds.
pub const LEASE: &str = "retention";

/// What a run under the lease checks before each step: the lease, and the
/// stop signal.
struct Gate<'a> {
    lease: &'a mut HeldLease,
    stop: &'a watch::Receiver<bool>,
}

/// The retention task over a store.
#[derive(Debug, Clone)]
pub struct RetentionTask<S> {
    store: S,
    policy: Policy,
    cfg: RetentionConfig,
    metrics: Arc<RetentionMetrics>,
    /// What the lease's renewals are timed by.
    lease_clock: LeaseClock,
}

impl<S: Expire + Leases + Clone + 'static> RetentionTask<S> {
    /// The task enforcing `policy` on `store` at the pace of `cfg`.
    pub fn new(store: S, policy: Policy, cfg: RetentionConfig) -> Self {
        RetentionTask {
            store,
            policy,
            cfg,
            metrics: Arc::default(),
            lease_clock: LeaseClock::default(),
        }
    }

    /// The same task, its lease's renewals timed by `clock` (the monotonic
    /// clock unless a test moves it forward).
    pub fn with_lease_clock(self, clock: LeaseClock) -> Self {
        RetentionTask {
            lease_clock: clock,
            ..self
        }
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<RetentionMetrics> {
        &self.metrics
    }

    /// One run at collector clock `now`, whichever instance holds the
    /// `retention` lease (for a caller that knows it runs alone: tests,
    /// benchmarks; [`RetentionTask::run`] runs each under the lease):
    /// deletes what has expired (at most `max_batches` of `batch_rows` per
    /// width) and gives the space back. A step that fails is logged,
    /// counted and listed in [`Run::failed`], and the run goes on (module
    /// doc).
    pub async fn run_once(&self, now: i64) -> Run {
        self.run_gated(now, None).await
    }

    /// One run; with a `gate`, checked before every step, the run stops
    /// where it is once the gate closes ([`Run::cut_short`]).
    async fn run_gated(&self, now: i64, mut gate: Option<Gate<'_>>) -> Run {
        let mut run = Run::default();
        if self.go_on(&mut run, &mut gate).await {
            self.metrics.runs.inc();
            let widths = self.store.widths();
            let widths = self.step(&mut run, None, Step::Widths, widths).await;
            for width in widths.unwrap_or_default() {
                if !self.width_once(&mut run, &mut gate, width, now).await {
                    break;
                }
            }
            if !run.cut_short {
                self.reclaim(&mut run, &mut gate).await;
            }
            self.metrics.last_run_ms.set(now);
        }
        run
    }

    /// A run's steps for one `width`: each goes on after the one before
    /// failed. False when the gate closed (the run stops).
    async fn width_once(
        &self,
        run: &mut Run,
        gate: &mut Option<Gate<'_>>,
        width: Width,
        now: i64,
    ) -> bool {
        if !self.go_on(run, gate).await {
            return false;
        }
        // Every stored width gets its partitions ahead, kept forever or
        // not, so rows do not pile up in PostgreSQL's default partition.
        let prepared = self.store.prepare(width, now);
        let _ = self.step(run, Some(width), Step::Prepare, prepared).await;
        let Some(before) = self.policy.delete_before(width, now) else {
            return true;
        };
        let mut total = 0u64;
        let mut done = false;
        for _ in 0..self.cfg.max_batches {
            if !self.go_on(run, gate).await {
                break;
            }
            let batch = self.store.expire(width, before, self.cfg.batch_rows);
            let Some(n) = self.step(run, Some(width), Step::Expire, batch).await else {
                // Failed: listed in `run.failed`, not in `run.behind`.
                done = true;
                break;
            };
            total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            if n < self.cfg.batch_rows {
                done = true;
                break;
            }
            // Let ingest's waiting transaction go first.
            tokio::task::yield_now().await;
        }
        let w = label("width", width.ms().to_string());
        self.metrics.expired.get_or_create(&w).inc_by(total);
        if total > 0 {
            run.expired.push((width, total));
        }
        if !done && !run.cut_short {
            run.behind.push(width);
        }
        if run.cut_short || !self.go_on(run, gate).await {
            return false;
        }
        let oldest = self.store.oldest(width);
        if let Some(oldest) = self.step(run, Some(width), Step::Oldest, oldest).await {
            let lag = match oldest {
                Some(start) if start < before => before.saturating_sub(start),
                _ => 0,
            };
            self.metrics.lag.get_or_create(&w).set(lag);
        }
        true
    }

    /// Gives freed space back, one bounded step per call (ingest waits for
    /// one at most). Also after a run that counted nothing: PostgreSQL's
    /// dropped partitions are counted by estimate (0 before an ANALYZE),
    /// and the bytes they held are reported here. With nothing to give
    /// back a call is a cheap read — SQLite: three header pragmas on the
    /// writer, 0.02–0.13 ms; PostgreSQL: a counter swap, ~1 µs
    /// (`retention_bench`) — so it is not worth skipping.
    async fn reclaim(&self, run: &mut Run, gate: &mut Option<Gate<'_>>) {
        for _ in 0..self.cfg.max_batches {
            if !self.go_on(run, gate).await {
                break;
            }
            let step = self.store.reclaim(self.cfg.vacuum_pages);
            let Some(freed) = self.step(run, None, Step::Reclaim, step).await else {
                break;
            };
            if freed == 0 {
                break;
            }
            run.freed_bytes = run.freed_bytes.saturating_add(freed);
            self.metrics.freed_bytes.inc_by(freed);
            tokio::task::yield_now().await;
        }
    }

    /// Whether the run may take its next step: always without a gate;
    /// with one, while the task is not stopping and the lease is still
    /// ours (renewed when due). Otherwise marks the run cut short (a lease
    /// the store cannot answer is also a failed step).
    async fn go_on(&self, run: &mut Run, gate: &mut Option<Gate<'_>>) -> bool {
        let Some(g) = gate else {
            return true;
        };
        let stopping = *g.stop.borrow();
        let go = !stopping && self.lead(&mut *g.lease, Some(run)).await;
        run.cut_short |= !go;
        go
    }

    /// Whether this instance holds the lease (takes it, or renews it when
    /// due). A store error is counted as step [`Step::Lease`] (and listed
    /// in `run`, if any) and answers no.
    async fn lead(&self, lease: &mut HeldLease, run: Option<&mut Run>) -> bool {
        match lease.role(&self.store).await {
            Ok(Role::Leader { .. }) => true,
            Ok(Role::Standby) => false,
            Err(_) => {
                // Logged by the lease.
                self.metrics
                    .errors
                    .get_or_create(&error_labels(None, Step::Lease))
                    .inc();
                if let Some(run) = run {
                    run.failed.push((None, Step::Lease));
                }
                false
            }
        }
    }

    /// Awaits one step: its answer, or `None` after logging the failure,
    /// counting it and listing it in `run`.
    async fn step<T>(
        &self,
        run: &mut Run,
        width: Option<Width>,
        step: Step,
        f: impl std::future::Future<Output = Answer<T>>,
    ) -> Option<T> {
        match f.await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(
                    width = width.map(|w| w.ms()),
                    step = step.name(),
                    error = %e,
                    "retention step failed; the run goes on, the step is retried at the next run"
                );
                self.metrics
                    .errors
                    .get_or_create(&error_labels(width, step))
                    .inc();
                run.failed.push((width, step));
                None
            }
        }
    }

    /// Runs every `interval_ms` until `stop` turns true, each run only
    /// while this instance — called `holder` in the lease — holds the
    /// `retention` lease; gives the lease up on stopping. Does nothing when
    /// the policy never deletes.
    pub async fn run(self, holder: String, mut stop: watch::Receiver<bool>) {
        if !self.policy.deletes() {
            return;
        }
        let mut lease = HeldLease::new(
            LEASE,
            &holder,
            self.cfg.lease(),
            self.metrics.leader.clone(),
        )
        .timed_by(self.lease_clock.clone());
        let mut tick = tokio::time::interval(self.cfg.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Between runs the holder renews the lease when due, so it keeps
            // it however long `interval_ms` is.
            let renew = lease.renew_in();
            let due = tokio::select! {
                _ = tick.tick() => true,
                () = tokio::time::sleep(renew.unwrap_or_default()), if renew.is_some() => false,
                _ = stop.wait_for(|s| *s) => break,
            };
            if !due {
                self.lead(&mut lease, None).await;
                continue;
            }
            if !self.lead(&mut lease, None).await {
                self.metrics.skipped.inc();
                continue;
            }
            let gate = Gate {
                lease: &mut lease,
                stop: &stop,
            };
            let run = self
                .run_gated(tributary_runtime::now_ms(), Some(gate))
                .await;
            if run.eventful() {
                let failed: Vec<String> = run
                    .failed
                    .iter()
                    .map(|(w, s)| match w {
                        Some(w) => format!("{}@{}", s.name(), w.ms()),
                        None => s.name().to_string(),
                    })
                    .collect();
                tracing::info!(
                    expired = ?run.expired,
                    freed_bytes = run.freed_bytes,
                    behind = ?run.behind,
                    failed = ?failed,
                    cut_short = run.cut_short,
                    "retention run"
                );
            }
        }
        if lease.give_up(&self.store).await.is_err() {
            self.metrics
                .errors
                .get_or_create(&error_labels(None, Step::Lease))
                .inc();
        }
    }
}
