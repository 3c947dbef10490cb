//! Simulated devices: N virtual devices in-process, each the firmware's own
//! aggregator and link code in a [`tributary_sim`] virtual device over
//! seeded sine/noise/step/spike/dropout sensors. The agent treats
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
//! [`agent_truth`]: the fleet's ground truth ([`tributary_sim`]) with the
//! series keys the agent forwards (its global tags applied).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::frame::{FrameDecoder, Message, TimeSync, MAX_FRAME};
use tributary_sim::device::SIM_CHANNELS;
use tributary_sim::fleet::{
    ack, data_seq, decode, deliver, SimDevice, Stepper, TruthWindow, RING_HEADROOM,
};
use tributary_sim::AggregatorError;

use crate::config::Config;
use crate::engine::{now_ms, Cmd};

/// The ground truth of the simulated devices of an agent: the fleet's with
/// the series keys the agent forwards, i.e. with its global tags applied
/// exactly as the engine applies them. A series the engine would refuse
/// (too many tags in all) has no truth, as it has no results.
pub fn agent_truth(cfg: &Config) -> Result<Vec<TruthWindow>, AggregatorError> {
    let tags = cfg.global_tags();
    Ok(tributary_sim::fleet::truth(&cfg.simulated)?
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
    let mut st = Stepper::new(&sim, dev);
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
