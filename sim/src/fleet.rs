//! A fleet of virtual devices as a config section describes it
//! ([`SimulatedConfig`]): each device's settings and seed, a [`Stepper`]
//! that walks a device through its sampling ticks, the link helpers that
//! feed frames to and from its bytes, and the raw readings of a bounded run
//! ([`SimDevice::readings`]).
//!
//! # Raw readings
//! [`SimDevice::readings`] runs the same device offline and returns every
//! reading its sensors gave, per series, with its event time (tick 0 is
//! `start_ms`) — the input of the oracle (`tributary-oracle`), which
//! computes what the pipeline's results must be from them alone. In
//! readings mode these are exactly the Reading frames the device sends; in
//! summaries mode what its summaries hold. Its keys are the devices' own
//! (without an agent's global tags).

use std::collections::BTreeMap;

use tributary_core::frame::{self, Ack, FrameDecoder, Message, MAX_FRAME};
use tributary_core::SeriesKey;
use tributary_firmware::AggregatorError;

use tributary_runtime::now_ms;

use crate::config::{SimMode, SimulatedConfig};
use crate::device::{SimConfig, VirtualDevice, SIM_CHANNELS};

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
    /// The virtual device's settings.
    pub config: SimConfig,
    seed: u64,
    last_tick: Option<u64>,
}

/// The raw readings of one series in a bounded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesReadings {
    /// The series (`{metric}{device="…"}`).
    pub series: SeriesKey,
    /// The decimal exponent of the channel's quantum.
    pub exponent: i8,
    /// (event time in ms, value in ticks) of every reading, in the order taken.
    pub readings: Vec<(i64, i64)>,
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
                // The name too, so devices of agents with the same seed (and
                // prefixes that differ) measure differently.
                let seed = name_hash(&name) ^ cfg.seed.wrapping_mul(0x100_0000_01b3) ^ i as u64;
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
                    seed,
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

    /// Every reading the device takes in a bounded run, per series (empty
    /// for an unbounded run).
    pub fn readings(&self) -> Result<Vec<SeriesReadings>, AggregatorError> {
        let Some(last) = self.last_tick else {
            return Ok(Vec::new());
        };
        let mut dev = self.device()?;
        // What the sensors give does not depend on acks or frames.
        let _ = dev.step(last);
        let mut out: BTreeMap<u8, SeriesReadings> = BTreeMap::new();
        for r in dev.raw() {
            let Some(series) = self.series(r.channel) else {
                continue;
            };
            let exponent = SIM_CHANNELS[usize::from(r.channel)].quantum().exponent();
            out.entry(r.channel)
                .or_insert_with(|| SeriesReadings {
                    series,
                    exponent,
                    readings: Vec::new(),
                })
                .readings
                .push((self.start_ms + r.tick as i64, i64::from(r.value)));
        }
        Ok(out.into_values().collect())
    }
}

/// The raw readings of every bounded device of `cfg`, keyed by the
/// devices' own series keys (without an agent's global tags).
pub fn readings(cfg: &SimulatedConfig) -> Result<Vec<SeriesReadings>, AggregatorError> {
    let mut out = Vec::new();
    for d in SimDevice::all(cfg) {
        out.extend(d.readings()?);
    }
    Ok(out)
}

/// FNV-1a of a device name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The frames in `bytes` (a corrupt one is skipped).
pub fn decode(dec: &mut FrameDecoder<MAX_FRAME>, bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    for &b in bytes {
        if let Some(Ok(m)) = dec.push(b) {
            out.push(m);
        }
    }
    out
}

/// Encodes `msg` and feeds it to the device's link, as the wire would.
pub fn deliver(dev: &mut VirtualDevice, msg: &Message) {
    let mut buf = [0u8; MAX_FRAME];
    if let Ok(n) = frame::encode(msg, &mut buf) {
        dev.receive(&buf[..n]);
    }
}

/// Acknowledges frame `seq` of `boot` to the device.
pub fn ack(dev: &mut VirtualDevice, boot: u32, seq: u32) {
    deliver(dev, &Message::Ack(Ack { boot, seq }));
}

/// The sequence of a data frame (Summary, Reading).
pub fn data_seq(m: &Message) -> Option<u32> {
    match m {
        Message::Summary(f) => Some(f.seq),
        Message::Reading(f) => Some(f.seq),
        _ => None,
    }
}

/// A virtual device being stepped through time.
pub struct Stepper {
    /// The device.
    pub dev: VirtualDevice,
    /// The next tick to step to.
    pub next: u64,
    /// The last tick stepped to.
    pub last_stepped: u64,
    /// Sampling period (device ms).
    pub period: u64,
    /// The last sampling tick (`None`: runs forever).
    pub last: Option<u64>,
    /// Whether the run is over (the open window flushed).
    pub stopped: bool,
}

impl Stepper {
    /// A fresh device of `sim` at tick 0.
    pub fn new(sim: &SimDevice, dev: VirtualDevice) -> Self {
        Stepper {
            dev,
            next: 0,
            last_stepped: 0,
            period: sim.period_ms(),
            last: sim.last_tick(),
            stopped: false,
        }
    }

    /// One sampling period; after the last sample, closes the open window
    /// and from then on only lets time pass (resends).
    pub fn step(&mut self) -> Vec<u8> {
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

    /// Whether the run is over and every frame acknowledged.
    pub fn finished(&self) -> bool {
        self.stopped && self.dev.pending() == 0
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
        let mut st = Stepper::new(d, d.device().unwrap());
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut out: BTreeMap<String, (u64, i128)> = BTreeMap::new();
        let mut guard = 0;
        while !st.finished() && guard < 100_000 {
            guard += 1;
            for m in decode(&mut dec, &st.step()) {
                let (ch, n, sum, seq) = match &m {
                    Message::Summary(f) => {
                        let s = tributary_core::Summary::from_fixed(&f.summary, 0);
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
    fn frames_carry_exactly_the_raw_readings() {
        for mode in [SimMode::Summaries, SimMode::Readings] {
            let c = cfg(mode);
            let d = &SimDevice::all(&c)[1];
            let mut want: BTreeMap<String, (u64, i128)> = BTreeMap::new();
            for s in d.readings().unwrap() {
                let e = want.entry(s.series.to_string()).or_default();
                for &(t, v) in &s.readings {
                    assert!((1_000_000..1_003_000).contains(&t), "event time {t}");
                    e.0 += 1;
                    e.1 += i128::from(v);
                }
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
        let a = all[0].readings().unwrap();
        let b = all[1].readings().unwrap();
        assert_eq!(a, SimDevice::all(&c)[0].readings().unwrap());
        let values =
            |v: &[SeriesReadings]| v.iter().map(|s| s.readings.clone()).collect::<Vec<_>>();
        assert_ne!(values(&a), values(&b));
    }
}
