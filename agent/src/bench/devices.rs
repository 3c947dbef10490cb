//! The `frames` and `summaries` paths: the firmware's virtual devices
//! (3 channels each) in-process, in raw-reading or aggregating mode.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::rss::RssLog;
use super::{base_config, BenchArgs};
use crate::agent::Agent;
use crate::config::Config;

/// Runs the `frames` (raw readings) or `summaries` path in `dir`.
pub(super) async fn run(
    args: &BenchArgs,
    dir: &std::path::Path,
    summaries: bool,
) -> anyhow::Result<()> {
    let n = args.series.div_ceil(3).max(1);
    let mode = if summaries { "summaries" } else { "readings" };
    let rpw = 1000;
    // Device time runs far faster than real time here; a resend timeout of
    // 30 device-seconds keeps the firmware from resending frames that are
    // merely waiting for the next commit.
    let resend = 30_000;
    let extra = format!(
        "[simulated]\ndevices = {n}\nprefix = \"bench-\"\nmode = \"{mode}\"\ndevice_window_ms = 1000\nreadings_per_window = {rpw}\nwindows = 0\nstart_ms = 0\nframe_rate = 0\nmax_unacked = 12\ndropout_per_mille = 0\nresend_ms = {resend}\n"
    );
    let config = Config::from_toml(&base_config("bench-sim", dir, args, &extra))
        .context("bench config (devices)")?;
    println!(
        "{}: {n} firmware virtual devices × 3 channels ({} series), {}, durable group commits every {} ms (synchronous=FULL)",
        if summaries { "summaries" } else { "frames" },
        n * 3,
        if summaries {
            "1 ms sampling folded into 1 s firmware summaries (3 frames per device window)"
        } else {
            "raw-reading mode: one Reading frame per reading through the firmware Link, acked after commit"
        },
        args.commit_ms
    );
    let agent = Agent::start(config).await?;
    let m = agent.metrics().clone();
    let mut rss = RssLog::new(args.rss_every);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss.poll();
    }
    let accepted = m.readings_accepted.get();
    let frames = m.frames_received.get();
    let elapsed = start.elapsed().as_secs_f64();
    agent.sync().await;
    println!("  readings committed {accepted}");
    println!(
        "  frames received    {frames} ({} duplicates: firmware resends)",
        m.frames_duplicate.get()
    );
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s ({:.0} frames/s)",
        accepted as f64 / elapsed,
        frames as f64 / elapsed
    );
    println!("  commits            {}", m.commits());
    println!("  partials emitted   {}", m.partials_emitted.get());
    rss.report();
    agent.shutdown().await?;
    Ok(())
}
