//! `tributary-demo`: the self-contained main job. It starts the
//! embedded MQTT broker, the collector on SQLite and several agents, each
//! with simulated devices running the firmware's aggregation and link code;
//! shows progress; judges every merged (series, window), and the API's
//! results grouped by the agents' `site` tag, by the oracle's exact
//! statistics of the devices' raw readings (`tributary-oracle`); prints a
//! summary (text or `--json`); then serves the dashboard until Ctrl-C or
//! `--duration`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::broker::{Embedded, EmbeddedOptions};
use anyhow::{bail, Context};
use serde::Serialize;
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::{Agent, AgentHandle};
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Encoding;
use tributary_core::{SeriesKey, Summary, Width};
use tributary_oracle::Readings;

use crate::sites;
use crate::truth;

/// The agents' window (ms).
const WIDTH_MS: i64 = 60_000;
/// The devices' window (ms).
const DEVICE_WINDOW_MS: i64 = 10_000;
/// The sites agents are in (agent `i` is in `SITES[i / 2 % len]`), the
/// `site` tag of every series an agent forwards: the dashboard's group
/// view then shows a few sites of several gateways each.
const SITES: [&str; 4] = ["berlin", "lisbon", "oslo", "rome"];

/// The `site` tag of agent `index`.
fn site(index: usize) -> &'static str {
    SITES[index / 2 % SITES.len()]
}

/// What the demo runs.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tributary-demo",
    version,
    about = "The self-contained Tributary demo: embedded broker, collector on SQLite and agents with simulated devices; every window judged by an independent oracle from the devices' raw readings."
)]
pub struct DemoArgs {
    /// Agents (gateways), each an in-process agent with its own SQLite state.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Simulated devices per agent.
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Device windows (10 s of event time each) every device produces.
    #[arg(long, default_value_t = 60)]
    pub windows: u64,
    /// After the summary, keep serving the dashboard until this many seconds
    /// after start, then stop by itself (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Print the summary as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// HTTP listen address of the collector (API and dashboard).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where state goes (default: a temporary directory, removed at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The agents' batch encoding (`[uplink] encoding`): `binary` (the
    /// default here; the agent's own default is `json`) or `json`.
    #[arg(long, default_value = "binary", value_parser = parse_encoding)]
    pub encoding: Encoding,
}

fn parse_encoding(s: &str) -> Result<Encoding, String> {
    match s {
        "json" => Ok(Encoding::Json),
        "binary" => Ok(Encoding::Binary),
        _ => Err(format!("{s:?}: expected json or binary")),
    }
}

/// The summary the demo prints.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// Agents run.
    pub agents: usize,
    /// Simulated devices in all.
    pub devices: usize,
    /// Readings the devices produced (their raw readings).
    pub readings_produced: u64,
    /// Readings counted in the merged results at the collector.
    pub readings_merged: u64,
    /// Produced but not in the results (must be 0).
    pub readings_lost: i64,
    /// Batches the collector applied.
    pub batches_applied: u64,
    /// Redelivered or resent batches the collector recognised and dropped.
    pub duplicates_dropped: u64,
    /// Partials merged.
    pub partials_merged: u64,
    /// (series, window) results the oracle expects, checked.
    pub windows_checked: usize,
    /// Results that disagree with the oracle — count, sums, min, max, first,
    /// last, mean, variance, stddev exactly; quantiles in the true value's
    /// bucket — or are missing or unexpected (must be 0).
    pub windows_mismatched: usize,
    /// (metric, site, window) points of the API grouped by `site` checked
    /// against the oracle's statistics of the site's readings.
    pub site_points_checked: usize,
    /// Of those, points whose statistics (count, sum, min, max, mean,
    /// stddev, first, last exactly; p1, p50, p99 in the true bucket)
    /// disagree, are missing or unexpected (must be 0).
    pub site_points_mismatched: usize,
    /// The agents' batch encoding.
    pub encoding: Encoding,
    /// Bytes of the batches' MQTT PUBLISH packets as the agents sent them
    /// (resends included) per reading merged.
    pub uplink_bytes_per_reading: f64,
    /// Batch payload bytes received by the collector per reading merged.
    pub uplink_payload_bytes_per_reading: f64,
    /// Bytes of the MQTT PUBLISH packets per reading had every device sent
    /// each raw reading as one JSON message (produced and measured; see
    /// `wire.rs`).
    pub raw_json_bytes_per_reading: f64,
    /// Seconds from start until every reading was merged.
    pub seconds_to_complete: f64,
    /// The dashboard.
    pub dashboard: String,
}

fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port for the broker")?;
    l.local_addr().context("reading the free port")
}

fn agent_config(
    dir: &Path,
    index: usize,
    port: u16,
    args: &DemoArgs,
    start_ms: i64,
) -> anyhow::Result<AgentConfig> {
    let text = format!(
        "agent_id = \"gw-{index}\"\ndata_dir = {dir:?}\n\
         [window]\nwidth_ms = {WIDTH_MS}\nallowed_lateness_ms = 2000\nidle_close_ms = 2000\n\
         [store]\ncommit_interval_ms = 50\n\
         [uplink]\nport = {port}\nencoding = \"{encoding}\"\nconfirm_timeout_ms = 5000\nreconnect_min_ms = 100\nreconnect_max_ms = 2000\n\
         [http]\nlisten = \"\"\n\
         [tags]\nsite = \"{site}\"\ngateway = \"gw-{index}\"\n\
         [simulated]\ndevices = {}\nprefix = \"gw{index}-dev\"\nmode = \"summaries\"\nchannels = 3\n\
         device_window_ms = {DEVICE_WINDOW_MS}\nreadings_per_window = 10\nwindows = {}\nstart_ms = {start_ms}\nframe_rate = 20\n",
        args.devices,
        args.windows,
        dir = dir.join(format!("agent-{index}")).display().to_string(),
        site = site(index),
        encoding = args.encoding,
    );
    AgentConfig::from_toml(&text).with_context(|| format!("agent {index} config"))
}

/// Every stored window at the agents' width, per (series, start).
async fn stored(db: &Path) -> anyhow::Result<BTreeMap<(SeriesKey, i64), Summary>> {
    let store = SqliteStore::open(db, &[]).context("opening the store to read results")?;
    let width = Width::new(WIDTH_MS).context("width")?;
    Ok(store::all_windows(&store, width)
        .await
        .context("reading the stored windows")?
        .into_iter()
        .map(|(k, w)| (k, w.summary))
        .collect())
}

fn progress(line: &str) {
    let mut err = std::io::stderr();
    let _ = write!(err, "\r{line}\x1b[K");
    let _ = err.flush();
}

/// The running system: broker, collector and agents.
struct System {
    /// Runs until the demo returns.
    _broker: Embedded,
    collector: service::Running,
    agents: Vec<AgentHandle>,
    configs: Vec<AgentConfig>,
    db: PathBuf,
    dashboard: String,
}

