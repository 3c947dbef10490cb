//! Simulated devices: N virtual devices in-process, each the firmware's own
//! [`VirtualDevice`] (`tributary_firmware::sim`: the real aggregator and link
//! code over seeded sine/noise/step/spike/dropout sensors). The agent treats
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
//! # Ground truth
//! [`SimDevice::truth`] runs the same device offline: in summaries mode the
//! firmware's own record of every reading it took (per channel and device
//! window); in readings mode every Reading frame the device sends. Its keys
//! are the devices' own; [`agent_truth`] gives them the agent's global tags,
//! as the engine does, so they are the keys the agent forwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::frame::{self, Ack, FrameDecoder, Message, TimeSync, MAX_FRAME};
use tributary_core::{Quantum, SeriesKey, Summary};
use tributary_firmware::sim::{SimConfig, VirtualDevice, SIM_CHANNELS};
use tributary_firmware::AggregatorError;

use crate::config::{Config, SimMode, SimulatedConfig};
use crate::engine::{now_ms, Cmd};

/// The most unacked frames a virtual device is allowed before its time
/// stops advancing: its link ring holds 16, one step adds at most 3.
pub const RING_HEADROOM: usize = 12;

/// One configured virtual device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Device id.
    pub name: String,
    /// Event time of tick 0 (a multiple of the device window).
    pub start_ms: i64,
    config: SimConfig,
    seed: u64,
    last_tick: Option<u64>,
}

/// The exact totals of one (series, device window) a virtual device produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthWindow {
    /// The series (`{metric}{device="…"}`).
    pub series: SeriesKey,
    /// Event time of the device window's start.
    pub start_ms: i64,
    /// Device window width (ms).
    pub width_ms: i64,
    /// The readings, in the channel's quantum.
    pub summary: Summary,
}

impl SimDevice {
    /// The devices of `cfg`.
    pub fn all(cfg: &SimulatedConfig) -> Vec<SimDevice> {
        let w = i64::from(cfg.device_window_ms.max(1));
        let start = if cfg.start_ms != 0 {
            cfg.start_ms
        } else {
            now_ms().div_euclid(w) * w
        };
        let period = u64::from((cfg.device_window_ms / cfg.readings_per_window.max(1)).max(1));
        let last_tick = (cfg.windows > 0).then(|| {
            let end = cfg.windows * u64::from(cfg.device_window_ms.max(1));
            (end - 1) / period * period
        });
        (0..cfg.devices)
            .map(|i| {
                let name = format!("{}{i}", cfg.prefix);
                SimDevice {
                    config: SimConfig {
                        device: name.clone(),
                        boot: 1,
                        width_ms: cfg.device_window_ms,
                        period_ms: period,
                        resend_ms: cfg.resend_ms,
                        dropout_per_mille: cfg.dropout_per_mille,
                        raw: cfg.mode == SimMode::Readings,
                        ..SimConfig::default()
                    },
                    name,
                    start_ms: start,
                    seed: cfg.seed.wrapping_mul(0x100_0000_01b3) ^ i as u64,
                    last_tick,
                }
            })
            .collect()
    }

    /// A fresh instance of the device (boot 1, tick 0).
    pub fn device(&self) -> Result<VirtualDevice, AggregatorError> {
        VirtualDevice::new(self.config.clone(), self.seed)
    }

    /// The boot id.
    pub fn boot(&self) -> u32 {
        self.config.boot
    }

    /// Sampling period (ms).
    pub fn period_ms(&self) -> u64 {
        self.config.period_ms
    }

    /// The tick of the last sample (`None` = runs forever).
    pub fn last_tick(&self) -> Option<u64> {
        self.last_tick
    }

    /// The series of channel `ch`.
    pub fn series(&self, ch: u8) -> Option<SeriesKey> {
        let spec = SIM_CHANNELS.get(usize::from(ch))?;
        SeriesKey::new(spec.metric, self.name.as_str(), Default::default()).ok()
    }

