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
//! If a commit fails (full disk, corrupt database) the engine stops with an
//! error and the agent exits non-zero: nothing uncommitted was acknowledged,
//! so a restart resumes from the last commit without loss.
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
mod state;
pub mod tags;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::metrics::Metrics;
use crate::store::{Store, StoreConfig, StoreError};
use crate::window::WindowConfig;
use state::State;

pub use config::LimitsConfig;
pub use input::{Done, Input, Reply};
pub(crate) use outbound::Outbound;
pub use tags::GlobalTags;

/// What an engine is made of: its store, the sections it reads and where
/// its batches go.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    /// The opened store.
    pub(crate) store: Store,
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
    interval: Duration,
    max_pending_readings: u64,
}

impl Engine {
    /// Restores the state of the last commit from the store.
    pub(crate) fn open(p: Parts<'_>) -> Result<Engine, StoreError> {
        let loaded = p.store.load()?;
        let st = State::restore(loaded, p.window, p.limits, p.tags, p.metrics);
        st.metrics.outbox_bytes.set(p.store.outbox_bytes());
        st.metrics.store_ok.set(1);
        tracing::info!(
            series = st.registry.len(),
            open_readings = st.win.open_readings(),
            outbox_bytes = p.store.outbox_bytes(),
            "state restored from {}",
            p.store.path().display()
        );
        Ok(Engine {
            store: p.store,
            st,
            outbound: p.outbound,
            interval: Duration::from_millis(p.commit.commit_interval_ms),
            max_pending_readings: p.commit.commit_max_readings,
        })
    }

    /// Runs until every sender is gone; commits what is pending on the way out.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Input>) -> Result<(), StoreError> {
        self.outbound.resume(&self.store, &self.st.metrics)?;
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
            let mut wait = match self.st.pending.since {
                Some(t) => interval.saturating_sub(t.elapsed()),
                None => tick,
            };
            if self.st.win.has_due() {
                wait = wait.min(early.saturating_sub(last_commit.elapsed()));
            }
            match self.next(&mut rx, wait).await {
                Next::Input(input) => self.handle(input)?,
                Next::Uplink => self.form_batches()?,
                Next::Idle => {}
                Next::Closed => break,
            }
            let pending = &self.st.pending;
            let due = pending.since.is_some_and(|t| t.elapsed() >= interval)
                || pending.readings >= self.max_pending_readings
                || self.st.win.has_due() && last_commit.elapsed() >= early;
            if due || pending.since.is_none() && wait == tick {
                self.commit()?;
                last_commit = Instant::now();
            }
        }
        self.commit()
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

    fn handle(&mut self, input: Input) -> Result<(), StoreError> {
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
            Input::Confirmed(seqs) => {
                let wm = st.win.watermark();
                self.outbound
                    .confirmed(&mut self.store, &seqs, wm, &self.st.metrics)?;
            }
            Input::Sync(reply) => {
                self.commit()?;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    /// A group commit, then batches of what it emitted.
    fn commit(&mut self) -> Result<(), StoreError> {
        if commit::commit(&mut self.st, &mut self.store)? > 0 {
            self.form_batches()?;
        }
        Ok(())
    }

    /// Forms the batches there is room for.
    fn form_batches(&mut self) -> Result<(), StoreError> {
        let wm = self.st.win.watermark();
        self.outbound.form(&mut self.store, wm, &self.st.metrics)
    }
}

#[cfg(test)]
mod tests;