/// Starts the embedded broker, the collector on SQLite in `dir` and the
/// agents with their simulated devices, whose event time ends about now
/// (so the dashboard's "last 15 minutes" shows it).
async fn start(args: &DemoArgs, dir: &Path) -> anyhow::Result<System> {
    let broker = Embedded::start(free_local_addr()?, None, EmbeddedOptions::default())
        .context("starting the embedded MQTT broker")?;
    let mut cfg = Config::from_toml("").context("default collector config")?;
    cfg.data_dir = dir.join("collector");
    cfg.mqtt.port = broker.addr().port();
    cfg.http.listen = args.listen.clone();
    cfg.finality.lateness_ms = 2_000;
    cfg.finality.idle_timeout_ms = 10_000;
    std::fs::create_dir_all(&cfg.data_dir).context("creating the collector's data dir")?;
    let db = cfg.db_path();
    let store = SqliteStore::open(&db, &cfg.rollups_ms).context("opening the collector store")?;
    let collector = service::start(&cfg, store)
        .await
        .context("starting the collector")?;
    let dashboard = format!("http://{}/", collector.http_addr());
    let span = i64::try_from(args.windows)
        .context("--windows")?
        .saturating_mul(DEVICE_WINDOW_MS);
    let now = tributary_runtime::now_ms();
    let start_ms = (now - span).div_euclid(WIDTH_MS) * WIDTH_MS;
    let mut agents = Vec::new();
    let mut configs = Vec::new();
    for a in 0..args.agents {
        let acfg = agent_config(dir, a, broker.addr().port(), args, start_ms)?;
        configs.push(acfg.clone());
        agents.push(
            Agent::start(acfg)
                .await
                .with_context(|| format!("starting agent {a}"))?,
        );
    }
    eprintln!(
        "tributary demo: {} agents × {} simulated devices (firmware aggregator and link) → embedded MQTT {} → collector (SQLite {})",
        args.agents,
        args.devices,
        broker.addr(),
        db.display()
    );
    eprintln!("dashboard: {dashboard}");
    Ok(System {
        _broker: broker,
        collector,
        agents,
        configs,
        db,
        dashboard,
    })
}

/// Waits until the collector has merged `produced` readings; `None` if the
/// pipeline stalls for a minute first. Shows progress on a terminal.
async fn wait_for_completion(
    sys: &System,
    produced: u64,
    started: Instant,
    show: bool,
) -> Option<Duration> {
    let counters = sys.collector.counters().clone();
    let stall = Duration::from_secs(60);
    let mut last_change = Instant::now();
    let mut last_merged = 0;
    let completed = loop {
        let merged = counters.readings.get();
        let accepted: u64 = sys
            .agents
            .iter()
            .map(|a| a.counters().readings_accepted)
            .sum();
        if show {
            progress(&format!(
                "[{:5.1}s] devices → agents {accepted}/{produced} readings · merged at collector {merged} · batches {} (+{} duplicates)",
                started.elapsed().as_secs_f64(),
                counters.batches_new.get(),
                counters.batches_duplicate.get(),
            ));
        }
        if merged >= produced {
            break Some(started.elapsed());
        }
        if merged != last_merged {
            last_merged = merged;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!();
    completed
}

/// Judges the stored windows and the API's site groups by the oracle and
/// fills in the summary.
async fn judge(
    sys: &System,
    args: &DemoArgs,
    want: &Readings,
    raw_json: u64,
    completed: Option<Duration>,
) -> anyhow::Result<DemoSummary> {
    let produced = want.count();
    let windows = want.windows(WIDTH_MS)?;
    let got = stored(&sys.db).await?;
    let verdict = truth::judge_windows(&got, &windows);
    for p in verdict.problems.iter().take(5) {
        tracing::warn!(problem = %p, "a stored window disagrees with the oracle");
    }
    let merged: u64 = got.values().map(Summary::count).sum();
    let sites = sites::check(sys.collector.http_addr(), want, &got, WIDTH_MS).await?;
    for p in sites.problems.iter().take(5) {
        tracing::warn!(problem = %p, "a site point disagrees with the oracle");
    }
    let uplink: u64 = sys
        .agents
        .iter()
        .map(|a| a.counters().uplink_publish_bytes)
        .sum();
    let counters = sys.collector.counters();
    Ok(DemoSummary {
        agents: args.agents,
        devices: args.agents * args.devices,
        readings_produced: produced,
        readings_merged: merged,
        readings_lost: i64::try_from(produced).unwrap_or(i64::MAX)
            - i64::try_from(merged).unwrap_or(i64::MAX),
        batches_applied: counters.batches_new.get(),
        duplicates_dropped: counters.batches_duplicate.get(),
        partials_merged: counters.partials.get(),
        windows_checked: verdict.checked,
        windows_mismatched: verdict.mismatched,
        site_points_checked: sites.checked,
        site_points_mismatched: sites.mismatched,
        encoding: args.encoding,
        uplink_bytes_per_reading: uplink as f64 / merged.max(1) as f64,
        uplink_payload_bytes_per_reading: counters.bytes.get() as f64 / merged.max(1) as f64,
        raw_json_bytes_per_reading: raw_json as f64 / produced.max(1) as f64,
        seconds_to_complete: completed.map_or(f64::NAN, |d| d.as_secs_f64()),
        dashboard: sys.dashboard.clone(),
    })
}

/// Serves the dashboard until `deadline` (or forever) or `shutdown`.
async fn serve(
    deadline: Option<Instant>,
    dashboard: &str,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let wait = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    if deadline.is_none() {
        eprintln!("serving the dashboard at {dashboard} — Ctrl-C to stop");
    }
    tokio::select! {
        _ = shutdown => {}
        _ = wait => {}
    }
}

/// Runs the demo.
pub async fn run(
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if args.agents == 0 || args.devices == 0 || args.windows == 0 {
        bail!("--agents, --devices and --windows must be at least 1");
    }
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let temp;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary data directory")?;
            temp.path().to_owned()
        }
    };
    let sys = start(&args, &dir).await?;
    // The devices' raw readings (they are deterministic), replayed once for
    // the oracle and the raw-JSON bytes.
    let devices =
        truth::device_readings(&sys.configs).context("replaying the devices for the oracle")?;
    let (_, raw_json) = crate::wire::raw_json(&devices);
    let want = tributary_sim::judge::oracle(&devices).context("the oracle")?;
    let show = !args.json || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let completed = wait_for_completion(&sys, want.count(), started, show).await;
    let summary = judge(&sys, &args, &want, raw_json, completed).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_text(&summary);
    }
    if completed.is_some() {
        serve(deadline, &summary.dashboard, shutdown).await;
    }
    for a in sys.agents {
        a.shutdown().await.context("stopping an agent")?;
    }
    sys.collector
        .stop()
        .await
        .context("stopping the collector")?;
    if summary.readings_lost != 0
        || summary.windows_mismatched != 0
        || summary.site_points_mismatched != 0
    {
        bail!(
            "the demo lost {} readings, {} windows and {} site points disagree with the oracle",
            summary.readings_lost,
            summary.windows_mismatched,
            summary.site_points_mismatched
        );
    }
    Ok(())
}

