//! End-to-end ingest throughput (issue #16): partials per second from N
//! agents' batches through a real mosquitto into the collector's real
//! ingest on SQLite, applied, committed and confirmed — with the time from
//! each batch's PUBLISH to its confirmation (p50/p99) — beside a bare
//! baseline in the same run: the same messages through the same broker to a
//! plain subscriber that only counts them.
//!
//! ```text
//! cargo run --release -p tributary-collector --example ingest_bench -- \
//!     [--agents 8] [--series 200] [--minutes 60] [--readings 60] \
//!     [--encoding binary|json] [--in-flight 16] [--group 256] [--runs 3]
//! ```
//!
//! Each agent is a plain MQTT client (rumqttc) replaying its batches, encoded
//! beforehand as the agent encodes them (encoding is not timed): one batch a
//! minute holding a partial of `--readings` readings for each of its
//! `--series` series, as agents close one-minute windows; at most
//! `--in-flight` batches published and not yet confirmed (the agent's
//! `uplink.max_in_flight`), each confirmation consumed from its acks topic
//! as an agent does. The collector and the broker are started fresh for
//! every run (SQLite durable, `synchronous = FULL`); at the end of each run
//! the collector must have merged every reading. The baseline publishes the
//! same payloads with the same window of unacknowledged messages (MQTT
//! PUBACKs instead of confirmations) to a subscriber of the partials topic.
//!
//! Each end-to-end run also prints where its time went: the share of the
//! run the collector's one store writer was in a transaction (the sum of
//! its `tributary_collector_store_commit_seconds`), the groups and their
//! size, and the CPU cores of the bench's process (collector and
//! publishers), of mosquitto and of the whole machine.
//!
//! # Figures
//! Medians of 3, release build, 2026-12-02 at 04:52 UTC on a quiet 2-core
//! machine (load average about 1), 8 agents × 200 partials of 60 readings:
//! - defaults (60 batches each, 96,000 partials a run): 98,669 partials/s
//!   (5.9 M readings/s), confirmation p50 232 ms, p99 331 ms; baseline
//!   6.6 M partials/s; store writer busy 79 % of the run (groups of 40
//!   batches), bench process 0.99 cores, mosquitto 0.01, machine 51 % busy;
//! - `--in-flight 64 --minutes 240` (384,000 partials a run): 126,634
//!   partials/s, p50 807 ms, p99 1,095 ms; baseline 7.6 M; writer busy
//!   87 % (groups of 160), 1.12 cores, machine 58 % busy.
//!
//! Again at 12:00 UTC, on a day the machine ran slower (the bare broker
//! 4.7 M, the bare PostgreSQL loop at half its morning rate), after the
//! writer's CPU was cut (`config/multi-instance/OPERATIONS.md`): 83,386
//! partials/s with the defaults (p50 294 ms, p99 438 ms; writer busy
//! 75 %) and 103,813 with 64 in flight (p50 932 ms, p99 1,203 ms; writer
//! busy 79 %, 1.22 cores, machine 64 % busy); the build before that change,
//! alternated with it in the same minutes, ran at 95,230 against 104,301
//! with 64 in flight (medians of 3 single runs).
//!
//! The decoder then stopped copying each series key into every partial (it
//! moves the key into the first partial that names it). Three alternating
//! single runs each of `--in-flight 64 --minutes 240` against the build
//! before, nothing else running, twice on 2026-12-02:
//! - 15:10 UTC: medians 89,441 partials/s before, 96,209 after (ranges
//!   88,990–92,946 and 87,640–97,078); bench process 1.26 and 1.22 cores;
//!   the baseline lines of these runs were not kept;
//! - 16:22 UTC: medians 118,105 before, 112,621 after (ranges
//!   113,069–125,999 and 104,761–146,144), baseline (bare broker) medians
//!   5.43 M and 5.68 M; bench process 1.26 and 1.21 cores.
//!
//! Throughput did not move beyond the spread between runs; the process's
//! CPU fell by about 4 %. The writer was busy 76–87 % of each run either
//! way.
//!
//! On a freshly started machine (2026-12-02, 19:05 UTC, load average
//! 0.3, the bare broker at 7.0 M against 4.7–5.7 M at 12:00 and 16:22),
//! medians of 3 (`--runs 3`): 134,928 partials/s with the defaults (p50
//! 168 ms, p99 229 ms; writer busy 81 %) and **203,592** with `--in-flight 64
//! --minutes 240` (runs 203,592, 197,889, 223,107; p50 468 ms, p99
//! 656 ms; writer busy 85 %, groups of 160 batches, bench process 1.30
//! cores): issue #16's 200 k, with 64 batches in flight per agent.
//!
//! The broker moves the batches 35–65× faster than they are applied. The
//! bound is the collector's one SQLite writer: its transaction, with the
//! 1 h and 1 d roll-ups, is most of the work and runs on one core while
//! the other is half idle; the confirmation latency is the queue of
//! batches in flight ahead of each one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Confirm, Encoding, Partial};
use tributary_core::{topic, Incarnation, Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Mosquitto, MosquittoOptions};