    /// Every reading the device produces in a bounded run, per series and
    /// device window (empty for an unbounded run).
    pub fn truth(&self) -> Result<Vec<TruthWindow>, AggregatorError> {
        let Some(last) = self.last_tick else {
            return Ok(Vec::new());
        };
        let mut dev = self.device()?;
        let width = i64::from(self.config.width_ms);
        let mut out = Vec::new();
        if !self.config.raw {
            let _ = dev.step(last);
            for (&(ch, start), s) in dev.truth() {
                if let Some(series) = self.series(ch) {
                    out.push(TruthWindow {
                        series,
                        start_ms: self.start_ms + start as i64,
                        width_ms: width,
                        // The device records ticks since boot; boot is start_ms.
                        summary: s.shifted(self.start_ms),
                    });
                }
            }
            return Ok(out);
        }
        // Readings mode: the firmware keeps no per-window record, so the
        // truth is every Reading frame it sends (each acked at once).
        let mut windows: BTreeMap<(u8, i64), Summary> = BTreeMap::new();
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut t = 0;
        while t <= last {
            let bytes = dev.step(t);
            for m in decode(&mut dec, &bytes) {
                if let Message::Reading(r) = m {
                    let tick = r.tick as i64;
                    let start = tick - tick % width;
                    let q = SIM_CHANNELS
                        .get(usize::from(r.channel))
                        .and_then(|c| Quantum::new(c.quantum_exp).ok())
                        .unwrap_or_default();
                    let s = windows
                        .entry((r.channel, start))
                        .or_insert_with(|| Summary::new(q));
                    let _ = s.insert(self.start_ms + tick, i64::from(r.value));
                    ack(&mut dev, r.boot, r.seq);
                }
            }
            t += self.config.period_ms;
        }
        for ((ch, start), summary) in windows {
            if let Some(series) = self.series(ch) {
                out.push(TruthWindow {
                    series,
                    start_ms: self.start_ms + start,
                    width_ms: width,
                    summary,
                });
            }
        }
        Ok(out)
    }
}

/// The ground truth of every bounded device of `cfg`, keyed by the
/// devices' own series keys (without an agent's global tags).
pub fn truth(cfg: &SimulatedConfig) -> Result<Vec<TruthWindow>, AggregatorError> {
    let mut out = Vec::new();
    for d in SimDevice::all(cfg) {
        out.extend(d.truth()?);
    }
    Ok(out)
}

/// The ground truth of the simulated devices of an agent: [`truth`] with
/// the series keys the agent forwards, i.e. with its global tags applied
/// exactly as the engine applies them. A series the engine would refuse
/// (too many tags in all) has no truth, as it has no results.
pub fn agent_truth(cfg: &Config) -> Result<Vec<TruthWindow>, AggregatorError> {
    let tags = cfg.global_tags();
    Ok(truth(&cfg.simulated)?
        .into_iter()
        .filter_map(|mut w| {
            let key = tags.apply(&w.series).ok()?.into_owned();
            (key.tags().len() <= cfg.limits.max_tags).then(|| {
                w.series = key;
                w
            })
        })
        .collect())
}

fn decode(dec: &mut FrameDecoder<MAX_FRAME>, bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    for &b in bytes {
        if let Some(Ok(m)) = dec.push(b) {
            out.push(m);
        }
    }
    out
}

/// Encodes `msg` and feeds it to the device's link, as the wire would.
fn deliver(dev: &mut VirtualDevice, msg: &Message) {
    let mut buf = [0u8; MAX_FRAME];
    if let Ok(n) = frame::encode(msg, &mut buf) {
        dev.receive(&buf[..n]);
    }
}

fn ack(dev: &mut VirtualDevice, boot: u32, seq: u32) {
    deliver(dev, &Message::Ack(Ack { boot, seq }));
}

fn data_seq(m: &Message) -> Option<u32> {
    match m {
        Message::Summary(f) => Some(f.seq),
        Message::Reading(f) => Some(f.seq),
        _ => None,
    }
}

/// A virtual device being stepped through time.
struct Stepper {
    dev: VirtualDevice,
    /// The next tick to step to.
    next: u64,
    /// The last tick stepped to.
    last_stepped: u64,
    period: u64,
    last: Option<u64>,
    stopped: bool,
}

