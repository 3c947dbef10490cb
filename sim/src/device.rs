//! A host-side virtual device: exactly the firmware's
//! [`Aggregator`] and [`Link`] driven by deterministic, seeded simulated
//! sensors (sine + noise, steps, spikes, dropouts) over in-memory bytes, with
//! the ground truth of every reading taken so tests can compare exactly.

use std::collections::BTreeMap;
use std::vec::Vec;

use tributary_core::frame::{ChannelInfo, DeviceStats, Hello, Message, MAX_CHANNELS};
use tributary_core::summary::Summary;

use tributary_firmware::{index, Aggregator, AggregatorError, ChannelSpec, Clock, Link, Mode};

/// The simulated channels: temperature (sine + noise, spikes), humidity
/// (steps) and pressure (slow drift + noise).
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

/// A simulated device.
#[derive(Debug)]
pub struct VirtualDevice {
    config: SimConfig,
    agg: Aggregator<3>,
    link: Link<16, 128>,
    clock: Clock,
    rng: u64,
    next_sample: u64,
    next_hello: u64,
    truth: BTreeMap<(u8, u64), Summary>,
    record_truth: bool,
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
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            next_sample: 0,
            next_hello: 0,
            truth: BTreeMap::new(),
            record_truth: true,
            readings: 0,
            stopped: false,
        })
    }

    fn rand(&mut self) -> u32 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.rng >> 33) as u32
    }

    fn sample(&mut self, t: u64) -> Option<[i32; 3]> {
        if self.rand() % 1000 < self.config.dropout_per_mille {
            return None;
        }
        let phase = (t % 600_000) as f64 / 600_000.0 * core::f64::consts::TAU;
        let noise = (self.rand() % 201) as i32 - 100;
        let spike = if self.rand() % 500 == 0 { 15_000 } else { 0 };
        let temp = 21_000 + (3_000.0 * phase.sin()) as i32 + noise + spike;
        let hum = 4_000 + ((t / 120_000) % 4) as i32 * 500;
        let pres = 101_325 + ((t / 1_000) % 200) as i32 + (self.rand() % 11) as i32 - 5;
        Some([temp, hum, pres])
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
            let Some(values) = self.sample(t) else {
                self.agg
                    .poll(t, &mut FailingSensor, &mut |m| self.link.enqueue(m));
                continue;
            };
            let link = &mut self.link;
            self.agg.record(t, &values, &mut |m| link.enqueue(m));
            self.readings += 3;
            if let Some(start) = self.agg.window_start().filter(|_| self.record_truth) {
                for (ch, &v) in values.iter().enumerate() {
                    let q = SIM_CHANNELS[ch].quantum();
                    let s = self
                        .truth
                        .entry((ch as u8, start))
                        .or_insert_with(|| Summary::new(q));
                    // Ticks are small i32 values: insert cannot fail.
                    let _ = s.insert(t as i64, i64::from(v));
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

    /// The same device without its ground-truth record ([`Self::truth`]
    /// stays empty), for devices that run indefinitely: the record grows by
    /// a summary per channel and window for as long as the device runs.
    pub fn without_truth(mut self) -> Self {
        self.record_truth = false;
        self.truth.clear();
        self
    }

    /// Ground truth: a summary of every reading taken, per (channel, window
    /// start tick).
    pub fn truth(&self) -> &BTreeMap<(u8, u64), Summary> {
        &self.truth
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
