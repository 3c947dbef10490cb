//! Close-to-queryable latency: how long after an agent closes a window its
//! result can be queried at the collector, on loopback.
//!
//! ```text
//! cargo run --release -p tributary-demo --example latency_bench -- \
//!     [--devices 100] [--seconds 30] [--agent-commit-ms 50]
//! ```
//!
//! One process runs the whole path with its real parts: the embedded MQTT
//! broker, a `tributary-agent` (durable SQLite state and outbox, group
//! commits, uplink waiting for the collector's confirmation) reading JSON
//! readings from that broker, and the collector on SQLite. The bench
//! publishes one reading per device every 100 ms with event time = now;
//! agent windows are 1 s with no allowed lateness, so the reading stamped
//! with a whole second closes the previous window of its device. The
//! latency of a window is from the moment that reading is published (an
//! upper bound of the agent's close: it includes the local broker hop)
//! until the window's row is committed in the collector's store, which is
//! what the HTTP API reads; the store is polled every millisecond through
//! its change feed. A second figure starts at the agent's commit that
//! closed the window (its `closed_before` mark in the agent's database,
//! also polled every millisecond), leaving out the wait for the agent's
//! group commit. Prints p50, p90, p99 and max over all windows after a
//! warm-up second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::Width;
use tributary_demo::broker::{Embedded, EmbeddedOptions};

const WINDOW_MS: i64 = 1_000;
const TICK_MS: i64 = 100;

#[derive(Debug, Parser)]
struct Args {
    /// Devices (series), each publishing a reading every 100 ms.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// How long to publish.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The agent's group commit interval (`store.commit_interval_ms`).
    #[arg(long, default_value_t = 50)]
    agent_commit_ms: u64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn agent_config(dir: &Path, port: u16, commit_ms: u64) -> anyhow::Result<AgentConfig> {
    let text = format!(
        "agent_id = \"gw-latency\"\ndata_dir = {dir:?}\n\
         [window]\nwidth_ms = {WINDOW_MS}\nallowed_lateness_ms = 0\nidle_close_ms = 60000\n\
         [store]\ncommit_interval_ms = {commit_ms}\n\
         [uplink]\nport = {port}\nconfirm_timeout_ms = 5000\n\
         [http]\nlisten = \"\"\n\
         [local_mqtt]\nenabled = true\nport = {port}\n",
        dir = dir.display().to_string(),
    );
    AgentConfig::from_toml(&text).context("agent config")
}

/// Percentile `p` (0..=100) of sorted `v`.
fn pct(v: &[i64], p: f64) -> f64 {
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// (device, window start) → a time in µs since the epoch.
type Times = Arc<Mutex<HashMap<(String, i64), i64>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tributary_demo::broker::init_logging("warn");
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let broker = Embedded::start(
        format!("127.0.0.1:{port}").parse()?,
        None,
        EmbeddedOptions::default(),
    )
    .context("starting the embedded broker")?;
    let mut cfg = Config::from_toml("")?;
    cfg.data_dir = dir.path().join("collector");
    cfg.mqtt.port = broker.addr().port();
    cfg.http.listen = "127.0.0.1:0".into();
    std::fs::create_dir_all(&cfg.data_dir)?;
    let db = cfg.db_path();
    let collector = service::start(&cfg, SqliteStore::open(&db, &cfg.rollups_ms)?).await?;
    let agent = Agent::start(agent_config(
        &dir.path().join("agent"),
        port,
        args.agent_commit_ms,
    )?)
    .await?;

    // When each window first became queryable, and when the agent
    // committed its close.
    let (seen, committed): (Times, Times) = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pollers = [
        poll_store(db, seen.clone(), stop.clone()),
        poll_agent(
            dir.path().join("agent").join("agent.db"),
            committed.clone(),
            stop.clone(),
        ),
    ];
    let closed = publish(&args, port).await?;
    // Let the last windows through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.join().map_err(|_| anyhow::anyhow!("a poller panicked"))?;
    }
    let seen = seen.lock().unwrap().clone();
    let committed = committed.lock().unwrap().clone();
    let c = collector.counters();
    anyhow::ensure!(
        closed.keys().any(|k| seen.contains_key(k)),
        "no window became queryable: agent {:?}; collector batches {}, readings {}; {} windows closed, {} seen",
        agent.counters(),
        c.batches_new.get(),
        c.readings.get(),
        closed.len(),
        seen.len()
    );
    report(&closed, &seen, &committed);
    agent.shutdown().await?;
    collector.stop().await?;
    Ok(())
}

