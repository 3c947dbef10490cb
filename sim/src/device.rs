//! A host-side virtual device: exactly the firmware's
//! [`Aggregator`] and [`Link`] driven by deterministic, seeded simulated
//! sensors over in-memory bytes, with a log of every raw reading taken
//! ([`VirtualDevice::raw`]) from which tests compute the truth independently.
//!
//! # The sensors
//! Realistic enough that a window holds many distinct values and many
//! sketch buckets, and statistics have something to get wrong:
//! - temperature (0.001 °C): an outdoor temperature around 0 °C — a 10-minute
//!   swing of ±4.5 °C, a per-device offset of up to ±1 °C, a slow random-walk
//!   drift (±1.5 °C), noise of ±0.25 °C in every reading (so windows near
//!   0 °C cross zero) and a rare spike of ±12 °C (1 in 400 readings);
//! - humidity (0.01 %): 55 % with a level that steps every 2 minutes (±8 %),
//!   a random-walk drift (±3 %) and noise of ±0.6 %;
//! - pressure (1 Pa): 101,325 Pa with a random-walk drift (±400 Pa), noise of
//!   ±6 Pa and a rare drop of 800 Pa (1 in 1000 readings);
//! - dropouts: a failed read of all three (`dropout_per_mille`).
//!
//! Everything comes from one seeded generator, so a device is a pure function
//! of its seed and its sampling ticks.

use std::vec::Vec;

use tributary_core::frame::{ChannelInfo, DeviceStats, Hello, Message, MAX_CHANNELS};

use tributary_firmware::{index, Aggregator, AggregatorError, ChannelSpec, Clock, Link, Mode};

/// The simulated channels: temperature (around 0 °C: swing, drift, noise,
/// spikes), humidity (steps, drift, noise) and pressure (drift, noise, drops).
pub const SIM_CHANNELS: [ChannelSpec; 3] = [
    ChannelSpec {
        metric: "temperature",
        unit: "degC",
        index: &index(-3),
        reference: 20_000,
    },
    ChannelSpec {
        metric: "humidity",
        unit: "pct",
        index: &index(-2),
        reference: 5_000,
    },
    ChannelSpec {
        metric: "pressure",
        unit: "Pa",
        index: &index(0),
        reference: 101_325,
    },
];

/// Settings of a virtual device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Device id sent in Hello (truncated to 32 bytes).
    pub device: std::string::String,
    /// Boot id.
    pub boot: u32,
    /// Window width in ms (default 10 000).
    pub width_ms: u32,
    /// Sampling period in ms (default 1 000).
    pub period_ms: u64,
    /// Resend timeout in ms (default 2 000).
    pub resend_ms: u64,
    /// Hello interval in ms (default 60 000).
    pub hello_ms: u64,
    /// Failed sensor reads per thousand (default 20).
    pub dropout_per_mille: u32,
    /// Aggregate or raw readings (default aggregate).
    pub raw: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            device: "sim-1".into(),
            boot: 1,
            width_ms: 10_000,
            period_ms: 1_000,
            resend_ms: 2_000,
            hello_ms: 60_000,
            dropout_per_mille: 20,
            raw: false,
        }
    }
}

/// One reading a virtual device took, as its sensor gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawReading {
    /// The channel (index into [`SIM_CHANNELS`]).
    pub channel: u8,
    /// Device time of the reading (ms since boot).
    pub tick: u64,
    /// The value in ticks of the channel's quantum.
    pub value: i32,
    /// The start tick of the device window the aggregator put it in.
    pub window: u64,
}

/// The state of the simulated sensors (see the module docs).
#[derive(Debug, Clone, Default)]
struct Sensors {
    rng: u64,
    /// Per-device temperature offset (0.001 °C).
    temp_offset: i32,
    temp_drift: i32,
    hum_drift: i32,
    pres_drift: i32,
}

