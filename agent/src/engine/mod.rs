//! The engine: the single owner of the windower and the store.
//!
//! # Design
//! Sources send [`Input`]s over one bounded channel (backpressure) to the
//! engine, which runs on its own thread. It applies input to the in-memory
//! windower and de-dup state at once, and acknowledges nothing until the
//! group commit that makes the input durable: a commit happens
//! `store.commit_interval_ms` after the first uncommitted input, or earlier
//! when `store.commit_max_readings` are pending or an input made a window
//! due. After the commit it sends the link Acks, fires the MQTT
//! acknowledgements and forms batches for the uplink (`outbound`).
//!
//! If a commit fails (full disk, corrupt database) the engine does not
//! stop: it holds the failed commit and every acknowledgement, goes on
//! taking input, says why on `/health` and `/metrics`, and retries until a
//! commit succeeds (`stall`). Nothing uncommitted was acknowledged, so a
//! restart at any point also resumes from the last commit without loss.
//!
//! # Layout
//! - this file — the loop (when to commit) and the dispatch of inputs;
//! - [`input`] — the [`Input`] enum;
//! - `state` — the in-memory state input is applied to: the windower, the
//!   `registry` of sources and series (with the global [`tags`] and the
//!   [`config`] limits), the `devices` boots and links, and the `pending`
//!   acknowledgements;
//! - `frames` — Hello and data frames; `readings` — JSON and in-process
//!   readings;
//! - `commit` — assembling and running a group commit, acknowledging after it;
//! - `stall` — what is held while the store fails, and when to retry;
//! - `outbound` — forming batches for the uplink and deleting confirmed ones.
//!
//! The files depend one way: this one on the others, `frames`, `readings`
//! and `commit` on `state`, `state` on the parts it holds.

mod commit;
pub mod config;
mod devices;
mod frames;
pub mod input;
mod outbound;
mod pending;
mod readings;
mod registry;
mod stall;
mod state;
pub mod tags;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::metrics::Metrics;
use crate::store::{FormedBatch, Loaded, OutboxConfig, Store, StoreConfig, StoreError};
use crate::window::WindowConfig;
use stall::Stall;
use state::State;

pub use config::LimitsConfig;
pub use input::{Done, Input, Reply};
pub(crate) use outbound::Outbound;
pub use tags::GlobalTags;

/// The store, opened, and what was read back from it to resume.
#[derive(Debug)]
pub(crate) struct Opened {
    store: Store,
    loaded: Loaded,
    unconfirmed: Vec<FormedBatch>,
}

impl Opened {
    /// The database's incarnation.
    pub(crate) fn incarnation(&self) -> tributary_core::Incarnation {
        self.store.incarnation()
    }

    /// Opens the store at `path` and reads it back.
    pub(crate) fn open(
        path: &Path,
        store: &StoreConfig,
        outbox: &OutboxConfig,
    ) -> Result<Opened, StoreError> {
        Opened::read(Store::open(path, store, outbox)?)
    }

    /// Reads back from `store` what the engine resumes from.
    pub(crate) fn read(store: Store) -> Result<Opened, StoreError> {
        let loaded = store.load()?;
        let unconfirmed = store.unconfirmed()?;
        Ok(Opened {
            store,
            loaded,
            unconfirmed,
        })
    }
}

/// What an engine is made of: its store, the sections it reads and where
/// its batches go.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    /// The opened store.
    pub(crate) opened: Opened,
    /// `[window]`.
    pub(crate) window: &'a WindowConfig,
    /// `[store]` (the group commit's timing).
    pub(crate) commit: &'a StoreConfig,
    /// `[limits]`.
    pub(crate) limits: &'a LimitsConfig,
    /// `[tags]`.
    pub(crate) tags: GlobalTags,
    /// The uplink's end.
    pub(crate) outbound: Outbound,
    /// The metrics it keeps.
    pub(crate) metrics: Arc<Metrics>,
}

