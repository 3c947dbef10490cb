//! The `bulk` path: raw readings handed to the engine in-process as
//! [`Input::Readings`], one message per series per `chunk` readings, series
//! taking turns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use tributary_core::{Quantum, SeriesKey};

use super::rss::RssLog;
use super::{base_config, BenchArgs};
use crate::agent::Agent;
use crate::config::Config;
use crate::engine::Input;

/// The bench's series: `bench_value{device="dev-{i/4}",ch="{i%4}"}`.
fn keys(n: usize) -> anyhow::Result<Vec<SeriesKey>> {
    (0..n)
        .map(|i| {
            let tags = BTreeMap::from([("ch".to_string(), (i % 4).to_string())]);
            Ok(SeriesKey::new(
                "bench_value",
                format!("dev-{}", i / 4),
                tags,
            )?)
        })
        .collect()
}

/// Runs the `bulk` path in `dir` with `chunk` readings per message.
pub(super) async fn bulk(
    args: &BenchArgs,
    chunk: usize,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let config = Config::from_toml(&base_config(
        "bench",
        dir,
        args,
        &format!("[limits]\n{}", super::UNBOUNDED_TIMES),
    ))
    .context("bench config")?;
    let agent = Agent::start(config).await?;
    let engine = agent.engine();
    let keys = keys(args.series)?;
    let quantum = Quantum::new(-2).unwrap_or_default();
    println!(
        "bulk --chunk {chunk}: raw readings in-process, {chunk} reading(s) of one series per engine message, {} series taking turns ({}), durable group commits every {} ms (synchronous=FULL); excluded: parsing (no transport), the uplink (off)",
        args.series,
        if chunk == 1 { "interleaved per-reading path" } else { "chunked" },
        args.commit_ms
    );
    let mut rss = RssLog::new(args.rss_every);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let base = 1_700_000_000_000i64;
    let mut t = 0i64;
    let mut sent = 0u64;
    let mut rng = fastrand::Rng::with_seed(7);
    while Instant::now() < deadline {
        for key in &keys {
            let points: Vec<(i64, i64)> = (0..chunk as i64)
                .map(|k| (base + t + k, 2000 + rng.i64(-500..500)))
                .collect();
            sent += points.len() as u64;
            let input = Input::Readings {
                key: key.clone(),
                quantum,
                points,
                done: None,
            };
            engine.send(input).await.ok().context("engine gone")?;
        }
        t += chunk as i64;
        rss.poll();
    }
    agent.sync().await;
    let elapsed = start.elapsed().as_secs_f64();
    let m = agent.metrics().clone();
    let accepted = m.readings_accepted.get();
    println!("  readings sent      {sent}");
    println!("  readings committed {accepted}");
    println!("  rejected           {}", m.counters().rejected);
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s",
        accepted as f64 / elapsed
    );
    println!("  commits            {}", m.commits());
    println!("  partials emitted   {}", m.partials_emitted.get());
    rss.report();
    drop(engine);
    agent.shutdown().await?;
    Ok(())
}
