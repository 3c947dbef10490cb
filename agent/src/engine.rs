//! The engine: the single owner of the windower and the store.
//!
//! # Design
//! Sources send [`Cmd`]s over one bounded channel (backpressure) to the
//! engine, which runs on its own thread. It applies input to the in-memory
//! windower and de-dup state at once, and acknowledges nothing until the
//! group commit that makes the input durable: a commit happens
//! `commit_interval_ms` after the first uncommitted input, or earlier when
//! `commit_max_readings` are pending. After the commit it sends the link
//! Acks, fires the MQTT acknowledgements and wakes the uplink.
//!
//! If a commit fails (full disk, corrupt database) the engine stops with an
//! error and the agent exits non-zero: nothing uncommitted was acknowledged,
//! so a restart resumes from the last commit without loss.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use tributary_core::frame::{Ack, Message, TimeSync};
use tributary_core::{Quantum, SeriesKey, Width};

use crate::config::Config;
use crate::link::device::{DeviceState, FrameOutcome};
use crate::metrics::{Metrics, Reject};
use crate::sources::json::JsonMessage;
use crate::store::outbox::Limits;
use crate::store::{Commit, FormedBatch, SeriesRow, Store, StoreError};
use crate::tags::GlobalTags;
use crate::window::{SeriesId, SourceId, Windower};

/// Wall-clock now in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fired-after-commit acknowledgement.
pub type Done = oneshot::Sender<()>;

/// Where a link's replies (TimeSync, Acks) go.
pub type Reply = mpsc::UnboundedSender<Message>;

/// A request to the engine.
#[derive(Debug)]
pub enum Cmd {
    /// Decoded frames from a device link (serial, simulated, or MQTT summaries).
    Link {
        /// A stable link name (port path, `sim:…`, `mqtt:{device}`).
        link: String,
        /// The frames with their arrival times (ms).
        frames: Vec<(Message, i64)>,
        /// Where TimeSync and Acks go (none for MQTT, which acks by PUBACK).
        reply: Option<Reply>,
        /// A device clock offset known exactly (simulated devices).
        fixed_offset: Option<i64>,
        /// Fired after the frames' effect is committed.
        done: Option<Done>,
    },
    /// JSON readings of `device` from the local broker.
    Json {
        /// Device id from the topic.
        device: String,
        /// The parsed message.
        msg: JsonMessage,
        /// Fired after commit.
        done: Option<Done>,
    },
    /// Registers (or finds) a series for bulk input.
    Register {
        /// The key.
        key: SeriesKey,
        /// Its quantum.
        quantum: Quantum,
        /// The id, or why not.
        reply: oneshot::Sender<Result<SeriesId, Reject>>,
    },
    /// Readings of one series, already in ticks (bulk, in-process).
    Bulk {
        /// The series.
        series: SeriesId,
        /// (event time, ticks).
        points: Vec<(i64, i64)>,
        /// Fired after commit.
        done: Option<Done>,
    },
    /// The de-dup mark of a device boot (simulated devices resume after it).
    DeviceHwm {
        /// Device id.
        device: String,
        /// Boot.
        boot: u32,
        /// The mark.
        reply: oneshot::Sender<Option<u32>>,
    },
    /// Forms up to `max` new batches.
    FormBatches {
        /// How many at most.
        max: usize,
        /// The batches.
        reply: oneshot::Sender<Vec<FormedBatch>>,
    },
    /// Every formed, unconfirmed batch.
    Unconfirmed {
        /// The batches.
        reply: oneshot::Sender<Vec<FormedBatch>>,
    },
    /// The collector confirmed these batch sequences.
    Confirmed(Vec<u64>),
    /// Commit now (e.g. before shutdown) and report back.
    Sync(oneshot::Sender<()>),
}

/// The engine's state.
pub(crate) struct Engine {
    cfg: Config,
    store: Store,
    win: Windower,
    metrics: Arc<Metrics>,
    uplink_wake: Arc<Notify>,
    limits: Limits,
    /// Added to every series key, in [`Engine::series`] only.
    tags: GlobalTags,
    /// By the key with the global tags applied.
    series_ids: HashMap<SeriesKey, SeriesId>,
    source_ids: HashMap<String, SourceId>,
    stored_wm: Vec<Option<i64>>,
    devices: HashMap<(String, u32), DeviceState>,
    links: HashMap<String, (String, u32)>,
    pending: Commit,
    pending_readings: u64,
    first_pending: Option<Instant>,
    acks: Vec<(Reply, Ack)>,
    dirty_devices: std::collections::HashSet<(String, u32)>,
    dones: Vec<Done>,
}

