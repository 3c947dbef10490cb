//! System tests with real processes: `tributary-agent` processes with
//! simulated devices publish through a real mosquitto to a
//! `tributary-collector run` process. Every merged (series, window) must
//! agree with the oracle's exact statistics of the devices' raw readings
//! (count, sums, min, max, first, last, mean, variance, stddev exactly;
//! quantiles in the true value's bucket): with the collector killed
//! (`kill -9`) at random moments, with a broker whose tiny per-client queue
//! drops QoS 1 messages, and with batches replayed afterwards. The agents
//! are in two sites (their global `site` tag), and the collector's HTTP API
//! grouped by site must return, per group and step, the oracle's statistics
//! of the readings of the group's series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tributary_agent::config::{Config as AgentConfig, SimMode, SimulatedConfig};
use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::{SeriesKey, Summary, Width};
use tributary_demo::truth;
use tributary_oracle::Readings;
use tributary_testkit::{free_port, workspace_bin, Mosquitto, MosquittoOptions};

const WIDTH: i64 = 5_000;
const DEVICE_WINDOW: u32 = 1_000;

type Results = BTreeMap<(SeriesKey, i64), Summary>;

fn sim(
    agent: usize,
    devices: usize,
    windows: u64,
    start_ms: i64,
    frame_rate: u32,
) -> SimulatedConfig {
    SimulatedConfig {
        devices,
        prefix: format!("gw{agent}-dev"),
        mode: SimMode::Summaries,
        channels: 2,
        device_window_ms: DEVICE_WINDOW,
        readings_per_window: 5,
        windows,
        start_ms,
        frame_rate,
        max_unacked: 12,
        ..SimulatedConfig::default()
    }
}

fn start_ms() -> i64 {
    let now = tributary_runtime::now_ms();
    (now - 3_600_000).div_euclid(WIDTH) * WIDTH
}

/// The site of agent `index`: agents 0 and 1 are in `north`, 2 in `south`.
fn site(index: usize) -> &'static str {
    if index < 2 {
        "north"
    } else {
        "south"
    }
}

/// The agents' devices' raw readings, keys with the agents' global tags.
fn expected(agents: &[AgentConfig]) -> Readings {
    truth::readings(agents).unwrap()
}

/// Asserts every stored window agrees with the oracle.
fn assert_windows_agree(got: &Results, want: &Readings) {
    let verdict = truth::judge_windows(got, &want.windows(WIDTH).unwrap());
    assert!(verdict.checked > 0);
    assert!(
        verdict.ok(),
        "{} of {} windows disagree with the oracle: {:#?}",
        verdict.mismatched,
        verdict.checked,
        verdict.problems
    );
}

fn stored(db: &Path) -> Results {
    let Ok(store) = SqliteStore::open(db, &[]) else {
        return Results::new();
    };
    // These tests are synchronous (they drive processes): a runtime of
    // its own for the read.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return Results::new();
    };
    rt.block_on(all_windows(&store, Width::new(WIDTH).unwrap()))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, w)| (k, w.summary))
        .collect()
}

fn count(r: &Results) -> u64 {
    r.values().map(Summary::count).sum()
}

struct Collector {
    config: PathBuf,
    db: PathBuf,
    http: u16,
    child: Option<Child>,
}

