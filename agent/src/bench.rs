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
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