impl Engine {
    /// Opens the store and restores state.
    pub(crate) fn open(
        cfg: Config,
        metrics: Arc<Metrics>,
        uplink_wake: Arc<Notify>,
    ) -> Result<Engine, StoreError> {
        let store = Store::open(&cfg.db_path(), cfg.store.synchronous)?;
        let loaded = store.load()?;
        let now = now_ms();
        let mut win = Windower::new(
            cfg.width(),
            cfg.window.allowed_lateness_ms,
            cfg.window.idle_close_ms,
        );
        let mut source_ids = HashMap::new();
        let mut stored_wm = Vec::new();
        for (name, wm) in loaded.sources {
            let id = win.add_source(now);
            if let Some(wm) = wm {
                win.restore_watermark(id, wm);
            }
            source_ids.insert(name, id);
            stored_wm.push(wm);
        }
        let mut series_ids = HashMap::new();
        for s in loaded.series {
            let id = win.add_series(s.key.clone(), s.quantum, s.source, s.closed_before);
            series_ids.insert(s.key, id);
        }
        for (s, start, sum) in loaded.windows {
            win.restore_window(s, start, sum);
        }
        let tags = cfg.global_tags();
        let mut devices = HashMap::new();
        for d in loaded.devices {
            let st = DeviceState::restore(&d, |key| {
                let key = tags.apply(key).ok()?;
                series_ids.get(key.as_ref()).copied()
            });
            devices.insert((d.device.clone(), d.boot), st);
        }
        let links = loaded
            .links
            .into_iter()
            .map(|(l, d, b)| (l, (d, b)))
            .collect();
        metrics.series.store(series_ids.len() as u64, Relaxed);
        metrics.outbox_bytes.store(store.outbox_bytes(), Relaxed);
        metrics.store_ok.store(1, Relaxed);
        let limits = Limits {
            max_bytes: cfg.outbox.max_bytes,
            widths: cfg
                .outbox
                .coarsen_widths_ms
                .iter()
                .filter_map(|&w| Width::new(w).ok())
                .collect(),
        };
        tracing::info!(
            series = series_ids.len(),
            open_readings = win.open_readings(),
            outbox_bytes = store.outbox_bytes(),
            "state restored from {}",
            cfg.db_path().display()
        );
        Ok(Engine {
            cfg,
            store,
            win,
            metrics,
            uplink_wake,
            limits,
            tags,
            series_ids,
            source_ids,
            stored_wm,
            devices,
            links,
            pending: Commit::default(),
            pending_readings: 0,
            first_pending: None,
            acks: Vec::new(),
            dirty_devices: Default::default(),
            dones: Vec::new(),
        })
    }