mod measure;

const MIN: i64 = 60_000;
/// No run may take longer.
const RUN_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
struct Args {
    /// Agents (MQTT clients publishing batches).
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Series per agent: the partials of each batch.
    #[arg(long, default_value_t = 200)]
    series: usize,
    /// Batches per agent (one a minute of event time).
    #[arg(long, default_value_t = 60)]
    minutes: usize,
    /// Readings per partial (60: 1 Hz readings in one-minute windows).
    #[arg(long, default_value_t = 60)]
    readings: i64,
    /// Batch encoding.
    #[arg(long, default_value = "binary")]
    encoding: String,
    /// Batches published and not yet confirmed per agent, at most.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// The collector's `mqtt.max_group` (batches per store transaction).
    #[arg(long, default_value_t = 256)]
    group: usize,
    /// Runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One agent's payloads, in sequence order, and the partials of each.
struct AgentLoad {
    id: String,
    payloads: Vec<Vec<u8>>,
}

/// The agents' batches, encoded. Windows end before now (the collector
/// refuses windows too far ahead of its clock).
fn workload(a: &Args, encoding: Encoding) -> Vec<AgentLoad> {
    let q = Quantum::new(-2).unwrap();
    let t0 = (tributary_runtime::now_ms() / MIN - a.minutes as i64 - 1) * MIN;
    // A few templates of one window's readings, shifted to each minute.
    let templates: Vec<Summary> = (0..16i64)
        .map(|k| {
            let mut s = Summary::new(q);
            for i in 0..a.readings {
                let v = 2_000 + (i * 7_919 + k * 131) % 400;
                s.insert(t0 + i * (MIN / a.readings.max(1)), v).unwrap();
            }
            s
        })
        .collect();
    let width = Width::new(MIN).unwrap();
    (0..a.agents)
        .map(|g| {
            let id = format!("gw-{g}");
            let keys: Vec<SeriesKey> = (0..a.series)
                .map(|s| {
                    let tags = [("site".to_string(), format!("site-{}", g % 4))].into();
                    SeriesKey::new("temperature", format!("gw{g}-dev{s}"), tags).unwrap()
                })
                .collect();
            let incarnation = Incarnation::new(0x5eed_0000 + g as u64);
            let payloads = (0..a.minutes)
                .map(|m| {
                    let shift = m as i64 * MIN;
                    let partials = keys
                        .iter()
                        .enumerate()
                        .map(|(s, k)| Partial {
                            series: k.clone(),
                            window: Window::new(t0 + shift, width).unwrap(),
                            summary: templates[s % templates.len()].shifted(shift),
                        })
                        .collect();
                    let seq = m as u64 + 1;
                    Batch::new(&id, seq, t0 + shift + MIN, partials)
                        .with_identity(incarnation, seq)
                        .encode(encoding)
                })
                .collect();
            AgentLoad { id, payloads }
        })
        .collect()
}

fn options(client_id: &str, port: u16, in_flight: usize) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(8 << 20, 8 << 20);
    o.set_inflight(u16::try_from(in_flight.max(1)).unwrap_or(u16::MAX));
    o
}

/// Times (from the run's start) of each batch's publication and of its
/// confirmation (or arrival), per agent.
type Times = Vec<(Duration, Duration)>;

