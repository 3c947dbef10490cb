//! Test devices that publish JSON readings (`tributary/v1/devices/{device}/readings`,
//! batches with a (boot, seq) identity) to a real local broker, and the
//! exact truth of what they published: every reading's series, event time
//! and value in ticks of the JSON quantum (10⁻⁶), kept as integers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tributary_core::SeriesKey;

/// The metrics each device measures.
pub const METRICS: [&str; 3] = ["flow", "power", "level"];

/// One published reading: (series text, event time ms, ticks of 10⁻⁶).
pub type Reading = (String, i64, i64);

/// Devices `dev-0…` each measuring [`METRICS`] every `period_ms` of event
/// time from `start_ms`, with values spread log-uniformly over four decades
/// (0.1 to 1000): every window's sketch spans all of them, so a partial is
/// about 900 bytes, as in the measurements.
pub struct Fleet {
    devices: usize,
    start_ms: i64,
    period_ms: i64,
    rng: fastrand::Rng,
    seq: u32,
    /// Everything published so far.
    pub readings: Vec<Reading>,
}

impl Fleet {
    /// The fleet; nothing published yet.
    pub fn new(devices: usize, start_ms: i64, period_ms: i64, seed: u64) -> Fleet {
        Fleet {
            devices,
            start_ms,
            period_ms,
            rng: fastrand::Rng::with_seed(seed),
            seq: 0,
            readings: Vec::new(),
        }
    }

    /// The series of the fleet, as the agent names them.
    pub fn series(&self) -> Vec<String> {
        (0..self.devices)
            .flat_map(|d| METRICS.map(|m| key(m, d)))
            .collect()
    }

    /// One message per device with its readings in event time
    /// `[from, to)` (offsets from `start_ms`): (topic, payload).
    pub fn chunk(&mut self, from: i64, to: i64) -> Vec<(String, String)> {
        let first = (from + self.period_ms - 1).div_euclid(self.period_ms);
        let mut out = Vec::new();
        for d in 0..self.devices {
            self.seq += 1;
            let mut items = Vec::new();
            let mut k = first;
            while k * self.period_ms < to {
                let time = self.start_ms + k * self.period_ms;
                for m in METRICS {
                    let x = 10f64.powf(self.rng.f64() * 4.0 - 1.0);
                    let ticks = (x * 1e6).round() as i64;
                    items.push(format!(
                        "{{\"metric\":\"{m}\",\"time\":{time},\"value\":{}.{:06}}}",
                        ticks / 1_000_000,
                        ticks % 1_000_000
                    ));
                    self.readings.push((key(m, d), time, ticks));
                }
                k += 1;
            }
            out.push((
                format!("tributary/v1/devices/dev-{d}/readings"),
                format!(
                    "{{\"v\":1,\"boot\":1,\"seq\":{},\"readings\":[{}]}}",
                    self.seq,
                    items.join(",")
                ),
            ));
        }
        out
    }
}

/// The series text of `metric` of device `d`.
fn key(metric: &str, d: usize) -> String {
    SeriesKey::new(metric, format!("dev-{d}"), Default::default())
        .unwrap()
        .to_string()
}

/// A QoS 1 publisher on the local broker.
pub struct Publisher {
    client: Client,
}

impl Publisher {
    /// Connects to the broker on `port` (its event loop on a thread).
    pub fn start(port: u16) -> Publisher {
        let mut o = MqttOptions::new(
            format!("test-devices-{}", fastrand::u32(..)),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 1000);
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Publisher { client }
    }

    /// Publishes with QoS 1 (blocks while the client's queue is full).
    pub fn publish(&self, topic: &str, payload: String) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into_bytes())
            .unwrap();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// (series text, window start, width) → (count, Σticks), as received.
pub type Received = HashMap<(String, i64, i64), (u64, i128)>;

/// A received window of one series: (start, width, (count, Σticks)).
type Landed = (i64, i64, (u64, i128));

/// Checks that what arrived is exact at the width each reading ended up in:
/// per series, the received windows not inside a wider received window (they
/// are disjoint, as aligned windows nest) each hold exactly the readings
/// published in them — every finer partial inside counted — and together
/// all of them. Returns how many partials arrived per width.
pub fn assert_exact_where_they_landed(got: &Received, readings: &[Reading]) -> HashMap<i64, usize> {
    let mut truth: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for (s, t, v) in readings {
        truth.entry(s.as_str()).or_default().push((*t, *v));
    }
    for v in truth.values_mut() {
        v.sort_unstable();
    }
    let mut widths: HashMap<i64, usize> = HashMap::new();
    let mut by_series: HashMap<&str, Vec<Landed>> = HashMap::new();
    for ((s, start, width), v) in got {
        *widths.entry(*width).or_default() += 1;
        by_series
            .entry(s.as_str())
            .or_default()
            .push((*start, *width, *v));
    }
    let inside = |(s, w): (i64, i64), (outer_s, outer_w): (i64, i64)| {
        s >= outer_s && s + w <= outer_s + outer_w
    };
    assert_eq!(
        by_series.keys().collect::<std::collections::BTreeSet<_>>(),
        truth.keys().collect::<std::collections::BTreeSet<_>>(),
        "series received"
    );
    for (series, windows) in &by_series {
        let readings = &truth[series];
        let mut covered = 0usize;
        for &(start, width, _) in windows {
            let m = (start, width);
            let wider = windows
                .iter()
                .any(|&(s, w, _)| w > width && inside(m, (s, w)));
            if wider {
                continue;
            }
            let mut received = (0u64, 0i128);
            for &(s, w, v) in windows {
                if inside((s, w), m) {
                    received.0 += v.0;
                    received.1 += v.1;
                }
            }
            let lo = readings.partition_point(|r| r.0 < start);
            let hi = readings.partition_point(|r| r.0 < start + width);
            let expected = readings[lo..hi]
                .iter()
                .fold((0u64, 0i128), |(n, sum), r| (n + 1, sum + i128::from(r.1)));
            assert_eq!(received, expected, "{series} in window {m:?}");
            covered += hi - lo;
        }
        assert_eq!(
            covered,
            readings.len(),
            "{series}: every reading in a window"
        );
    }
    widths
}
