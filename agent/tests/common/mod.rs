//! Shared test helpers: a stand-in collector that de-duplicates batches by
//! (agent, incarnation, seq), merges partials per (series, window) and
//! publishes Confirms; the oracle's view of the simulated devices' raw
//! readings; a plain HTTP GET and a metric of the agent's `/metrics`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tributary_agent::config::SimulatedConfig;
use tributary_core::batch::{Batch, Confirm, Incarnation};
use tributary_core::{topic, SeriesKey, Summary};
use tributary_sim::fleet as simulated;
use tributary_sim::judge::{self, Verdict};

/// (series, window start, width) → the merge of the partials received.
pub type Merged = BTreeMap<(SeriesKey, i64, i64), Summary>;

/// (series text, window start, width) → (count, Σticks).
pub type Totals = HashMap<(String, i64, i64), (u64, i128)>;

#[derive(Debug, Default)]
pub struct Received {
    pub seqs: HashSet<(String, Incarnation, u64)>,
    pub totals: Totals,
    pub merged: Merged,
    pub readings: u64,
    pub duplicates: u64,
    pub dropped: u64,
}

/// The test's collector: subscribes to every agent's partials.
pub struct TestCollector {
    pub state: Arc<Mutex<Received>>,
    client: Client,
}

impl TestCollector {
    pub fn start(port: u16) -> TestCollector {
        TestCollector::start_confirming_after(port, Duration::ZERO)
    }

    /// A collector that confirms each batch `delay` after it arrived (as
    /// one whose store commits slowly would).
    pub fn start_confirming_after(port: u16, delay: Duration) -> TestCollector {
        let mut o = MqttOptions::new(
            format!("test-collector-{}", fastrand::u32(..)),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut conn) = Client::new(o, 1000);
        let state = Arc::new(Mutex::new(Received::default()));
        let st = state.clone();
        let c2 = client.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.try_subscribe(topic::ALL_PARTIALS, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(b) = Batch::decode(&p.payload) else {
                            continue;
                        };
                        {
                            let mut s = st.lock().unwrap();
                            if s.seqs.insert((b.agent.clone(), b.incarnation, b.seq)) {
                                s.dropped += b.dropped_readings;
                                for part in &b.partials {
                                    let e = s
                                        .totals
                                        .entry((
                                            part.series.to_string(),
                                            part.window.start(),
                                            part.window.width().ms(),
                                        ))
                                        .or_default();
                                    e.0 += part.summary.count();
                                    e.1 += part.summary.sum_ticks();
                                    s.readings += part.summary.count();
                                    let key = (
                                        part.series.clone(),
                                        part.window.start(),
                                        part.window.width().ms(),
                                    );
                                    match s.merged.get_mut(&key) {
                                        Some(m) => m.merge(&part.summary).unwrap(),
                                        None => {
                                            s.merged.insert(key, part.summary.clone());
                                        }
                                    }
                                }
                            } else {
                                s.duplicates += 1;
                            }
                        }
                        let c = Confirm::new(b.agent.clone(), b.incarnation, vec![b.seq]);
                        let confirm = {
                            let c2 = c2.clone();
                            move || {
                                let _ = c2.try_publish(
                                    topic::acks(&b.agent),
                                    QoS::AtLeastOnce,
                                    false,
                                    c.encode(),
                                );
                            }
                        };
                        if delay.is_zero() {
                            confirm();
                        } else {
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                confirm();
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        TestCollector { state, client }
    }

    pub fn readings(&self) -> u64 {
        self.state.lock().unwrap().readings
    }

    /// Waits until `n` readings arrived (or the timeout passes).
    pub fn wait_for(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.readings();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn totals(&self) -> Totals {
        self.state.lock().unwrap().totals.clone()
    }

    /// The merged summaries received, per (series, window start) of `width`.
    pub fn windows(&self, width: i64) -> BTreeMap<(SeriesKey, i64), Summary> {
        let s = self.state.lock().unwrap();
        s.merged
            .iter()
            .filter(|((_, _, w), _)| *w == width)
            .map(|((k, t, _), m)| ((k.clone(), *t), m.clone()))
            .collect()
    }

    /// The oracle's verdict on every merged window of `width` against the
    /// raw readings of the devices of `sim`.
    pub fn verdict(&self, sim: &SimulatedConfig, width: i64) -> Verdict {
        verdict(&self.windows(width), sim, width)
    }
}

/// The oracle's verdict on `got`, results per (series, window start) of
/// `width`, against the raw readings of the devices of `sim`.
pub fn verdict(
    got: &BTreeMap<(SeriesKey, i64), Summary>,
    sim: &SimulatedConfig,
    width: i64,
) -> Verdict {
    let want = judge::oracle(&simulated::readings(sim).unwrap())
        .unwrap()
        .windows(width)
        .unwrap();
    judge::judge_windows(got, &want)
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// The exact (count, Σticks) of the simulated devices' raw readings per
/// agent window of event time.
pub fn truth(sim: &SimulatedConfig, width: i64) -> Totals {
    let mut out = Totals::new();
    for s in simulated::readings(sim).unwrap() {
        for &(t, v) in &s.readings {
            let e = out
                .entry((s.series.to_string(), t.div_euclid(width) * width, width))
                .or_default();
            e.0 += 1;
            e.1 += i128::from(v);
        }
    }
    out
}

/// Per-series (count, Σticks), whatever the windows.
pub fn per_series(t: &Totals) -> HashMap<String, (u64, i128)> {
    let mut out: HashMap<String, (u64, i128)> = HashMap::new();
    for ((s, _, _), (n, sum)) in t {
        let e = out.entry(s.clone()).or_default();
        e.0 += n;
        e.1 += sum;
    }
    out
}

/// A time well in the past, aligned to `align`, fixed per test run.
pub fn start_ms(align: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 86_400_000).div_euclid(align) * align
}

pub fn sim_config(devices: usize, windows: u64, start: i64, frame_rate: u32) -> SimulatedConfig {
    SimulatedConfig {
        devices,
        prefix: "sim-".into(),
        mode: tributary_agent::config::SimMode::Summaries,
        device_window_ms: 1000,
        readings_per_window: 5,
        windows,
        start_ms: start,
        frame_rate,
        max_unacked: 12,
        ..SimulatedConfig::default()
    }
}

/// An agent config as TOML text.
pub fn agent_toml(dir: &std::path::Path, port: u16, sim: &SimulatedConfig, extra: &str) -> String {
    format!(
        "agent_id = \"gw-test\"\ndata_dir = {dir:?}\n[window]\nwidth_ms = 5000\nallowed_lateness_ms = 1000\nidle_close_ms = 1500\n\
[store]\ncommit_interval_ms = 20\n[uplink]\nport = {port}\nconfirm_timeout_ms = 1500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\nmax_in_flight = 8\n\
[http]\nlisten = \"\"\n[outbox]\nbatch_max_partials = 20\n\
[simulated]\ndevices = {}\nmode = \"summaries\"\ndevice_window_ms = {}\nreadings_per_window = {}\nwindows = {}\nstart_ms = {}\nframe_rate = {}\nmax_unacked = {}\n{extra}",
        sim.devices, sim.device_window_ms, sim.readings_per_window, sim.windows, sim.start_ms, sim.frame_rate, sim.max_unacked,
        dir = dir.display().to_string(),
    )
}

/// The status code and body of `GET path` on 127.0.0.1:`port` (None: no
/// answer).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of the sample `name` (with its labels, if any) in the
/// `/metrics` served on `port`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