impl Stepper {
    /// One sampling period; after the last sample, closes the open window
    /// and from then on only lets time pass (resends).
    fn step(&mut self) -> Vec<u8> {
        let t = self.next;
        let mut out = self.dev.step(t);
        if !self.stopped && self.last.is_some_and(|l| t >= l) {
            self.dev.flush();
            self.stopped = true;
            out.extend(self.dev.step(t));
        }
        self.last_stepped = t;
        self.next += self.period;
        out
    }

    fn finished(&self) -> bool {
        self.stopped && self.dev.pending() == 0
    }
}

/// Runs one virtual device until its run is done (everything acked) or shutdown.
pub(crate) async fn run_device(
    sim: SimDevice,
    frame_rate: u32,
    max_unacked: usize,
    engine: mpsc::Sender<Cmd>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The running device keeps no ground truth: [`SimDevice::truth`] replays
    // a fresh one, and the record would grow for as long as this one runs.
    let dev = match sim.device() {
        Ok(d) => d.without_truth(),
        Err(e) => {
            tracing::error!(device = sim.name, error = ?e, "cannot build the virtual device");
            return;
        }
    };
    let link = format!("sim:{}", sim.name);
    let (reply, mut replies) = mpsc::unbounded_channel();
    let send = |frames: Vec<Message>| {
        let arrival = now_ms();
        Cmd::Link {
            link: link.clone(),
            frames: frames.into_iter().map(|m| (m, arrival)).collect(),
            reply: Some(reply.clone()),
            fixed_offset: Some(sim.start_ms),
            done: None,
        }
    };
    let (tx, rx) = oneshot::channel();
    let hwm = match engine
        .send(Cmd::DeviceHwm {
            device: sim.name.clone(),
            boot: sim.boot(),
            reply: tx,
        })
        .await
    {
        Ok(()) => rx.await.ok().flatten(),
        Err(_) => return,
    };
    let mut st = Stepper {
        dev,
        next: 0,
        last_stepped: 0,
        period: sim.period_ms(),
        last: sim.last_tick(),
        stopped: false,
    };
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let mut first: Vec<Message> = Vec::new();
    if let Some(h) = hwm {
        // Replay up to the engine's mark, acknowledging what it already has.
        let mut steps = 0u64;
        loop {
            let bytes = st.step();
            for m in decode(&mut dec, &bytes) {
                match data_seq(&m) {
                    Some(seq) if seq <= h => ack(&mut st.dev, sim.boot(), seq),
                    Some(_) => first.push(m),
                    None => {}
                }
            }
            if !first.is_empty() || st.finished() {
                break;
            }
            steps += 1;
            if steps % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
        first.insert(0, Message::Hello(st.dev.hello(st.last_stepped)));
        tracing::debug!(
            device = sim.name,
            hwm = h,
            tick = st.last_stepped,
            "virtual device replayed to the engine's mark"
        );
    }
    if engine.send(send(first)).await.is_err() {
        return;
    }
    let cap = max_unacked.clamp(1, RING_HEADROOM);
    // Frames per sampling step, for pacing.
    let per_step = if sim.config.raw {
        SIM_CHANNELS.len() as f64
    } else {
        SIM_CHANNELS.len() as f64 * st.period as f64 / f64::from(sim.config.width_ms.max(1))
    };
    let step_every = Duration::from_millis(20);
    let mut budget = 0f64;
    let mut tick = tokio::time::interval(step_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gated_since: Option<Instant> = None;
    let mut dropped = 0u32;
    loop {
        if st.finished() {
            tracing::debug!(device = sim.name, "virtual device finished its run");
            return;
        }
        let allowed = if frame_rate == 0 {
            4096
        } else {
            budget += f64::from(frame_rate) / 50.0 / per_step.max(1e-9);
            let n = budget.floor();
            budget -= n;
            n as usize
        };
        let mut frames = Vec::new();
        let mut steps = 0;
        while steps < allowed && st.dev.pending() < cap {
            let bytes = st.step();
            frames.extend(decode(&mut dec, &bytes));
            steps += 1;
            if st.stopped {
                break;
            }
        }
        let gated = st.dev.pending() >= cap;
        if steps > 0 || !gated || st.stopped {
            gated_since = None;
        } else if gated_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2)
            && st.dev.pending() + 3 < 16
        {
            // Nothing acked for a long while: let one period pass so the
            // firmware's resend timer can fire (one step adds at most three
            // frames; the ring holds 16).
            frames.extend(decode(&mut dec, &st.step()));
            gated_since = None;
        }
        let s = st.dev.stats();
        if s.dropped_readings > dropped {
            tracing::warn!(
                device = sim.name,
                dropped = s.dropped_readings,
                "virtual device dropped readings (its link ring overflowed)"
            );
            dropped = s.dropped_readings;
        }
        if !frames.is_empty() && engine.send(send(frames)).await.is_err() {
            return;
        }
        let handle = |m: Message, st: &mut Stepper| {
            let m = match m {
                // The device's view of the gateway clock is virtual.
                Message::TimeSync(_) if st.stopped => return,
                Message::TimeSync(_) => Message::TimeSync(TimeSync {
                    unix_ms: sim.start_ms + st.last_stepped as i64,
                }),
                m => m,
            };
            deliver(&mut st.dev, &m);
        };
        let busy = frame_rate == 0 && !gated && !st.stopped;
        if busy {
            while let Ok(m) = replies.try_recv() {
                handle(m, &mut st);
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
                handle(m, &mut st);
                while let Ok(m) = replies.try_recv() {
                    handle(m, &mut st);
                }
                if frame_rate > 0 && !gated {
                    tick.tick().await;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: SimMode) -> SimulatedConfig {
        SimulatedConfig {
            devices: 2,
            mode,
            windows: 3,
            start_ms: 1_000_000,
            device_window_ms: 1000,
            readings_per_window: 4,
            ..SimulatedConfig::default()
        }
    }

    /// Runs a device to the end with every frame acked at once and sums
    /// what reached the "gateway" per series.
    fn delivered(d: &SimDevice) -> BTreeMap<String, (u64, i128)> {
        let mut st = Stepper {
            dev: d.device().unwrap(),
            next: 0,
            last_stepped: 0,
            period: d.period_ms(),
            last: d.last_tick(),
            stopped: false,
        };
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut out: BTreeMap<String, (u64, i128)> = BTreeMap::new();
        let mut guard = 0;
        while !st.finished() && guard < 100_000 {
            guard += 1;
            for m in decode(&mut dec, &st.step()) {
                let (ch, n, sum, seq) = match &m {
                    Message::Summary(f) => {
                        let s = Summary::from_fixed(&f.summary, 0);
                        (f.channel, s.count(), s.sum_ticks(), f.seq)
                    }
                    Message::Reading(r) => (r.channel, 1, i128::from(r.value), r.seq),
                    _ => continue,
                };
                let e = out.entry(d.series(ch).unwrap().to_string()).or_default();
                e.0 += n;
                e.1 += sum;
                ack(&mut st.dev, d.boot(), seq);
            }
        }
        out
    }

    #[test]
    fn frames_carry_exactly_the_ground_truth() {
        for mode in [SimMode::Summaries, SimMode::Readings] {
            let c = cfg(mode);
            let d = &SimDevice::all(&c)[1];
            let mut want: BTreeMap<String, (u64, i128)> = BTreeMap::new();
            for t in d.truth().unwrap() {
                assert_eq!(t.start_ms % 1000, 0, "device windows align to start_ms");
                let e = want.entry(t.series.to_string()).or_default();
                e.0 += t.summary.count();
                e.1 += t.summary.sum_ticks();
            }
            assert_eq!(want.len(), 3, "{mode:?}: three channels");
            let n: u64 = want.values().map(|v| v.0).sum();
            // 3 windows × 4 samples × 3 channels, less the dropouts.
            assert!(n > 0 && n <= 36, "{mode:?}: {n}");
            assert_eq!(delivered(d), want, "{mode:?}");
        }
    }

    #[test]
    fn devices_differ_and_are_deterministic() {
        let c = cfg(SimMode::Summaries);
        let all = SimDevice::all(&c);
        let a = all[0].truth().unwrap();
        let b = all[1].truth().unwrap();
        assert_eq!(a, SimDevice::all(&c)[0].truth().unwrap());
        let sums = |v: &[TruthWindow]| v.iter().map(|t| t.summary.sum_ticks()).collect::<Vec<_>>();
        assert_ne!(sums(&a), sums(&b));
    }
}