fn print_text(s: &DemoSummary) {
    println!("Tributary demo summary");
    println!(
        "  agents × devices          {} × {}",
        s.agents,
        s.devices / s.agents.max(1)
    );
    println!("  readings produced         {}", s.readings_produced);
    println!("  readings in results       {}", s.readings_merged);
    println!("  readings lost             {}", s.readings_lost);
    println!(
        "  windows exact             {}/{} agree with the oracle's statistics of the raw readings",
        s.windows_checked - s.windows_mismatched.min(s.windows_checked),
        s.windows_checked
    );
    println!(
        "  site groups exact         {}/{} (metric, site, window) points of the API grouped by site agree with the oracle",
        s.site_points_checked - s.site_points_mismatched.min(s.site_points_checked),
        s.site_points_checked
    );
    println!(
        "  batches applied           {} ({} partials); duplicates dropped {}",
        s.batches_applied, s.partials_merged, s.duplicates_dropped
    );
    println!(
        "  uplink bytes per reading  {:.2} ({} batches, MQTT PUBLISH packets as sent; payloads {:.2}); raw readings as JSON messages: {:.1}, {:.0}× more",
        s.uplink_bytes_per_reading,
        s.encoding,
        s.uplink_payload_bytes_per_reading,
        s.raw_json_bytes_per_reading,
        s.raw_json_bytes_per_reading / s.uplink_bytes_per_reading.max(f64::MIN_POSITIVE)
    );
    println!("  time to complete          {:.1} s", s.seconds_to_complete);
    println!("  dashboard                 {}", s.dashboard);
}