impl Sensors {
    fn new(seed: u64) -> Self {
        let mut s = Sensors {
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            ..Sensors::default()
        };
        s.temp_offset = s.uniform(1_000);
        s
    }

    fn rand(&mut self) -> u32 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.rng >> 33) as u32
    }

    /// Uniform in −`r`..=`r`.
    fn uniform(&mut self, r: u32) -> i32 {
        (self.rand() % (2 * r + 1)) as i32 - r as i32
    }

    /// One reading of each channel at device time `t`, or a dropout.
    fn sample(&mut self, t: u64, dropout_per_mille: u32) -> Option<[i32; 3]> {
        if self.rand() % 1000 < dropout_per_mille {
            return None;
        }
        let phase = (t % 600_000) as f64 / 600_000.0 * core::f64::consts::TAU;
        self.temp_drift = (self.temp_drift + self.uniform(20)).clamp(-1_500, 1_500);
        let spike = match self.rand() % 400 {
            0 => 12_000,
            1 => -12_000,
            _ => 0,
        };
        let temp = self.temp_offset
            + (4_500.0 * phase.sin()) as i32
            + self.temp_drift
            + self.uniform(250)
            + spike;
        // Steps: a level per 2-minute period, from a hash of the period.
        let period = (t / 120_000).wrapping_mul(0x9e37_79b9) ^ (self.temp_offset as u64);
        let level = (period % 17) as i32 * 100 - 800;
        self.hum_drift = (self.hum_drift + self.uniform(5)).clamp(-300, 300);
        let hum = (5_500 + level + self.hum_drift + self.uniform(60)).clamp(0, 10_000);
        self.pres_drift = (self.pres_drift + self.uniform(3)).clamp(-400, 400);
        let drop = if self.rand() % 1000 == 0 { -800 } else { 0 };
        let pres = 101_325 + self.pres_drift + self.uniform(6) + drop;
        Some([temp, hum, pres])
    }
}

/// A simulated device.
#[derive(Debug)]
pub struct VirtualDevice {
    config: SimConfig,
    agg: Aggregator<3>,
    link: Link<16, 128>,
    clock: Clock,
    sensors: Sensors,
    next_sample: u64,
    next_hello: u64,
    raw: Vec<RawReading>,
    record: bool,
    readings: u64,
    stopped: bool,
}

impl VirtualDevice {
    /// A device with `config`, its sensors seeded by `seed`.
    pub fn new(config: SimConfig, seed: u64) -> Result<Self, AggregatorError> {
        let mode = if config.raw {
            Mode::Raw
        } else {
            Mode::Aggregate
        };
        let agg = Aggregator::new(&SIM_CHANNELS, config.boot, config.width_ms, mode)?;
        let link = Link::new(config.resend_ms);
        Ok(VirtualDevice {
            config,
            agg,
            link,
            clock: Clock::new(),
            sensors: Sensors::new(seed),
            next_sample: 0,
            next_hello: 0,
            raw: Vec::new(),
            record: true,
            readings: 0,
            stopped: false,
        })
    }

    /// Advances device time to `now_ms` (ms since boot), taking every due
    /// sample, and returns the bytes the device sends.
    pub fn step(&mut self, now_ms: u64) -> Vec<u8> {
        let mut out = Vec::new();
        if now_ms >= self.next_hello {
            let hello = Message::Hello(self.hello(now_ms));
            self.link
                .send_now(&hello, &mut |b: &[u8]| out.extend_from_slice(b));
            self.next_hello = now_ms + self.config.hello_ms.max(1);
        }
        while !self.stopped && self.next_sample <= now_ms {
            let t = self.next_sample;
            self.next_sample += self.config.period_ms.max(1);
            let Some(values) = self.sensors.sample(t, self.config.dropout_per_mille) else {
                self.agg
                    .poll(t, &mut FailingSensor, &mut |m| self.link.enqueue(m));
                continue;
            };
            let link = &mut self.link;
            self.agg.record(t, &values, &mut |m| link.enqueue(m));
            self.readings += 3;
            if self.record {
                // Raw mode has no windows: the reading's own tick stands in.
                let window = self.agg.window_start().unwrap_or(t);
                for (ch, &value) in values.iter().enumerate() {
                    self.raw.push(RawReading {
                        channel: ch as u8,
                        tick: t,
                        value,
                        window,
                    });
                }
            }
        }
        let link = &mut self.link;
        self.agg.close_due(now_ms, &mut |m| link.enqueue(m));
        self.link
            .poll(now_ms, &mut |b: &[u8]| out.extend_from_slice(b));
        out
    }

