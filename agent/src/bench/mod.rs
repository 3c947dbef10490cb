//! The `bench` subcommand: readings per second sustained through windowing
//! with durable group commits (`synchronous = FULL`), peak RSS, and RSS
//! sampled while it runs so flatness over a long run is visible.
//!
//! Paths (`--paths`, comma-separated; each runs `--seconds`):
//! - `bulk` — raw readings handed to the engine in-process
//!   ([`Input::Readings`](crate::engine::Input::Readings)), `--chunk`
//!   readings of one series per message, series taking turns (one series
//!   lookup per message, one SQLite transaction per group commit); by
//!   default once with `--chunk 1` (the interleaved per-reading path) and
//!   once with `--chunk 4096` (runs of readings per series). Event time advances 1 ms per reading per series, so
//!   windows close and partials flow into the outbox as in production.
//! - `frames` — the firmware's virtual devices in raw-reading mode: every
//!   reading is a Reading frame through the real firmware Link, decoded by
//!   the agent and acked after the commit.
//! - `summaries` — the same devices aggregating (1 ms sampling, 1 s device
//!   windows): the readings arrive folded in firmware summaries.
//! - `mqtt` — JSON batches published to a real mosquitto (started by the
//!   bench with the documented settings of `config/mosquitto.conf`, or mosquitto's
//!   defaults with `--broker default`, or an already running one with
//!   `--mqtt-port`), read by the agent's local MQTT source, PUBACKed after
//!   commit. Reports readings published vs committed and the broker's
//!   "messages are being dropped" log lines.
//!
//! The uplink is off: the figure is the agent's ingest capacity.
//!
//! # Figures (2-core CI-class machine, release build, others compiling)
//! - `bench --paths bulk --seconds 600 --rss-every 30`: 22.8 M readings/s
//!   sustained for 10 minutes (33.5 M/s in a 10 s run), RSS 78.7 MiB at
//!   30 s, 78.7 at 301 s, 78.8 at 573 s (flat); peak 78.9 MiB.
//! - `bench --paths frames --commit-ms 10`: 63–126 k readings/s. Bound by
//!   the firmware link, not by decoding: a device holds at most 16 unacked
//!   frames (one reading each) and acks come only after a commit, so the
//!   path moves ≤ 12 frames per device per commit (commits ~60/s).
//! - `bench --paths summaries`: 10–15 M readings/s through firmware
//!   aggregation; RSS grows ~5 MiB/s because `VirtualDevice` keeps its
//!   ground truth of every window (firmware sim, not the agent).
//! - `bench --paths mqtt`: 652 k readings/s closed loop (≤ 200 messages
//!   outstanding), none lost, RSS 30 MiB; open loop `--mqtt-rate 1000000`:
//!   993 k/s committed, RSS flat at 66 MiB; with mosquitto's default limits
//!   (`--broker default`) 0.55 % lost (the broker's per-client queue
//!   overflows while PUBACKs wait for the commit), none with the documented
//!   limits.
//!
//! # Layout
//! - this file — the arguments, the agent config every path shares;
//! - `inprocess` — the `bulk` path; `devices` — `frames` and
//!   `summaries`; `mqtt` — the `mqtt` path and the mosquitto it starts;
//! - `rss` — memory sampling.

mod devices;
mod inprocess;
mod mqtt;
mod rss;

use std::path::PathBuf;

/// A benchmark path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPath {
    /// Raw readings in-process, batched per series.
    Bulk,
    /// Virtual devices, one Reading frame per reading through the firmware Link.
    Frames,
    /// Virtual devices aggregating in firmware summaries.
    Summaries,
    /// JSON batches through a real mosquitto.
    Mqtt,
}

/// Broker settings for the `mqtt` path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerSettings {
    /// `config/mosquitto.conf`'s queue and in-flight limits.
    Documented,
    /// mosquitto's defaults (20 in flight, 1000 queued per client).
    Default,
}

/// Arguments of `tributary-agent bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Series (simulated devices × channels).
    #[arg(long, default_value_t = 1000)]
    pub series: usize,
    /// How long to run each path (s).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Which paths to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk,frames,summaries,mqtt"
    )]
    pub paths: Vec<BenchPath>,
    /// Readings per series per engine message (bulk path), comma-separated:
    /// the path runs once per value. 1 is the interleaved per-reading path
    /// (each message one reading, series taking turns, as readings arrive
    /// from many devices); 4096 hands each series' readings over in runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4096",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub chunk: Vec<usize>,
    /// Group commit interval (ms).
    #[arg(long, default_value_t = 100)]
    pub commit_ms: u64,
    /// Print RSS every this many seconds (0 = only at the end).
    #[arg(long, default_value_t = 10)]
    pub rss_every: u64,
    /// Use a broker already listening on 127.0.0.1 at this port instead of
    /// starting mosquitto.
    #[arg(long)]
    pub mqtt_port: Option<u16>,
    /// Settings of the mosquitto the bench starts.
    #[arg(long, value_enum, default_value = "documented")]
    pub broker: BrokerSettings,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto: PathBuf,
    /// Readings per JSON message in the MQTT path.
    #[arg(long, default_value_t = 500)]
    pub per_message: usize,
    /// Open loop: publish at this many readings/s whatever the agent does,
    /// as independent devices would (0 = closed loop: at most 200 messages
    /// outstanding, the agent's capacity).
    #[arg(long, default_value_t = 0)]
    pub mqtt_rate: u64,
}

/// Runs the benchmark and prints the figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for path in args.paths.clone() {
        let sub = dir.join(format!("{path:?}").to_lowercase());
        std::fs::create_dir_all(&sub)?;
        match path {
            BenchPath::Bulk => {
                for &chunk in &args.chunk {
                    let sub = sub.join(format!("chunk-{chunk}"));
                    std::fs::create_dir_all(&sub)?;
                    inprocess::bulk(&args, chunk, &sub).await?;
                }
            }
            BenchPath::Frames => devices::run(&args, &sub, false).await?,
            BenchPath::Summaries => devices::run(&args, &sub, true).await?,
            BenchPath::Mqtt => mqtt::run(&args, &sub).await?,
        }
        let _ = std::fs::remove_dir_all(&sub);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The agent config of every path: uplink and HTTP off, 60 s windows, the
/// commit interval of `--commit-ms`, plus `extra` TOML.
/// `[limits]` keys that accept every event time: the benches replay
/// readings from a fixed base time (2023-11-14), so their numbers do not
/// depend on the day they run.
const UNBOUNDED_TIMES: &str =
    "max_future_ms = 9223372036854775807\nmax_age_ms = 9223372036854775807\n";

fn base_config(name: &str, dir: &std::path::Path, args: &BenchArgs, extra: &str) -> String {
    format!(
        "agent_id = \"{name}\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n[store]\ncommit_interval_ms = {}\n[window]\nwidth_ms = 60000\nallowed_lateness_ms = 1000\n{extra}",
        dir.display().to_string(),
        args.commit_ms
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::BenchArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn chunks(args: &[&str]) -> Result<Vec<usize>, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map(|c| c.bench.chunk)
    }

    #[test]
    fn a_chunk_of_zero_is_refused() {
        assert_eq!(chunks(&[]).ok(), Some(vec![1, 4096]));
        assert_eq!(chunks(&["--chunk", "1,64"]).ok(), Some(vec![1, 64]));
        for bad in ["0", "1,0", "-1"] {
            assert!(chunks(&["--chunk", bad]).is_err(), "{bad}");
        }
    }
}