/// What woke the engine's loop.
enum Next {
    /// An input.
    Input(Input),
    /// The uplink's connection state changed.
    Uplink,
    /// Nothing, for `wait`.
    Idle,
    /// Every sender is gone.
    Closed,
}

/// The engine.
#[derive(Debug)]
pub(crate) struct Engine {
    store: Store,
    st: State,
    outbound: Outbound,
    stall: Stall,
    interval: Duration,
    max_pending_readings: u64,
}

impl Engine {
    /// Restores the state of the last commit from the store and hands the
    /// uplink every unconfirmed batch.
    pub(crate) fn open(p: Parts<'_>) -> Engine {
        let Opened {
            store,
            loaded,
            unconfirmed,
        } = p.opened;
        let st = State::restore(loaded, p.window, p.limits, p.tags, p.metrics);
        let m = &st.metrics;
        // Dropped readings are counted durably: the counter goes on from there.
        let dropped = store.dropped_total();
        m.readings_dropped
            .inc_by(dropped.saturating_sub(m.readings_dropped.get()));
        m.set_outbox(store.row_bytes(), store.batch_bytes());
        m.store_recovered();
        tracing::info!(
            series = st.registry.len(),
            open_readings = st.win.open_readings(),
            outbox_bytes = store.outbox_bytes(),
            readings_dropped = dropped,
            "state restored from {}",
            store.path().display()
        );
        let mut outbound = p.outbound;
        outbound.hand_over(unconfirmed, m);
        Engine {
            store,
            st,
            outbound,
            stall: Stall::default(),
            interval: Duration::from_millis(p.commit.commit_interval_ms),
            max_pending_readings: p.commit.commit_max_readings,
        }
    }

