//! Simulated devices: N virtual devices in-process, each the firmware's own
//! aggregator and link code in a [`tributary_sim`] virtual device over
//! seeded, realistic sensors (drift, noise, zero crossings, spikes,
//! dropouts). The agent treats
//! a virtual device's link bytes like a serial device's: they go through a
//! [`FrameDecoder`] to the engine, whose replies (TimeSync after Hello, Acks
//! only after the commit) are encoded and fed back to the device's link, so
//! the firmware's resend ring, ack handling and TimeSync phase are exercised.
//!
//! # Virtual time
//! A device runs on a virtual clock: tick 0 is event time `start_ms`, and the
//! device is stepped one sampling period at a time, paced to about
//! `frame_rate` frames per second (0 = as fast as acks allow). The task is
//! the device's serial line *and* its view of the gateway clock: a TimeSync
//! from the engine is delivered as the virtual wall-clock time of the last
//! step, so the device's windows align to `start_ms` and the engine is told
//! the device's offset exactly (`fixed_offset`). Device time only advances
//! while fewer than `max_unacked` frames (at most [`RING_HEADROOM`]) await
//! an ack, so the firmware's 16-frame ring never overflows and no reading is
//! coarsened away or dropped. Because device time runs faster than the
//! engine commits, some frames are resent after the firmware's timeout and
//! de-duplicated by the engine.
//!
//! # Restarts
//! A virtual device lives in the agent's process, so `kill -9` kills it too.
//! It is deterministic (a pure function of its seed and the sampling ticks),
//! so on start the task asks the engine for the device's de-dup mark and
//! replays the device up to it, acknowledging the frames the engine already
//! has itself — as a real device would still hold its unacked ring.
//!
//! # Raw readings
//! [`agent_readings`]: the fleet's raw readings ([`tributary_sim`]) with the
//! series keys the agent forwards (its global tags applied), for the oracle.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Interval;
use tributary_core::frame::{FrameDecoder, Message, TimeSync, MAX_FRAME};
use tributary_runtime::now_ms;
use tributary_sim::config::SimulatedConfig;
use tributary_sim::device::SIM_CHANNELS;
use tributary_sim::fleet::{
    ack, data_seq, decode, deliver, SeriesReadings, SimDevice, Stepper, RING_HEADROOM,
};
use tributary_sim::AggregatorError;

use crate::engine::{GlobalTags, Input, LimitsConfig};

/// The raw readings of the simulated devices `sim` of an agent: the fleet's
/// with the series keys the agent forwards, i.e. with its global `tags`
/// applied exactly as the engine applies them. A series the engine would
/// refuse (more tags in all than `limits.max_tags`) has no readings here, as
/// it has no results.
pub fn agent_readings(
    sim: &SimulatedConfig,
    tags: &GlobalTags,
    limits: &LimitsConfig,
) -> Result<Vec<SeriesReadings>, AggregatorError> {
    Ok(tributary_sim::fleet::readings(sim)?
        .into_iter()
        .filter_map(|mut w| {
            let key = tags.apply(&w.series).ok()?.into_owned();
            (key.tags().len() <= limits.max_tags).then(|| {
                w.series = key;
                w
            })
        })
        .collect())
}

/// Runs one virtual device until its run is done (everything acked) or shutdown.
pub(crate) async fn run_device(
    sim: SimDevice,
    frame_rate: u32,
    max_unacked: usize,
    engine: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) {
    // The running device keeps no log: [`SimDevice::readings`] replays a
    // fresh one, and the log would grow for as long as this one runs.
    let dev = match sim.device() {
        Ok(d) => d.without_truth(),
        Err(e) => {
            tracing::error!(device = sim.name, error = ?e, "cannot build the virtual device");
            return;
        }
    };
    let (reply, replies) = mpsc::unbounded_channel();
    let mut v = VirtualLink {
        link: format!("sim:{}", sim.name),
        st: Stepper::new(&sim, dev),
        dec: FrameDecoder::new(),
        sim,
        reply,
        engine,
    };
    let (tx, rx) = oneshot::channel();
    let ask = Input::DeviceHwm {
        device: v.sim.name.clone(),
        boot: v.sim.boot(),
        reply: tx,
    };
    if v.engine.send(ask).await.is_err() {
        return;
    }
    let first = match rx.await.ok().flatten() {
        Some(hwm) => v.replay(hwm).await,
        None => Vec::new(),
    };
    if v.send(first).await {
        let pacing = Pacing::new(&v, frame_rate, max_unacked);
        v.pump(pacing, replies, shutdown).await;
    }
}

/// A virtual device and its in-process link to the engine.
struct VirtualLink {
    sim: SimDevice,
    st: Stepper,
    dec: FrameDecoder<MAX_FRAME>,
    link: String,
    /// Where the engine's replies to this link go.
    reply: mpsc::UnboundedSender<Message>,
    engine: mpsc::Sender<Input>,
}

/// How fast device time advances.
struct Pacing {
    /// Frames per second (0: as fast as acks allow).
    frame_rate: u32,
    /// Frames per sampling step.
    per_step: f64,
    /// Steps allowed but not yet taken (fractions carry over).
    budget: f64,
    /// Unacked frames at which device time stops.
    cap: usize,
    tick: Interval,
    /// Since when the device has been waiting for acks with nothing to send.
    gated_since: Option<Instant>,
}

/// How often a paced device is stepped.
const STEP_EVERY: Duration = Duration::from_millis(20);