/// Publishes `load` keeping at most `in_flight` batches unconfirmed; each
/// confirmation on the agent's acks topic releases its sequences.
async fn agent(load: Arc<AgentLoad>, port: u16, in_flight: usize, start: Instant) -> Times {
    let (client, mut ev) = AsyncClient::new(options(&load.id, port, in_flight), in_flight + 8);
    let acks = topic::acks(&load.id);
    let partials_topic = topic::partials(&load.id);
    let n = load.payloads.len();
    let mut sent = vec![Duration::ZERO; n];
    let mut done: Vec<Option<Duration>> = vec![None; n];
    let (mut next, mut open, mut confirmed) = (0usize, 0usize, 0usize);
    let mut subscribed = false;
    while confirmed < n {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.try_subscribe(&acks, QoS::AtLeastOnce).unwrap();
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == acks => {
                let c = Confirm::decode(&p.payload).unwrap();
                for seq in c.seqs {
                    let i = (seq as usize).wrapping_sub(1);
                    if let Some(slot @ None) = done.get_mut(i) {
                        *slot = Some(start.elapsed());
                        open -= 1;
                        confirmed += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => panic!("agent {}: {e}", load.id),
        }
        while subscribed && open < in_flight && next < n {
            sent[next] = start.elapsed();
            let payload = load.payloads[next].clone();
            client
                .try_publish(&partials_topic, QoS::AtLeastOnce, false, payload)
                .unwrap();
            (next, open) = (next + 1, open + 1);
        }
    }
    let _ = client.try_disconnect();
    sent.into_iter()
        .zip(done)
        .map(|(s, d)| (s, d.unwrap_or_default()))
        .collect()
}

/// Publishes `load` with at most `in_flight` PUBLISHes not yet PUBACKed.
async fn bare_publisher(
    load: Arc<AgentLoad>,
    port: u16,
    in_flight: usize,
    start: Instant,
) -> Vec<Duration> {
    let (client, mut ev) = AsyncClient::new(options(&load.id, port, in_flight), in_flight + 8);
    let topic = topic::partials(&load.id);
    let n = load.payloads.len();
    let mut sent = Vec::with_capacity(n);
    let (mut open, mut acked) = (0usize, 0usize);
    let mut connected = false;
    while acked < n {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                open -= 1;
                acked += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("publisher {}: {e}", load.id),
        }
        while connected && open < in_flight && sent.len() < n {
            sent.push(start.elapsed());
            let payload = load.payloads[sent.len() - 1].clone();
            client
                .try_publish(&topic, QoS::AtLeastOnce, false, payload)
                .unwrap();
            open += 1;
        }
    }
    let _ = client.try_disconnect();
    sent
}

/// One run's figures.
struct Run {
    partials_per_s: f64,
    p50: Duration,
    p99: Duration,
    /// What the end-to-end run cost (none for the baseline).
    cost: Option<Cost>,
}

/// Where an end-to-end run's time went: the share of it the collector's
/// one store writer was in a transaction (its
/// `tributary_collector_store_commit_seconds` sum over the run), the groups
/// it committed, and the CPU the bench's process (collector and
/// publishers), mosquitto and the whole machine used, in cores.
struct Cost {
    store_busy: f64,
    groups: f64,
    batches_per_group: f64,
    process_cores: f64,
    broker_cores: f64,
    machine_busy: f64,
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "store writer busy {:.0} % of the run ({:.0} groups of {:.1} batches); CPU cores: bench process (collector + publishers) {:.2}, mosquitto {:.2}; machine {:.0} % busy",
            self.store_busy * 100.0,
            self.groups,
            self.batches_per_group,
            self.process_cores,
            self.broker_cores,
            self.machine_busy * 100.0
        )
    }
}

/// The value of sample `name` in the Prometheus text `text`; a sample that
/// is missing (a renamed metric) fails the run rather than reading as 0.
fn sample(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no sample {name} in the collector's metrics"))
}

fn figures(partials: usize, mut latencies: Vec<Duration>, elapsed: Duration) -> Run {
    latencies.sort();
    let at = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        partials_per_s: partials as f64 / elapsed.as_secs_f64(),
        p50: at(50),
        p99: at(99),
        cost: None,
    }
}

