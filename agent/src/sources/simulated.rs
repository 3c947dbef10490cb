//! Simulated devices: N virtual devices in-process, speaking the real link
//! protocol (frames encoded with `tributary_core::frame`, decoded by
//! `FrameDecoder`, acked by the engine only after commit).
//!
//! NOTE: this is a stand-in until `tributary_firmware::sim` (the firmware's
//! std-gated virtual device running the real aggregator and link code)
//! lands; it builds the same frames with `tributary_core` directly. The
//! generator is deterministic: frame `seq` of a device is a pure function of
//! its [`SimPlan`], so tests can compute the exact ground truth
//! ([`SimPlan::readings`]) and a device can resume after an agent crash from
//! the agent's de-dup mark, like a real device resending its unacked ring.
//! Devices run on a virtual clock (tick 0 = `start_ms`) whose offset the
//! agent is told exactly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::fixed::FixedSummary;
use tributary_core::frame::{
    self, ChannelInfo, FrameDecoder, Hello, Message, ReadingFrame, SummaryFrame, MAX_FRAME,
};
use tributary_core::Quantum;

use crate::config::{SimMode, SimulatedConfig};
use crate::engine::{now_ms, Cmd};

/// The deterministic plan of one virtual device.
#[derive(Debug, Clone)]
pub struct SimPlan {
    /// Device id.
    pub name: String,
    /// Boot id (fixed: the device's resend ring outlives agent crashes).
    pub boot: u32,
    index: u64,
    channels: u8,
    window_ms: u32,
    per_window: u32,
    mode: SimMode,
    windows: u64,
    /// Event time of tick 0.
    pub start_ms: i64,
}

const QUANTUM: i8 = -2;
const REFERENCE: i32 = 2000;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl SimPlan {
    /// The plans of every configured device.
    pub fn all(cfg: &SimulatedConfig) -> Vec<SimPlan> {
        let start = if cfg.start_ms != 0 {
            cfg.start_ms
        } else {
            let w = i64::from(cfg.device_window_ms.max(1));
            now_ms().div_euclid(w) * w
        };
        (0..cfg.devices)
            .map(|i| SimPlan {
                name: format!("{}{i}", cfg.prefix),
                boot: 1,
                index: i as u64,
                channels: cfg.channels,
                window_ms: cfg.device_window_ms,
                per_window: cfg.readings_per_window,
                mode: cfg.mode,
                windows: cfg.windows,
                start_ms: start,
            })
            .collect()
    }

    /// The metric of channel `c`.
    pub fn metric(c: u8) -> String {
        format!("sim_metric_{c}")
    }

    /// The value (ticks) of reading `k` of channel `c` in device window `w`.
    pub fn value(&self, c: u8, w: u64, k: u32) -> i32 {
        let h = mix(self.index << 40 ^ u64::from(c) << 32 ^ w << 12 ^ u64::from(k));
        REFERENCE + (h % 4001) as i32 - 2000
    }

    /// Tick (ms since boot) of reading `k` in device window `w`.
    pub fn tick(&self, w: u64, k: u32) -> u64 {
        w * u64::from(self.window_ms) + u64::from(k) * u64::from(self.window_ms / self.per_window)
    }

    /// Frames in the whole run (`None` when unbounded).
    pub fn frames(&self) -> Option<u64> {
        let per = match self.mode {
            SimMode::Summaries => u64::from(self.channels),
            SimMode::Readings => u64::from(self.channels) * u64::from(self.per_window),
        };
        (self.windows > 0).then_some(self.windows * per)
    }

    /// Every reading of the run as (metric, event time, ticks): the ground truth.
    pub fn readings(&self) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        for w in 0..self.windows {
            for c in 0..self.channels {
                for k in 0..self.per_window {
                    out.push((
                        Self::metric(c),
                        self.start_ms + self.tick(w, k) as i64,
                        i64::from(self.value(c, w, k)),
                    ));
                }
            }
        }
        out
    }

    /// The device's Hello.
    pub fn hello(&self) -> Hello {
        let mut channels = heapless::Vec::new();
        for c in 0..self.channels {
            let _ = channels.push(ChannelInfo {
                channel: c,
                metric: heapless::String::try_from(Self::metric(c).as_str()).unwrap_or_default(),
                unit: heapless::String::try_from("degC").unwrap_or_default(),
                quantum: Quantum::new(QUANTUM).unwrap_or_default(),
                reference: REFERENCE,
            });
        }
        Hello {
            device: heapless::String::try_from(self.name.as_str()).unwrap_or_default(),
            boot: self.boot,
            firmware: heapless::String::try_from("sim-0.1").unwrap_or_default(),
            window_ms: match self.mode {
                SimMode::Summaries => self.window_ms,
                SimMode::Readings => 0,
            },
            tick: 0,
            channels,
            stats: Default::default(),
        }
    }

    /// Frame `seq`.
    pub fn frame(&self, seq: u32) -> Message {
        let s = u64::from(seq);
        let ch = u64::from(self.channels);
        match self.mode {
            SimMode::Summaries => {
                let (w, c) = (s / ch, (s % ch) as u8);
                let mut sum =
                    FixedSummary::new(Quantum::new(QUANTUM).unwrap_or_default(), REFERENCE);
                for k in 0..self.per_window {
                    let t = (self.tick(w, k) - self.tick(w, 0)) as u32;
                    let _ = sum.insert(t, self.value(c, w, k));
                }
                Message::Summary(SummaryFrame {
                    boot: self.boot,
                    seq,
                    channel: c,
                    start_tick: self.tick(w, 0),
                    width_ms: self.window_ms,
                    summary: sum,
                })
            }
            SimMode::Readings => {
                let per = ch * u64::from(self.per_window);
                let (w, r) = (s / per, s % per);
                let (k, c) = ((r / ch) as u32, (r % ch) as u8);
                Message::Reading(ReadingFrame {
                    boot: self.boot,
                    seq,
                    channel: c,
                    tick: self.tick(w, k),
                    value: self.value(c, w, k),
                })
            }
        }
    }
}