impl Pacing {
    fn new(v: &VirtualLink, frame_rate: u32, max_unacked: usize) -> Self {
        let channels = SIM_CHANNELS.len() as f64;
        let per_step = if v.sim.config.raw {
            channels
        } else {
            channels * v.st.period as f64 / f64::from(v.sim.config.width_ms.max(1))
        };
        let mut tick = tokio::time::interval(STEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacing {
            frame_rate,
            per_step,
            budget: 0.0,
            cap: max_unacked.clamp(1, RING_HEADROOM),
            tick,
            gated_since: None,
        }
    }

    /// Sampling steps allowed this round.
    fn allowed(&mut self) -> usize {
        if self.frame_rate == 0 {
            return 4096;
        }
        self.budget += f64::from(self.frame_rate) / 50.0 / self.per_step.max(1e-9);
        let n = self.budget.floor();
        self.budget -= n;
        n as usize
    }
}

impl VirtualLink {
    /// Sends frames to the engine (they arrive now); false if it is gone.
    async fn send(&self, frames: Vec<Message>) -> bool {
        let arrival = now_ms();
        let input = Input::Link {
            link: self.link.clone(),
            frames: frames.into_iter().map(|m| (m, arrival)).collect(),
            reply: Some(self.reply.clone()),
            fixed_offset: Some(self.sim.start_ms),
            done: None,
        };
        self.engine.send(input).await.is_ok()
    }

    /// Replays the device up to the engine's de-dup mark `hwm`,
    /// acknowledging what the engine already has itself; returns a Hello
    /// and the first frames past the mark.
    async fn replay(&mut self, hwm: u32) -> Vec<Message> {
        let boot = self.sim.boot();
        let mut first = Vec::new();
        let mut steps = 0u64;
        loop {
            let bytes = self.st.step();
            for m in decode(&mut self.dec, &bytes) {
                match data_seq(&m) {
                    Some(seq) if seq <= hwm => ack(&mut self.st.dev, boot, seq),
                    Some(_) => first.push(m),
                    None => {}
                }
            }
            if !first.is_empty() || self.st.finished() {
                break;
            }
            steps += 1;
            if steps % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
        first.insert(0, Message::Hello(self.st.dev.hello(self.st.last_stepped)));
        tracing::debug!(
            device = self.sim.name,
            hwm,
            tick = self.st.last_stepped,
            "virtual device replayed to the engine's mark"
        );
        first
    }

    /// Steps device time by up to `allowed` sampling periods while fewer
    /// than `cap` frames await an ack; returns the frames and the steps.
    fn advance(&mut self, allowed: usize, cap: usize) -> (Vec<Message>, usize) {
        let mut frames = Vec::new();
        let mut steps = 0;
        while steps < allowed && self.st.dev.pending() < cap {
            let bytes = self.st.step();
            frames.extend(decode(&mut self.dec, &bytes));
            steps += 1;
            if self.st.stopped {
                break;
            }
        }
        (frames, steps)
    }

    /// Delivers a reply of the engine; a TimeSync carries the device's
    /// virtual view of the gateway clock.
    fn deliver(&mut self, m: Message) {
        let m = match m {
            Message::TimeSync(_) if self.st.stopped => return,
            Message::TimeSync(_) => Message::TimeSync(TimeSync {
                unix_ms: self.sim.start_ms + self.st.last_stepped as i64,
                hello_tick: None,
            }),
            m => m,
        };
        deliver(&mut self.st.dev, &m);
    }

    /// Steps the device, paced, until its run is finished or shutdown.
    async fn pump(
        &mut self,
        mut p: Pacing,
        mut replies: mpsc::UnboundedReceiver<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut dropped = 0u32;
        while !self.st.finished() {
            let (mut frames, steps) = self.advance(p.allowed(), p.cap);
            let gated = self.st.dev.pending() >= p.cap;
            if steps > 0 || !gated || self.st.stopped {
                p.gated_since = None;
            } else if p.gated_since.get_or_insert_with(Instant::now).elapsed()
                > Duration::from_secs(2)
                && self.st.dev.pending() + 3 < 16
            {
                // Nothing acked for a long while: let one period pass so the
                // firmware's resend timer can fire (one step adds at most three
                // frames; the ring holds 16).
                frames.extend(decode(&mut self.dec, &self.st.step()));
                p.gated_since = None;
            }
            let s = self.st.dev.stats();
            if s.dropped_readings > dropped {
                tracing::warn!(
                    device = self.sim.name,
                    dropped = s.dropped_readings,
                    "virtual device dropped readings (its link ring overflowed)"
                );
                dropped = s.dropped_readings;
            }
            if !frames.is_empty() && !self.send(frames).await {
                return;
            }
            if p.frame_rate == 0 && !gated && !self.st.stopped {
                // Busy: take the replies there are and go on.
                while let Ok(m) = replies.try_recv() {
                    self.deliver(m);
                }
                if shutdown.has_changed().unwrap_or(true) {
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                m = replies.recv() => {
                    let Some(m) = m else { return };
                    self.deliver(m);
                    while let Ok(m) = replies.try_recv() {
                        self.deliver(m);
                    }
                    if p.frame_rate > 0 && !gated {
                        p.tick.tick().await;
                    }
                }
                _ = p.tick.tick() => {}
            }
        }
        tracing::debug!(device = self.sim.name, "virtual device finished its run");
    }
}