fn broker() -> anyhow::Result<Mosquitto> {
    Mosquitto::start(MosquittoOptions {
        // No message may be dropped for want of queue room.
        max_queued_messages: Some(1_000_000),
        ..MosquittoOptions::default()
    })
    .context("starting mosquitto (Debian package `mosquitto`)")
}

/// The collector on SQLite and the agents, through mosquitto.
async fn end_to_end(
    a: &Args,
    loads: &[Arc<AgentLoad>],
    partials: usize,
    readings: u64,
) -> anyhow::Result<Run> {
    let broker = broker()?;
    let dir = tempfile::tempdir()?;
    let text = format!(
        "data_dir = {:?}\n[mqtt]\nport = {}\nmax_group = {}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().display().to_string(),
        broker.port(),
        a.group
    );
    let cfg = Config::from_toml(&text).context("collector config")?;
    let store = SqliteStore::open(&cfg.db_path(), &cfg.rollups_ms).context("opening SQLite")?;
    let collector = service::start(&cfg, store)
        .await
        .context("starting the collector")?;
    let counters = collector.counters().clone();
    let ready = Instant::now();
    while counters.subscribed.get() != 1 {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the collector did not subscribe within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let broker_pid = broker
        .pid()
        .context("mosquitto is not running")?
        .to_string();
    let (machine0, own0, broker0) = (
        measure::machine(),
        measure::process("self"),
        measure::process(&broker_pid),
    );
    let start = Instant::now();
    let tasks: Vec<_> = loads
        .iter()
        .map(|l| tokio::spawn(agent(l.clone(), broker.port(), a.in_flight, start)))
        .collect();
    let mut latencies = Vec::with_capacity(partials);
    let mut last = Duration::ZERO;
    for t in tasks {
        for (sent, done) in tokio::time::timeout(RUN_LIMIT, t)
            .await
            .context("run limit")??
        {
            latencies.push(done.saturating_sub(sent));
            last = last.max(done);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let metrics = counters.render();
    let store = |name: &str| sample(&metrics, &format!("tributary_collector_store_{name}"));
    let groups = store("group_batches_count")?;
    let cost = Cost {
        store_busy: store("commit_seconds_sum")? / wall,
        groups,
        batches_per_group: store("group_batches_sum")? / groups.max(1.0),
        process_cores: (measure::process("self") - own0) / wall,
        broker_cores: (measure::process(&broker_pid) - broker0) / wall,
        machine_busy: measure::busy_between(machine0, measure::machine()),
    };
    let merged = counters.readings.get();
    collector.stop().await.context("stopping the collector")?;
    if merged != readings {
        bail!("the collector merged {merged} readings of {readings}");
    }
    Ok(Run {
        cost: Some(cost),
        ..figures(partials, latencies, last)
    })
}

/// The same messages to a plain subscriber.
async fn bare(a: &Args, loads: &[Arc<AgentLoad>], partials: usize) -> anyhow::Result<Run> {
    let broker = broker()?;
    let port = broker.port();
    let total: usize = loads.iter().map(|l| l.payloads.len()).sum();
    let agents: Vec<String> = loads.iter().map(|l| l.id.clone()).collect();
    let (client, mut ev) = AsyncClient::new(options("bare-subscriber", port, 100), 16);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let subscriber = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut arrivals: Vec<VecDeque<Duration>> = vec![VecDeque::new(); agents.len()];
        let mut start = None::<Instant>;
        let mut got = 0;
        while got < total {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(topic::ALL_PARTIALS, QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let now = Instant::now();
                    start = Some(now);
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(now);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let agent = topic::agent_of_partials(&p.topic).unwrap_or_default();
                    let i = agents.iter().position(|a| a == agent).unwrap();
                    arrivals[i].push_back(start.unwrap().elapsed());
                    got += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        arrivals
    });
    let start = ready_rx.await.context("subscriber")?;
    let tasks: Vec<_> = loads
        .iter()
        .map(|l| tokio::spawn(bare_publisher(l.clone(), port, a.in_flight, start)))
        .collect();
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(
            tokio::time::timeout(RUN_LIMIT, t)
                .await
                .context("run limit")??,
        );
    }
    let arrivals = tokio::time::timeout(RUN_LIMIT, subscriber)
        .await
        .context("run limit")??;
    let mut latencies = Vec::new();
    let mut last = Duration::ZERO;
    // One publisher's messages reach the subscriber in order (MQTT §4.6).
    for (s, r) in sent.iter().zip(&arrivals) {
        for (sent, got) in s.iter().zip(r) {
            latencies.push(got.saturating_sub(*sent));
            last = last.max(*got);
        }
    }
    Ok(figures(partials, latencies, last))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let encoding = match a.encoding.as_str() {
        "json" => Encoding::Json,
        "binary" => Encoding::Binary,
        e => bail!("--encoding {e}: expected json or binary"),
    };
    let made = Instant::now();
    let loads: Vec<Arc<AgentLoad>> = workload(&a, encoding).into_iter().map(Arc::new).collect();
    let batches: usize = loads.iter().map(|l| l.payloads.len()).sum();
    let bytes: usize = loads.iter().flat_map(|l| &l.payloads).map(Vec::len).sum();
    let partials = batches * a.series;
    let readings = partials as u64 * a.readings as u64;
    println!(
        "workload: {} agents × {} batches (one per minute) × {} partials of {} readings = {partials} partials, {readings} readings; {encoding} payloads of {:.0} B mean ({:.2} B/reading); encoded beforehand in {:.1} s (not timed)",
        a.agents, a.minutes, a.series, a.readings, bytes as f64 / batches as f64, bytes as f64 / readings as f64, made.elapsed().as_secs_f64()
    );
    println!(
        "path: {} MQTT clients → mosquitto (QoS 1) → collector ingest (decode, checks, dedupe, SQLite synchronous=FULL, group ≤ {} batches) → confirmation consumed by the publishing client; ≤ {} batches unconfirmed per agent; fan-in 1 (each series from one agent); latency = PUBLISH handed to the client → its confirmation received",
        a.agents, a.group, a.in_flight
    );
    println!("baseline: the same payloads → the same broker → one plain subscriber (counts only); ≤ {} PUBLISHes not PUBACKed per client; latency = PUBLISH → arrival", a.in_flight);
    let (mut e2e, mut base) = (Vec::new(), Vec::new());
    for run in 1..=a.runs {
        let b = bare(&a, &loads, partials).await?;
        println!(
            "run {run} baseline:   {:>10.0} partials/s  p50 {:>8.1} ms  p99 {:>8.1} ms",
            b.partials_per_s,
            ms(b.p50),
            ms(b.p99)
        );
        let e = end_to_end(&a, &loads, partials, readings).await?;
        println!(
            "run {run} end-to-end: {:>10.0} partials/s  p50 {:>8.1} ms  p99 {:>8.1} ms  {}",
            e.partials_per_s,
            ms(e.p50),
            ms(e.p99),
            e.cost.as_ref().map(Cost::to_string).unwrap_or_default()
        );
        base.push(b);
        e2e.push(e);
    }
    for (name, runs) in [("baseline", &base), ("end-to-end", &e2e)] {
        println!(
            "median of {} {name}: {:.0} partials/s ({:.0} readings/s), confirmation p50 {:.1} ms, p99 {:.1} ms",
            runs.len(),
            measure::median(runs.iter().map(|r| r.partials_per_s)),
            measure::median(runs.iter().map(|r| r.partials_per_s * a.readings as f64)),
            measure::median(runs.iter().map(|r| ms(r.p50))),
            measure::median(runs.iter().map(|r| ms(r.p99))),
        );
    }
    let costs: Vec<&Cost> = e2e.iter().filter_map(|r| r.cost.as_ref()).collect();
    println!(
        "median of {} end-to-end: store writer busy {:.0} % of the run, {:.1} batches per group; bench process {:.2} cores, mosquitto {:.2}, machine {:.0} % busy",
        costs.len(),
        measure::median(costs.iter().map(|c| c.store_busy * 100.0)),
        measure::median(costs.iter().map(|c| c.batches_per_group)),
        measure::median(costs.iter().map(|c| c.process_cores)),
        measure::median(costs.iter().map(|c| c.broker_cores)),
        measure::median(costs.iter().map(|c| c.machine_busy * 100.0)),
    );
    Ok(())
}