/// Encodes frames and decodes them again, as a byte link would.
fn over_the_wire(msgs: &[Message]) -> Vec<Message> {
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let mut buf = [0u8; MAX_FRAME];
    let mut out = Vec::with_capacity(msgs.len());
    for m in msgs {
        if let Ok(n) = frame::encode(m, &mut buf) {
            for &b in &buf[..n] {
                if let Some(Ok(m)) = dec.push(b) {
                    out.push(m);
                }
            }
        }
    }
    out
}

/// Runs one virtual device until its plan is done (all frames acked) or shutdown.
pub(crate) async fn run_device(
    plan: SimPlan,
    frame_rate: u32,
    max_unacked: usize,
    engine: mpsc::Sender<Cmd>,
    mut shutdown: watch::Receiver<bool>,
) {
    let link = format!("sim:{}", plan.name);
    let (reply, mut acks) = mpsc::unbounded_channel();
    let hello = Cmd::Link {
        link: link.clone(),
        frames: vec![(Message::Hello(plan.hello()), now_ms())],
        reply: Some(reply.clone()),
        fixed_offset: Some(plan.start_ms),
        done: None,
    };
    if engine.send(hello).await.is_err() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let hwm = match engine
        .send(Cmd::DeviceHwm {
            device: plan.name.clone(),
            boot: plan.boot,
            reply: tx,
        })
        .await
    {
        Ok(()) => rx.await.ok().flatten(),
        Err(_) => return,
    };
    let mut next: u64 = hwm.map_or(0, |h| u64::from(h) + 1);
    let total = plan.frames().unwrap_or(u64::from(u32::MAX));
    let mut unacked: BTreeMap<u32, Instant> = BTreeMap::new();
    let resend_after = Duration::from_secs(2);
    let step = Duration::from_millis(20);
    let per_step = if frame_rate == 0 {
        usize::MAX
    } else {
        (frame_rate as usize / 50).max(1)
    };
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if next >= total && unacked.is_empty() {
            tracing::debug!(device = plan.name, "simulated device finished its run");
            return;
        }
        let mut msgs = Vec::new();
        let now = Instant::now();
        for (seq, sent) in unacked.iter_mut() {
            if now.duration_since(*sent) >= resend_after {
                *sent = now;
                msgs.push(plan.frame(*seq));
            }
        }
        while next < total && unacked.len() < max_unacked && msgs.len() < per_step {
            let seq = next as u32;
            unacked.insert(seq, now);
            msgs.push(plan.frame(seq));
            next += 1;
        }
        if !msgs.is_empty() {
            let arrival = now_ms();
            let frames = over_the_wire(&msgs)
                .into_iter()
                .map(|m| (m, arrival))
                .collect();
            let cmd = Cmd::Link {
                link: link.clone(),
                frames,
                reply: Some(reply.clone()),
                fixed_offset: Some(plan.start_ms),
                done: None,
            };
            if engine.send(cmd).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            a = acks.recv() => {
                let Some(first) = a else { return };
                let mut handle = |m: Message| if let Message::Ack(a) = m { unacked.remove(&a.seq); };
                handle(first);
                while let Ok(m) = acks.try_recv() { handle(m); }
                if frame_rate > 0 { tick.tick().await; }
            }
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_exactly_the_planned_readings() {
        for mode in [SimMode::Summaries, SimMode::Readings] {
            let cfg = SimulatedConfig {
                devices: 2,
                mode,
                windows: 3,
                start_ms: 1_000_000,
                readings_per_window: 4,
                ..SimulatedConfig::default()
            };
            let plan = &SimPlan::all(&cfg)[1];
            let truth: i64 = plan.readings().iter().map(|r| r.2).sum();
            let mut count = 0u64;
            let mut sum = 0i128;
            for seq in 0..plan.frames().unwrap() as u32 {
                match over_the_wire(&[plan.frame(seq)]).pop().unwrap() {
                    Message::Summary(f) => {
                        let s = tributary_core::Summary::from_fixed(&f.summary, 0);
                        count += s.count();
                        sum += s.sum_ticks();
                    }
                    Message::Reading(r) => {
                        count += 1;
                        sum += i128::from(r.value);
                    }
                    m => panic!("{m:?}"),
                }
            }
            assert_eq!(count, plan.readings().len() as u64);
            assert_eq!(sum, i128::from(truth));
        }
    }
}