/// Polls the collector's store every millisecond through its change feed,
/// noting when each window first appears in `seen`, until `stop`.
fn poll_store(db: PathBuf, seen: Times, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let store = SqliteStore::open(&db, &[]).unwrap();
        // A runtime of its own: this poller is a plain thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let width = Width::new(WINDOW_MS).unwrap();
        let mut cursor = 0;
        while !stop.load(Ordering::Relaxed) {
            let changed = rt.block_on(store.changed_since(width, cursor, 100_000));
            for c in changed.unwrap() {
                cursor = cursor.max(c.change);
                let key = (c.series.device().to_string(), c.stored.window.start());
                seen.lock().unwrap().entry(key).or_insert_with(now_us);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Polls the agent's database every millisecond, noting in `committed`
/// when each window's close was committed (its series' `closed_before`
/// moved past it), until `stop`.
fn poll_agent(db: PathBuf, committed: Times, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut last: HashMap<String, i64> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let mut stmt = conn
                .prepare_cached("SELECT key, closed_before FROM series")
                .unwrap();
            let rows: Vec<(String, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let t = now_us();
            for (key, closed_before) in rows {
                let key: tributary_core::SeriesKey = serde_json::from_str(&key).unwrap();
                let device = key.device().to_string();
                let prev = last.insert(device.clone(), closed_before);
                if let Some(prev) = prev.filter(|&p| p > i64::MIN && p < closed_before) {
                    let mut c = committed.lock().unwrap();
                    let mut w = prev;
                    while w < closed_before {
                        c.entry((device.clone(), w)).or_insert(t);
                        w += WINDOW_MS;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Publishes one reading per device every [`TICK_MS`] for the bench's
/// duration; answers when each window was closed (the closing reading
/// published), in µs since the epoch.
async fn publish(args: &Args, port: u16) -> anyhow::Result<HashMap<(String, i64), i64>> {
    let mut o = MqttOptions::new("latency-bench", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 100_000);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let devices: Vec<String> = (0..args.devices).map(|d| format!("dev-{d:04}")).collect();
    let end = now_us() / 1000 + args.seconds as i64 * 1000;
    let first_close = (now_us() / 1000 / WINDOW_MS + 2) * WINDOW_MS;
    eprintln!(
        "latency bench: {} devices × 10 readings/s through agent (1 s windows, commit every {} ms) → embedded broker → collector (SQLite) for {} s",
        args.devices, args.agent_commit_ms, args.seconds
    );
    let mut closed = HashMap::new();
    loop {
        let now = now_us() / 1000;
        let tick = (now / TICK_MS + 1) * TICK_MS;
        if tick > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis((tick - now) as u64)).await;
        for d in &devices {
            if tick % WINDOW_MS == 0 && tick > first_close {
                closed.insert((d.clone(), tick - WINDOW_MS), now_us());
            }
            let payload = format!(r#"{{"v":1,"metric":"temperature","time":{tick},"value":21.5}}"#);
            client
                .publish(
                    format!("tributary/v1/devices/{d}/readings"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?;
        }
    }
    Ok(closed)
}

/// Prints the percentiles of both latencies.
fn report(
    closed: &HashMap<(String, i64), i64>,
    seen: &HashMap<(String, i64), i64>,
    committed: &HashMap<(String, i64), i64>,
) {
    let mut lat: Vec<i64> = closed
        .iter()
        .filter_map(|(k, c)| seen.get(k).map(|s| s - c))
        .collect();
    lat.sort_unstable();
    let missing = closed.len() - lat.len();
    println!(
        "closing reading published → queryable over {} windows ({} not queryable at the end): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        missing,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 100.0)
    );
    let mut from_commit: Vec<i64> = closed
        .keys()
        .filter_map(|k| Some(seen.get(k)? - committed.get(k)?))
        .collect();
    from_commit.sort_unstable();
    if !from_commit.is_empty() {
        println!(
            "agent's closing commit → queryable over {} windows: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            from_commit.len(),
            pct(&from_commit, 50.0),
            pct(&from_commit, 90.0),
            pct(&from_commit, 99.0),
            pct(&from_commit, 100.0)
        );
    }
}