    /// Closes the open window now and stops sampling (the link keeps
    /// resending until everything is acked), for ending a simulation.
    pub fn flush(&mut self) {
        self.stopped = true;
        let link = &mut self.link;
        self.agg.flush(&mut |m| link.enqueue(m));
    }

    /// Feeds bytes from the gateway (Acks, TimeSync).
    pub fn receive(&mut self, bytes: &[u8]) {
        let mut syncs = Vec::new();
        self.link.receive(bytes, |m| {
            if let Message::TimeSync(t) = m {
                syncs.push(t.unix_ms)
            }
        });
        for unix_ms in syncs {
            let tick = self.next_sample.saturating_sub(self.config.period_ms);
            self.clock.sync(tick, unix_ms);
            if let Some(p) = self.clock.phase(self.config.width_ms) {
                self.agg.set_phase(p);
            }
        }
    }

    /// The Hello frame the device would send at `now_ms`.
    pub fn hello(&self, now_ms: u64) -> Hello {
        let mut channels = heapless::Vec::<ChannelInfo, MAX_CHANNELS>::new();
        for (i, spec) in SIM_CHANNELS.iter().enumerate() {
            let _ = channels.push(ChannelInfo {
                channel: i as u8,
                metric: heapless::String::try_from(spec.metric).unwrap_or_default(),
                unit: heapless::String::try_from(spec.unit).unwrap_or_default(),
                quantum: spec.quantum(),
                reference: spec.reference,
            });
        }
        let mut device = heapless::String::new();
        for c in self.config.device.chars() {
            if device.push(c).is_err() {
                break;
            }
        }
        Hello {
            device,
            boot: self.config.boot,
            first_unacked: self.link.first_unacked(self.agg.next_seq()),
            firmware: heapless::String::try_from(env!("CARGO_PKG_VERSION")).unwrap_or_default(),
            window_ms: if self.config.raw {
                0
            } else {
                self.config.width_ms
            },
            tick: now_ms,
            channels,
            stats: self.stats(),
        }
    }

    /// Counters since boot, as a Hello reports them.
    pub fn stats(&self) -> DeviceStats {
        let mut s = self.agg.stats();
        self.link.fill_stats(&mut s);
        s
    }

    /// The same device without its log of raw readings ([`Self::raw`]
    /// stays empty), for devices that run indefinitely: the log grows by a
    /// reading per channel and sample for as long as the device runs.
    pub fn without_truth(mut self) -> Self {
        self.record = false;
        self.raw = Vec::new();
        self
    }

    /// Every reading taken so far, in order, as the sensors gave it.
    pub fn raw(&self) -> &[RawReading] {
        &self.raw
    }

    /// Readings taken so far (all channels).
    pub fn readings(&self) -> u64 {
        self.readings
    }

    /// Frames still waiting for an ack.
    pub fn pending(&self) -> usize {
        self.link.pending()
    }
}

struct FailingSensor;

impl tributary_firmware::Sensor for FailingSensor {
    type Error = ();
    fn channels(&self) -> &'static [ChannelSpec] {
        &SIM_CHANNELS
    }
    fn measure(&mut self, _out: &mut [i32]) -> Result<(), ()> {
        Err(())
    }
}