    /// Runs until every sender is gone; commits what is pending on the way
    /// out (an error then is the engine's: the store still fails).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Input>) -> Result<(), StoreError> {
        let interval = self.interval;
        // With nothing pending, a commit every tick still closes the windows
        // of sources that went idle (by the wall clock).
        let tick = interval.max(Duration::from_millis(100));
        // A window that input made due is committed (closed and sent) early,
        // at most once per fifth of the interval, rather than at the end of
        // the group commit: it reaches the collector up to an interval sooner.
        let early = (interval / 5).max(Duration::from_millis(2));
        let mut last_commit = Instant::now();
        loop {
            self.st.metrics.health.beat();
            let mut wait = match self.st.pending.since {
                Some(t) => interval.saturating_sub(t.elapsed()),
                None => tick,
            };
            if self.st.win.has_due() {
                wait = wait.min(early.saturating_sub(last_commit.elapsed()));
            }
            // While the store fails, the next try is all there is to wait for.
            if let Some(retry) = self.stall.retry_in() {
                wait = retry.min(tick);
            }
            match self.next(&mut rx, wait).await {
                Next::Input(input) => self.handle(input),
                Next::Uplink => self.form_batches(),
                Next::Idle => {}
                Next::Closed => break,
            }
            let pending = &self.st.pending;
            self.st.metrics.inputs_unacknowledged.set(pending.held());
            let due = match self.stall.retry_in() {
                Some(left) => left.is_zero(),
                None => {
                    pending.since.is_some_and(|t| t.elapsed() >= interval)
                        || pending.readings >= self.max_pending_readings
                        || self.st.win.has_due() && last_commit.elapsed() >= early
                        || pending.since.is_none() && wait == tick
                }
            };
            if due {
                self.commit();
                last_commit = Instant::now();
            }
        }
        self.try_commit().map(|_| ())
    }

    /// What to do next: an input already waiting is taken at once, without
    /// a timer (the hot path under load), after a look at the uplink's
    /// connection state (so a change is seen however busy the input is);
    /// else whichever comes first, waiting at most `wait`.
    async fn next(&mut self, rx: &mut mpsc::Receiver<Input>, wait: Duration) -> Next {
        if self.outbound.take_change() {
            return Next::Uplink;
        }
        match rx.try_recv() {
            Ok(input) => return Next::Input(input),
            Err(TryRecvError::Disconnected) => return Next::Closed,
            Err(TryRecvError::Empty) => {}
        }
        tokio::select! {
            input = rx.recv() => input.map_or(Next::Closed, Next::Input),
            () = self.outbound.changed() => Next::Uplink,
            () = tokio::time::sleep(wait) => Next::Idle,
        }
    }

    fn handle(&mut self, input: Input) {
        let st = &mut self.st;
        match input {
            Input::Link {
                link,
                frames,
                reply,
                fixed_offset,
                done,
            } => {
                frames::link(st, &link, frames, reply.as_ref(), fixed_offset);
                if done.is_some() {
                    st.pending.done(done);
                    st.pending.mark(0);
                }
            }
            Input::Json { device, msg, done } => {
                readings::json(st, &device, msg);
                st.pending.done(done);
                st.pending.mark(0);
            }
            Input::Readings {
                key,
                quantum,
                points,
                done,
            } => {
                readings::in_process(st, &key, quantum, &points);
                st.pending.done(done);
            }
            Input::DeviceHwm {
                device,
                boot,
                reply,
            } => {
                let _ = reply.send(st.devices.hwm(device, boot));
            }
            Input::Confirmed(seqs) => self.confirmed(seqs),
            Input::Sync(reply) => {
                self.commit();
                let _ = reply.send(());
            }
        }
    }

    /// The collector confirmed `seqs`: delete them and form more (while the
    /// store fails, they are deleted at the next try).
    fn confirmed(&mut self, seqs: Vec<u64>) {
        if self.stall.is_failing() {
            self.stall.hold_confirms(seqs);
            return;
        }
        let m = &self.st.metrics;
        match self.outbound.confirmed(&mut self.store, &seqs, m) {
            Ok(()) => self.form_batches(),
            Err(e) => {
                self.stall.hold_confirms(seqs);
                self.stall.failed(&e, m);
            }
        }
    }

    /// A group commit (after what a failing store held), then batches of
    /// what it emitted; a failure is held for the next try.
    fn commit(&mut self) {
        let recovering = self.stall.is_failing();
        match self.try_commit() {
            Ok(emitted) => {
                if recovering {
                    self.stall.recovered(&self.st.metrics);
                }
                if emitted > 0 || recovering {
                    self.form_batches();
                }
            }
            Err(e) => self.stall.failed(&e, &self.st.metrics),
        }
    }

    /// Commits the commit that failed (if one did) as it was, deletes the
    /// confirmed batches still due, then commits everything since;
    /// returns the partials emitted. What fails is held for the next try.
    fn try_commit(&mut self) -> Result<u64, StoreError> {
        let mut emitted = 0;
        if let Some(c) = self.stall.take_failed() {
            match commit::run(&self.st, &mut self.store, &c) {
                Ok(n) => emitted += n,
                Err(e) => {
                    self.stall.hold(c);
                    return Err(e);
                }
            }
        }
        let seqs = self.stall.take_confirms();
        if !seqs.is_empty() {
            let m = &self.st.metrics;
            if let Err(e) = self.outbound.confirmed(&mut self.store, &seqs, m) {
                self.stall.hold_confirms(seqs);
                return Err(e);
            }
        }
        match commit::commit(&mut self.st, &mut self.store) {
            Ok(n) => Ok(emitted + n),
            Err((c, e)) => {
                self.stall.hold(c);
                Err(e)
            }
        }
    }

    /// Forms the batches there is room for (none while the store fails).
    fn form_batches(&mut self) {
        if self.stall.is_failing() {
            return;
        }
        let wm = self.st.win.watermark();
        let m = &self.st.metrics;
        if let Err(e) = self.outbound.form(&mut self.store, wm, m) {
            self.stall.failed(&e, m);
        }
    }
}

#[cfg(test)]
mod tests;