    /// Runs until every sender is gone; commits what is pending on the way out.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) -> Result<(), StoreError> {
        let interval = Duration::from_millis(self.cfg.store.commit_interval_ms);
        let tick = interval.max(Duration::from_millis(100));
        // A window that input made due is committed (closed and sent) early,
        // at most once per fifth of the interval, rather than at the end of
        // the group commit: it reaches the collector up to an interval sooner.
        let early = (interval / 5).max(Duration::from_millis(2));
        let mut last_commit = Instant::now();
        loop {
            let mut wait = match self.first_pending {
                Some(t) => interval.saturating_sub(t.elapsed()),
                None => tick,
            };
            if self.win.has_due() {
                wait = wait.min(early.saturating_sub(last_commit.elapsed()));
            }
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(cmd)) => self.handle(cmd)?,
                Ok(None) => break,
                Err(_) => {}
            }
            let due = self.first_pending.is_some_and(|t| t.elapsed() >= interval)
                || self.pending_readings >= self.cfg.store.commit_max_readings
                || self.win.has_due() && last_commit.elapsed() >= early;
            if due || self.first_pending.is_none() && wait == tick {
                self.commit()?;
                last_commit = Instant::now();
            }
        }
        self.commit()
    }

    fn mark_pending(&mut self, readings: u64) {
        self.pending_readings += readings;
        if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
        }
    }

    fn source(&mut self, name: &str) -> SourceId {
        if let Some(&id) = self.source_ids.get(name) {
            return id;
        }
        let id = self.win.add_source(now_ms());
        self.source_ids.insert(name.to_string(), id);
        self.stored_wm.push(None);
        self.pending.new_sources.push((id, name.to_string()));
        id
    }

    /// Finds or registers the series of a source's `key`, with the global
    /// tags added (the one place they are), enforcing the limits.
    pub(crate) fn series(&mut self, key: &SeriesKey, quantum: Quantum) -> Result<SeriesId, Reject> {
        let key = match self.tags.apply(key) {
            Ok(k) => k,
            Err(tributary_core::series::KeyError::TooManyTags(_)) => {
                return Err(Reject::TooManyTags)
            }
            Err(_) => return Err(Reject::BadKey),
        };
        let key = key.as_ref();
        if let Some(&id) = self.series_ids.get(key) {
            return Ok(id);
        }
        if key.tags().len() > self.cfg.limits.max_tags {
            return Err(Reject::TooManyTags);
        }
        if self.series_ids.len() >= self.cfg.limits.max_series {
            return Err(Reject::SeriesLimit);
        }
        let source = self.source(key.device());
        let id = self.win.add_series(key.clone(), quantum, source, i64::MIN);
        self.series_ids.insert(key.clone(), id);
        self.pending.new_series.push(SeriesRow {
            id,
            key: key.clone(),
            quantum,
            source,
            closed_before: i64::MIN,
        });
        self.metrics
            .series
            .store(self.series_ids.len() as u64, Relaxed);
        Ok(id)
    }

    fn handle(&mut self, cmd: Cmd) -> Result<(), StoreError> {
        match cmd {
            Cmd::Link {
                link,
                frames,
                reply,
                fixed_offset,
                done,
            } => {
                for (msg, arrival) in frames {
                    self.link_frame(&link, msg, arrival, reply.as_ref(), fixed_offset);
                }
                if let Some(d) = done {
                    self.dones.push(d);
                    self.mark_pending(0);
                }
            }
            Cmd::Json { device, msg, done } => {
                self.json(&device, msg);
                if let Some(d) = done {
                    self.dones.push(d);
                }
                self.mark_pending(0);
            }
            Cmd::Register {
                key,
                quantum,
                reply,
            } => {
                let r = self.series(&key, quantum);
                if r.is_ok() {
                    self.mark_pending(0);
                }
                let _ = reply.send(r);
            }
            Cmd::Bulk {
                series,
                points,
                done,
            } => {
                let (n, err) = self.win.insert_many(series, &points, now_ms());
                if err.is_err() {
                    let bad = (points.len() - n) as u64;
                    for _ in 0..bad {
                        self.metrics.reject(Reject::BadValue);
                    }
                }
                self.metrics.readings_accepted.fetch_add(n as u64, Relaxed);
                if let Some(d) = done {
                    self.dones.push(d);
                }
                self.mark_pending(n as u64);
            }
            Cmd::DeviceHwm {
                device,
                boot,
                reply,
            } => {
                let hwm = self
                    .devices
                    .get(&(device, boot))
                    .and_then(|d| d.dedupe.hwm());
                let _ = reply.send(hwm);
            }
            Cmd::FormBatches { max, reply } => {
                let wm = self.win.watermark();
                let formed = self.store.form_batches(
                    &self.cfg.agent_id,
                    wm,
                    max,
                    self.cfg.outbox.batch_max_partials,
                    self.cfg.uplink.encoding,
                );
                let formed = self.store_result(formed)?;
                self.metrics
                    .batches_formed
                    .fetch_add(formed.len() as u64, Relaxed);
                self.metrics
                    .outbox_bytes
                    .store(self.store.outbox_bytes(), Relaxed);
                let _ = reply.send(formed);
            }
            Cmd::Unconfirmed { reply } => {
                let r = self.store.unconfirmed();
                let _ = reply.send(self.store_result(r)?);
            }
            Cmd::Confirmed(seqs) => {
                let r = self.store.confirm(&seqs);
                let (n, readings) = self.store_result(r)?;
                self.metrics.batches_confirmed.fetch_add(n, Relaxed);
                self.metrics.readings_confirmed.fetch_add(readings, Relaxed);
                self.metrics
                    .outbox_bytes
                    .store(self.store.outbox_bytes(), Relaxed);
                if n > 0 {
                    self.uplink_wake.notify_one();
                }
            }
            Cmd::Sync(reply) => {
                self.commit()?;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    fn store_result<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.metrics.store_ok.store(0, Relaxed);
            tracing::error!(error = %e, "store operation failed; stopping so a restart resumes from the last commit");
        }
        r
    }

    fn link_frame(
        &mut self,
        link: &str,
        msg: Message,
        arrival: i64,
        reply: Option<&Reply>,
        fixed_offset: Option<i64>,
    ) {
        let now = now_ms();
        match msg {
            Message::Hello(h) => {
                self.metrics.frames_received.fetch_add(1, Relaxed);
                let device = h.device.as_str().to_string();
                if let Err(e) = tributary_core::series::validate_id("device id", &device) {
                    tracing::warn!(link, error = %e, "Hello with an invalid device id rejected");
                    self.metrics.reject(Reject::BadKey);
                    return;
                }
                let key = (device.clone(), h.boot);
                let mut series = Vec::new();
                for ch in &h.channels {
                    let sk =
                        SeriesKey::new(ch.metric.as_str(), device.as_str(), Default::default());
                    match sk
                        .map_err(|_| Reject::BadKey)
                        .and_then(|k| self.series(&k, ch.quantum))
                    {
                        Ok(id) => series.push((ch.channel, id)),
                        Err(r) => {
                            tracing::warn!(link, device, channel = ch.channel, metric = %ch.metric, reason = ?r, "device channel refused");
                            self.metrics.reject(r);
                        }
                    }
                }
                let st = self
                    .devices
                    .entry(key.clone())
                    .or_insert_with(|| DeviceState::new(h.clone()));
                st.hello(h, arrival, fixed_offset, series);
                if let Some(fit) = st.clock_fit() {
                    self.metrics.set_clock(&device, fit);
                }
                self.dirty_devices.insert(key.clone());
                if self.links.get(link) != Some(&key) {
                    self.links.insert(link.to_string(), key.clone());
                    self.pending
                        .links
                        .push((link.to_string(), key.0.clone(), key.1));
                }
                if let Some(r) = reply {
                    let _ = r.send(Message::TimeSync(TimeSync { unix_ms: now }));
                }
                self.mark_pending(0);
            }
            Message::Summary(_) | Message::Reading(_) => {
                let Some(key) = self.links.get(link).cloned() else {
                    tracing::warn!(
                        link,
                        "data frame before any Hello on this link; not acknowledged"
                    );
                    self.metrics.reject(Reject::UnknownDevice);
                    return;
                };
                let boot = match &msg {
                    Message::Summary(f) => f.boot,
                    Message::Reading(f) => f.boot,
                    _ => return,
                };
                let Some(st) = self.devices.get_mut(&(key.0.clone(), boot)) else {
                    tracing::warn!(
                        link,
                        device = key.0,
                        boot,
                        "data frame of a boot whose Hello was not seen; not acknowledged"
                    );
                    self.metrics.reject(Reject::UnknownDevice);
                    return;
                };
                self.metrics.frames_received.fetch_add(1, Relaxed);
                let width = self.win.width();
                let out = st.frame(&msg, arrival, width, &mut self.win, now);
                if let Some(fit) = st.clock_fit() {
                    self.metrics.set_clock(&key.0, fit);
                }
                let seq = match &msg {
                    Message::Summary(f) => f.seq,
                    Message::Reading(f) => f.seq,
                    _ => return,
                };
                match out {
                    FrameOutcome::Duplicate => {
                        self.metrics.frames_duplicate.fetch_add(1, Relaxed);
                    }
                    FrameOutcome::Applied(n) => {
                        self.metrics.readings_accepted.fetch_add(n, Relaxed);
                        self.pending_readings += n;
                    }
                    FrameOutcome::Refused(r, why) => {
                        tracing::warn!(link, device = key.0, boot, seq, reason = ?r, "frame refused: {why}");
                        self.metrics.reject(r);
                    }
                }
                self.dirty_devices.insert((key.0.clone(), boot));
                if let Some(r) = reply {
                    self.acks.push((r.clone(), Ack { boot, seq }));
                }
                self.mark_pending(0);
            }
            Message::Ack(_) | Message::TimeSync(_) => {
                tracing::debug!(link, "ignoring gateway-bound frame type from a device");
            }
        }
    }

    fn json(&mut self, device: &str, msg: JsonMessage) {
        let now = now_ms();
        if let Some((boot, seq)) = msg.id {
            let st = self
                .devices
                .entry((device.to_string(), boot))
                .or_insert_with(|| DeviceState::for_json(device, boot));
            if st.dedupe.seen(seq) {
                self.metrics.frames_duplicate.fetch_add(1, Relaxed);
                return;
            }
            st.dedupe.record(seq);
            self.dirty_devices.insert((device.to_string(), boot));
        }
        let quantum = Quantum::new(self.cfg.limits.default_quantum).unwrap_or_default();
        let mut accepted = 0u64;
        for r in msg.readings {
            let key = match SeriesKey::new(r.metric.as_str(), device, r.tags) {
                Ok(k) => k,
                Err(e) => {
                    let reason = if matches!(e, tributary_core::series::KeyError::TooManyTags(_)) {
                        Reject::TooManyTags
                    } else {
                        Reject::BadKey
                    };
                    tracing::warn!(device, error = %e, "JSON reading refused");
                    self.metrics.reject(reason);
                    continue;
                }
            };
            let id = match self.series(&key, quantum) {
                Ok(id) => id,
                Err(reason) => {
                    tracing::warn!(device, series = %key, ?reason, "JSON reading refused");
                    self.metrics.reject(reason);
                    continue;
                }
            };
            let q = self.win.series(id).map_or(quantum, |s| s.quantum());
            let ticks = match q.ticks(r.value) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(device, series = %key, error = %e, "JSON reading refused");
                    self.metrics.reject(Reject::BadValue);
                    continue;
                }
            };
            match self.win.insert(id, r.time, ticks, now) {
                Ok(()) => accepted += 1,
                Err(e) => {
                    tracing::warn!(device, series = %key, error = %e, "JSON reading refused");
                    self.metrics.reject(Reject::BadValue);
                }
            }
        }
        self.metrics.readings_accepted.fetch_add(accepted, Relaxed);
        self.mark_pending(accepted);
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let flush = self.win.flush(now_ms());
        let nothing = flush.emitted.is_empty()
            && flush.checkpoints.is_empty()
            && flush.deleted.is_empty()
            && self.first_pending.is_none();
        if nothing {
            return Ok(());
        }
        let mut c = std::mem::take(&mut self.pending);
        c.flush = flush;
        for key in self.dirty_devices.drain() {
            if let Some(st) = self.devices.get(&key) {
                c.devices.push(st.row(&key.0, key.1));
            }
        }
        for (i, stored) in self.stored_wm.iter_mut().enumerate() {
            let wm = self.win.source_watermark(i as SourceId);
            if wm != *stored {
                if let Some(w) = wm {
                    c.watermarks.push((i as SourceId, w));
                }
                *stored = wm;
            }
        }
        let revisions = c.flush.emitted.iter().filter(|e| e.revision).count() as u64;
        let emitted = c.flush.emitted.len() as u64;
        let r = self.store.commit(&c, &self.limits);
        let out = self.store_result(r)?;
        self.metrics.store_ok.store(1, Relaxed);
        self.metrics.record_commit(started.elapsed());
        self.metrics
            .partials_emitted
            .fetch_add(emitted - revisions, Relaxed);
        self.metrics.revisions_emitted.fetch_add(revisions, Relaxed);
        self.metrics
            .partials_coarsened
            .fetch_add(out.coarsened, Relaxed);
        self.metrics
            .readings_dropped
            .fetch_add(out.dropped_readings, Relaxed);
        self.metrics
            .outbox_bytes
            .store(self.store.outbox_bytes(), Relaxed);
        for (reply, ack) in self.acks.drain(..) {
            let _ = reply.send(Message::Ack(ack));
        }
        for d in self.dones.drain(..) {
            let _ = d.send(());
        }
        self.pending_readings = 0;
        self.first_pending = None;
        if emitted > 0 {
            self.uplink_wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
