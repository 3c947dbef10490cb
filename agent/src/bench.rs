//! The `bench` subcommand: readings per second sustained through windowing
//! with durable group commits, and peak RSS.
//!
//! Simulated devices hand raw readings to the engine in-process, batched per
//! series (the hot path: one series lookup per run of readings, one SQLite
//! transaction per group commit, `synchronous = FULL`). Event time advances
//! 1 ms per reading per series, so windows close and partials flow into the
//! outbox as in production. The uplink is off: the figure is the agent's
//! ingest capacity.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;
use tributary_core::{Quantum, SeriesKey};

use crate::config::Config;
use crate::engine::Cmd;
use crate::Agent;

/// Arguments of `tributary-agent bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Series (simulated devices × channels).
    #[arg(long, default_value_t = 1000)]
    pub series: usize,
    /// How long to run (s).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Readings per series per engine message.
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,
    /// Group commit interval (ms).
    #[arg(long, default_value_t = 100)]
    pub commit_ms: u64,
    /// Also measure JSON readings through a real MQTT broker listening on
    /// 127.0.0.1 at this port (e.g. `mosquitto -p 18830`).
    #[arg(long)]
    pub mqtt_port: Option<u16>,
    /// Readings per JSON message in the MQTT phase.
    #[arg(long, default_value_t = 500)]
    pub per_message: usize,
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the benchmark and prints the figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let text = format!(
        "agent_id = \"bench\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n[store]\ncommit_interval_ms = {}\n[window]\nwidth_ms = 60000\nallowed_lateness_ms = 1000\n",
        dir.display().to_string(),
        args.commit_ms
    );
    let config = Config::from_toml(&text).context("bench config")?;
    let agent = Agent::start(config).await?;
    let engine = agent.engine();
    let mut ids = Vec::new();
    for i in 0..args.series {
        let key = SeriesKey::new("bench_value", format!("dev-{}", i / 4), {
            let mut t = BTreeMap::new();
            t.insert("ch".to_string(), (i % 4).to_string());
            t
        })?;
        let (tx, rx) = oneshot::channel();
        engine
            .send(Cmd::Register {
                key,
                quantum: Quantum::new(-2).unwrap_or_default(),
                reply: tx,
            })
            .await
            .ok()
            .context("engine gone")?;
        ids.push(
            rx.await?
                .map_err(|r| anyhow::anyhow!("series refused: {r:?}"))?,
        );
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let base = 1_700_000_000_000i64;
    let mut t = 0i64;
    let mut sent = 0u64;
    let mut rng = fastrand::Rng::with_seed(7);
    while Instant::now() < deadline {
        for &id in &ids {
            let points: Vec<(i64, i64)> = (0..args.chunk as i64)
                .map(|k| (base + t + k, 2000 + rng.i64(-500..500)))
                .collect();
            sent += points.len() as u64;
            engine
                .send(Cmd::Bulk {
                    series: id,
                    points,
                    done: None,
                })
                .await
                .ok()
                .context("engine gone")?;
        }
        t += args.chunk as i64;
    }
    agent.sync().await;
    let elapsed = start.elapsed().as_secs_f64();
    let m = agent.metrics().clone();
    let accepted = m.readings_accepted.load(Relaxed);
    println!(
        "simulated raw readings, {} series, durable group commits every {} ms (synchronous=FULL)",
        args.series, args.commit_ms
    );
    println!("  readings sent      {sent}");
    println!("  readings committed {accepted}");
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s",
        accepted as f64 / elapsed
    );
    println!("  commits            {}", m.commits.load(Relaxed));
    println!("  partials emitted   {}", m.partials_emitted.load(Relaxed));
    if let Some(kib) = peak_rss_kib() {
        println!("  peak RSS           {:.1} MiB", kib as f64 / 1024.0);
    }
    drop(engine);
    agent.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(port) = args.mqtt_port {
        mqtt_json(&args, port).await?;
    }
    Ok(())
}

/// JSON batches published to a real broker, read by the agent's local MQTT
/// source with PUBACKs after commit.
async fn mqtt_json(args: &BenchArgs, port: u16) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let dir = tempfile_dir()?.join("mqtt");
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "agent_id = \"bench-mqtt\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n[store]\ncommit_interval_ms = {}\n[window]\nwidth_ms = 60000\nallowed_lateness_ms = 1000\n[local_mqtt]\nenabled = true\nport = {port}\n[limits]\nmax_payload_bytes = 1048576\n",
        dir.display().to_string(),
        args.commit_ms
    );
    let config = Config::from_toml(&text).context("bench config (mqtt)")?;
    let agent = Agent::start(config).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // let it connect and subscribe
    let mut o = MqttOptions::new(
        format!("bench-publisher-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_max_packet_size(4 << 20, 4 << 20);
    o.set_inflight(100);
    let (client, mut events) = AsyncClient::new(o, 1000);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let devices = (args.series / 4).max(1);
    let base = 1_700_000_000_000i64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let (mut sent, mut seq, mut t) = (0u64, 0u64, 0i64);
    let mut rng = fastrand::Rng::with_seed(11);
    let m = agent.metrics().clone();
    // Closed loop: at most `window` readings outstanding, so the broker's
    // per-client queue never overflows and the figure is the agent's rate.
    let window = 200 * args.per_message as u64;
    'publish: while Instant::now() < deadline {
        for d in 0..devices {
            while sent.saturating_sub(m.readings_accepted.load(Relaxed)) > window {
                if Instant::now() >= deadline {
                    break 'publish;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut body = String::with_capacity(args.per_message * 64);
            body.push_str(&format!(
                "{{\"v\":1,\"boot\":1,\"seq\":{seq},\"readings\":["
            ));
            for k in 0..args.per_message {
                if k > 0 {
                    body.push(',');
                }
                let ch = k % 4;
                let time = base + t + (k / 4) as i64;
                body.push_str(&format!(
                    "{{\"metric\":\"bench_{ch}\",\"time\":{time},\"value\":{:.2}}}",
                    20.0 + rng.f64() * 5.0
                ));
            }
            body.push_str("]}");
            client
                .publish(
                    tributary_core::topic::readings(&format!("dev-{d}")),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .context("publish")?;
            sent += args.per_message as u64;
        }
        seq += 1;
        t += (args.per_message / 4) as i64;
    }
    // Wait until the agent has committed everything, or made no progress for 3 s.
    let (mut last, mut last_progress) = (0u64, Instant::now());
    loop {
        let now_accepted = m.readings_accepted.load(Relaxed);
        if now_accepted > last {
            (last, last_progress) = (now_accepted, Instant::now());
        }
        if now_accepted >= sent || last_progress.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = last_progress.duration_since(start).as_secs_f64();
    let accepted = m.readings_accepted.load(Relaxed);
    println!(
        "MQTT JSON readings through the broker at 127.0.0.1:{port}, {} readings per message, {devices} devices × 4 metrics",
        args.per_message
    );
    println!("  readings published {sent}");
    println!("  readings committed {accepted}");
    println!("  duplicates         {}", m.frames_duplicate.load(Relaxed));
    println!("  rejected           {}", m.counters().rejected);
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s",
        accepted as f64 / elapsed
    );
    if let Some(kib) = peak_rss_kib() {
        println!("  peak RSS           {:.1} MiB", kib as f64 / 1024.0);
    }
    let _ = client.disconnect().await;
    poller.abort();
    agent.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