impl Collector {
    fn new(dir: &Path, broker: u16) -> Collector {
        let http = free_port();
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nrollups_ms = [3600000]\n[mqtt]\nport = {broker}\nclient_id = \"e2e-collector\"\nmax_group = 64\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
                dir.join("data")
            ),
        )
        .unwrap();
        Collector {
            config,
            db: dir.join("data").join("collector.db"),
            http,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(workspace_bin("tributary-collector").unwrap())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    /// The status line and body of `GET path` on the collector's HTTP server.
    fn get(&self, path: &str) -> Option<(String, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config of agent `index` (in [`site`]`(index)`), as the agent
/// process loads it.
fn agent_config(dir: &Path, index: usize, broker: u16, sim: &SimulatedConfig) -> AgentConfig {
    let text = format!(
            "agent_id = \"gw-{index}\"\ndata_dir = {:?}\n\
             [tags]\nsite = {:?}\ngateway = \"gw-{index}\"\n\
             [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 1000\nidle_close_ms = 1500\n\
             [store]\ncommit_interval_ms = 20\n\
             [uplink]\nport = {broker}\nconfirm_timeout_ms = 1500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\nmax_in_flight = 8\n\
             [http]\nlisten = \"\"\n[outbox]\nbatch_max_partials = 20\n\
             [simulated]\ndevices = {}\nprefix = {:?}\nmode = \"summaries\"\nchannels = {}\ndevice_window_ms = {}\nreadings_per_window = {}\nwindows = {}\nstart_ms = {}\nframe_rate = {}\nmax_unacked = {}\n",
            dir.join(format!("agent-{index}")),
            site(index),
            sim.devices,
            sim.prefix,
            sim.channels,
            sim.device_window_ms,
            sim.readings_per_window,
            sim.windows,
            sim.start_ms,
            sim.frame_rate,
            sim.max_unacked,
    );
    let config = AgentConfig::from_toml(&text).unwrap();
    std::fs::write(dir.join(format!("agent-{index}.toml")), text).unwrap();
    config
}

fn agent_process(dir: &Path, index: usize) -> Child {
    let config = dir.join(format!("agent-{index}.toml"));
    Command::new(workspace_bin("tributary-agent").unwrap())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the store holds `n` readings (or `timeout` passes).
fn wait_for(db: &Path, n: u64, timeout: Duration) -> Results {
    let deadline = Instant::now() + timeout;
    loop {
        let got = stored(db);
        if count(&got) >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records every batch payload published to the collector, for replay.
/// (topic, payload) of every batch seen.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn spy(broker: u16) -> (Client, Seen) {
    let mut o = MqttOptions::new("e2e-spy", "127.0.0.1", broker);
    o.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut conn) = Client::new(o, 100);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let c2 = client.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c2.try_subscribe(tributary_core::topic::ALL_PARTIALS, QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    s2.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    (client, seen)
}

/// The statistics the grouped queries ask for (`first`/`last` depend only
/// on the merged summary too, so they are compared as well).
const STATS: &str = "count,sum,min,max,mean,stddev,first,last,p0,p1,p50,p90,p99,p100";

/// Queries every metric grouped by `site` at `step` and asserts each
/// group's points agree, statistic by statistic, with the oracle's
/// statistics of the readings of the group's series (quantiles at the
/// coarsest scale of the stored windows the point merges).
fn assert_groups_match_truth(collector: &Collector, want: &Readings, stored: &Results, step: i64) {
    let windows = want.windows(WIDTH).unwrap();
    let from = windows.keys().map(|(_, t)| *t).min().unwrap();
    let to = windows.keys().map(|(_, t)| *t).max().unwrap() + WIDTH;
    let stats: Vec<&str> = STATS.split(',').collect();
    let metrics: std::collections::BTreeSet<&str> =
        want.series().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics.len(), 3, "{metrics:?}");
    for metric in metrics {
        let truth = want
            .grouped(metric, "site", WIDTH, (from, to, step))
            .unwrap();
        let scales = truth::group_scales(stored, metric, "site", (from, to, step));
        let sites: std::collections::BTreeSet<&str> =
            truth.keys().map(|(site, _)| site.as_str()).collect();
        assert_eq!(
            sites,
            ["north", "south"].into(),
            "{metric}: the readings have both sites"
        );
        let path = format!(
            "/api/v1/query?metric={metric}&from={from}&to={to}&width={WIDTH}&step={step}&group_by=site&stats={STATS}"
        );
        let (status, body) = collector.get(&path).unwrap();
        assert!(status.contains(" 200 "), "{path}: {status} {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["step"], step);
        let mut got: BTreeMap<(String, i64), &Value> = BTreeMap::new();
        for group in v["results"].as_array().unwrap() {
            let site = group["group"]["site"].as_str().unwrap().to_string();
            for p in group["points"].as_array().unwrap() {
                got.insert((site.clone(), p["t"].as_i64().unwrap()), p);
            }
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            truth.keys().collect::<Vec<_>>(),
            "{metric} at step {step}: one point per (site, step) of the readings"
        );
        for ((site, t), stats_want) in &truth {
            let point = got[&(site.clone(), *t)];
            let scale = scales[&(site.clone(), *t)];
            assert!(
                scale >= truth::FLOOR_SCALE,
                "{metric} site={site} t={t}: scale {scale}"
            );
            let problems = truth::judge_point(point, stats_want, &stats, scale);
            assert!(
                problems.is_empty(),
                "{metric} site={site} t={t} step={step}: {problems:#?}"
            );
        }
    }
}

#[test]
fn agents_through_mosquitto_merge_exactly_and_replays_change_nothing() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::new(dir.path(), broker.port());
    collector.spawn();
    let (spy_client, seen) = spy(broker.port());
    let start = start_ms();
    let configs: Vec<_> = (0..3)
        .map(|a| agent_config(dir.path(), a, broker.port(), &sim(a, 4, 30, start, 0)))
        .collect();
    let want = expected(&configs);
    let n = want.count();
    let mut agents: Vec<Child> = (0..configs.len())
        .map(|i| agent_process(dir.path(), i))
        .collect();
    let got = wait_for(&collector.db, n, Duration::from_secs(90));
    assert_eq!(count(&got), n, "every reading arrived");
    assert_windows_agree(&got, &want);
    for a in &mut agents {
        a.kill().unwrap();
        a.wait().unwrap();
    }
    // Grouped by site through the HTTP API: per window, and at a coarser
    // step merged on the fly.
    assert_groups_match_truth(&collector, &want, &got, WIDTH);
    assert_groups_match_truth(&collector, &want, &got, 6 * WIDTH);

    // Replay every batch the agents published: nothing may change.
    let replay = seen.lock().unwrap().clone();
    assert!(
        replay.len() > 10,
        "the spy saw the batches ({})",
        replay.len()
    );
    let dup_before = collector
        .metric("tributary_collector_batches_total{result=\"duplicate\"}")
        .unwrap();
    for (topic, payload) in &replay {
        spy_client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let dup_after = loop {
        let d = collector
            .metric("tributary_collector_batches_total{result=\"duplicate\"}")
            .unwrap();
        if d >= dup_before + replay.len() as f64 || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        dup_after >= dup_before + replay.len() as f64,
        "every replayed batch was recognised as a duplicate ({dup_before} → {dup_after})"
    );
    assert_eq!(stored(&collector.db), got, "replays changed nothing");
}

#[test]
fn collector_killed_ten_times_on_a_lossy_broker_stays_exact() {
    // A per-client queue of 5 makes mosquitto drop QoS 1 messages for a busy
    // collector (after PUBACKing the agents): only end-to-end confirmations
    // get those batches through.
    let broker = Mosquitto::start(MosquittoOptions {
        max_queued_messages: Some(5),
        max_inflight_messages: Some(5),
        port: None,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::new(dir.path(), broker.port());
    let start = start_ms();
    let configs: Vec<_> = (0..3)
        .map(|a| agent_config(dir.path(), a, broker.port(), &sim(a, 6, 200, start, 40)))
        .collect();
    let want = expected(&configs);
    let n = want.count();
    let mut agents: Vec<Child> = (0..configs.len())
        .map(|i| agent_process(dir.path(), i))
        .collect();
    let mut rng = fastrand::Rng::with_seed(0xc011);
    for _ in 0..10 {
        collector.spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(300..1200)));
        collector.kill();
    }
    let before = count(&stored(&collector.db));
    assert!(before < n, "the kills interrupted the run ({before}/{n})");
    collector.spawn();
    let got = wait_for(&collector.db, n, Duration::from_secs(120));
    for a in &mut agents {
        a.kill().unwrap();
        a.wait().unwrap();
    }
    assert_eq!(count(&got), n, "every reading arrived exactly once");
    assert_windows_agree(&got, &want);
}
