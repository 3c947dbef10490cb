//! `tributary-demo`: the self-contained main job. It starts the
//! embedded MQTT broker, the collector on SQLite and several agents, each
//! with simulated devices running the firmware's aggregation and link code;
//! shows progress; checks every merged (series, window) against the devices'
//! ground truth, and the API's results grouped by the agents' `site` tag
//! against the merged truth of each site; prints a summary (text or
//! `--json`); then serves the dashboard until Ctrl-C or `--duration`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::broker::{Embedded, EmbeddedOptions};
use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::{Agent, AgentHandle};
use tributary_collector::config::Config;
use tributary_collector::query::stats::Stat;
use tributary_collector::service;
use tributary_collector::store;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::{SeriesKey, Summary, Width};

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
    about = "The self-contained Tributary demo: embedded broker, collector on SQLite and agents with simulated devices; every window checked against the ground truth."
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
}

/// The summary the demo prints.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// Agents run.
    pub agents: usize,
    /// Simulated devices in all.
    pub devices: usize,
    /// Readings the devices produced (ground truth).
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
    /// (series, window) results checked against the ground truth.
    pub windows_checked: usize,
    /// Of those, results not equal (every field) to the ground truth (must be 0).
    pub windows_mismatched: usize,
    /// (metric, site, window) points of the API grouped by `site` checked
    /// against the merged ground truth of the site's series.
    pub site_points_checked: usize,
    /// Of those, points whose statistics (count, sum, min, max, mean,
    /// stddev, first, last, p50, p99) differ from the truth's (must be 0).
    pub site_points_mismatched: usize,
    /// Uplink batch bytes per reading.
    pub uplink_bytes_per_reading: f64,
    /// Bytes per reading when forwarding raw readings as JSON.
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
         [uplink]\nport = {port}\nconfirm_timeout_ms = 5000\nreconnect_min_ms = 100\nreconnect_max_ms = 2000\n\
         [http]\nlisten = \"\"\n\
         [tags]\nsite = \"{site}\"\ngateway = \"gw-{index}\"\n\
         [simulated]\ndevices = {}\nprefix = \"gw{index}-dev\"\nmode = \"summaries\"\nchannels = 3\n\
         device_window_ms = {DEVICE_WINDOW_MS}\nreadings_per_window = 10\nwindows = {}\nstart_ms = {start_ms}\nframe_rate = 20\n",
        args.devices,
        args.windows,
        dir = dir.join(format!("agent-{index}")).display().to_string(),
        site = site(index),
    );
    AgentConfig::from_toml(&text).with_context(|| format!("agent {index} config"))
}

/// Every stored window at the agents' width, per (series, start).
async fn stored(db: &Path) -> anyhow::Result<BTreeMap<(SeriesKey, i64), Summary>> {
    let store = SqliteStore::open(db, &[]).context("opening the store to read results")?;
    let width = Width::new(WIDTH_MS).context("width")?;
    Ok(store::all_windows(&store, width)
        .await?
        .into_iter()
        .map(|(k, w)| (k, w.summary))
        .collect())
}

/// The statistics the group check compares.
const GROUP_STATS: &str = "count,sum,min,max,mean,stddev,first,last,p50,p99";

/// Queries the API (as the dashboard's group view does) for every metric
/// grouped by `site`, one point per window, and compares each point's
/// statistics with those of the merged ground truth of the site's series.
/// Returns (points checked, points differing or missing on either side).
async fn check_sites(
    http: SocketAddr,
    want: &BTreeMap<(SeriesKey, i64), Summary>,
) -> anyhow::Result<(usize, usize)> {
    let (Some(from), Some(last)) = (
        want.keys().map(|(_, t)| *t).min(),
        want.keys().map(|(_, t)| *t).max(),
    ) else {
        return Ok((0, 0));
    };
    let to = last + WIDTH_MS;
    let stats: Vec<Stat> = GROUP_STATS.split(',').filter_map(Stat::parse).collect();
    // As the sinks do: reqwest has no bundled crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let metrics: BTreeSet<&str> = want.keys().map(|(k, _)| k.metric()).collect();
    let (mut checked, mut mismatched) = (0, 0);
    for metric in metrics {
        let truth = truth::grouped(want, metric, "site", (from, to, WIDTH_MS))
            .context("merging the ground truth per site")?;
        let url = format!(
            "http://{http}/api/v1/query?metric={metric}&from={from}&to={to}&width={WIDTH_MS}&group_by=site&stats={GROUP_STATS}"
        );
        let body = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("querying {url}"))?
            .text()
            .await
            .with_context(|| format!("reading {url}"))?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("parsing {url}"))?;
        let mut got: BTreeMap<(String, i64), Value> = BTreeMap::new();
        for group in v["results"].as_array().into_iter().flatten() {
            let site = group["group"]["site"].as_str().unwrap_or("").to_string();
            for p in group["points"].as_array().into_iter().flatten() {
                got.insert(
                    (site.clone(), p["t"].as_i64().unwrap_or(i64::MIN)),
                    p.clone(),
                );
            }
        }
        for (key, merged) in &truth {
            checked += 1;
            let Some(point) = got.remove(key) else {
                mismatched += 1;
                continue;
            };
            // Compared as JSON text round trips: the same f64 renders as the
            // same shortest text, so equal values parse to equal values.
            let differs = stats.iter().any(|stat| {
                let expect = stat.value(merged).map_or(Value::Null, |x| x.to_json());
                let expect: Value =
                    serde_json::from_str(&expect.to_string()).unwrap_or(Value::Null);
                point[stat.name()] != expect
            });
            if differs {
                tracing::warn!(metric, site = key.0, t = key.1, got = %point, "site point differs from the merged ground truth");
                mismatched += 1;
            }
        }
        mismatched += got.len();
    }
    Ok((checked, mismatched))
}

fn progress(line: &str) {
    let mut err = std::io::stderr();
    let _ = write!(err, "\r{line}\x1b[K");
    let _ = err.flush();
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

    // Event time ends about now, so the dashboard's "last 15 minutes" shows it.
    let span = i64::try_from(args.windows)
        .context("--windows")?
        .saturating_mul(DEVICE_WINDOW_MS);
    let now = tributary_runtime::now_ms();
    let start_ms = (now - span).div_euclid(WIDTH_MS) * WIDTH_MS;
    let mut agents: Vec<AgentHandle> = Vec::new();
    let mut configs = Vec::new();
    for a in 0..args.agents {
        let acfg = agent_config(&dir, a, broker.addr().port(), &args, start_ms)?;
        configs.push(acfg.clone());
        agents.push(
            Agent::start(acfg)
                .await
                .with_context(|| format!("starting agent {a}"))?,
        );
    }
    // The devices' own record of what they measure (they are deterministic).
    let want = truth::windows(&configs, WIDTH_MS).context("computing the ground truth")?;
    let produced: u64 = want.values().map(Summary::count).sum();
    let counters = collector.counters().clone();
    eprintln!(
        "tributary demo: {} agents × {} simulated devices (firmware aggregator and link) → embedded MQTT {} → collector (SQLite {})",
        args.agents,
        args.devices,
        broker.addr(),
        db.display()
    );
    eprintln!("dashboard: {dashboard}");

    // Run until every produced reading is merged (or the pipeline stalls).
    let stall = Duration::from_secs(60);
    let mut last_change = Instant::now();
    let mut last_merged = 0;
    let completed = loop {
        let merged = counters.readings.get();
        let accepted: u64 = agents.iter().map(|a| a.counters().readings_accepted).sum();
        if !args.json || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
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

    let got = stored(&db).await?;
    if let Some(((key, start), w)) = want.iter().find(|(k, s)| got.get(k) != Some(s)) {
        tracing::warn!(series = %key, start, want = ?w, got = ?got.get(&(key.clone(), *start)),
            "first window that differs from the ground truth");
    }
    let mismatched = want.iter().filter(|(k, s)| got.get(k) != Some(s)).count()
        + got.keys().filter(|k| !want.contains_key(k)).count();
    let merged: u64 = got.values().map(Summary::count).sum();
    let (site_points_checked, site_points_mismatched) =
        check_sites(collector.http_addr(), &want).await?;
    // Forwarding raw readings instead: one JSON object per reading, like
    // {"metric":"temperature","device":"gw0-dev3","t":1764052800123,"v":21.37}.
    let raw_json: u64 = want
        .iter()
        .map(|((key, start), s)| {
            let one = serde_json::json!({
                "metric": key.metric(),
                "device": key.device(),
                "t": start,
                "v": s.mean().unwrap_or(0.0),
            })
            .to_string()
            .len() as u64;
            one * s.count()
        })
        .sum();
    let summary = DemoSummary {
        agents: args.agents,
        devices: args.agents * args.devices,
        readings_produced: produced,
        readings_merged: merged,
        readings_lost: i64::try_from(produced).unwrap_or(i64::MAX)
            - i64::try_from(merged).unwrap_or(i64::MAX),
        batches_applied: counters.batches_new.get(),
        duplicates_dropped: counters.batches_duplicate.get(),
        partials_merged: counters.partials.get(),
        windows_checked: want.len(),
        windows_mismatched: mismatched,
        site_points_checked,
        site_points_mismatched,
        uplink_bytes_per_reading: counters.bytes.get() as f64 / merged.max(1) as f64,
        raw_json_bytes_per_reading: raw_json as f64 / produced.max(1) as f64,
        seconds_to_complete: completed.map_or(f64::NAN, |d| d.as_secs_f64()),
        dashboard: dashboard.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_text(&summary);
    }

    if completed.is_some() {
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
    for a in agents {
        a.shutdown().await.context("stopping an agent")?;
    }
    collector.stop().await.context("stopping the collector")?;
    if summary.readings_lost != 0
        || summary.windows_mismatched != 0
        || summary.site_points_mismatched != 0
    {
        bail!(
            "the demo lost {} readings, {} windows and {} site points differ from the ground truth",
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
        "  windows exact             {}/{} equal to the devices' ground truth (every field)",
        s.windows_checked - s.windows_mismatched.min(s.windows_checked),
        s.windows_checked
    );
    println!(
        "  site groups exact         {}/{} (metric, site, window) points of the API grouped by site equal the merged ground truth",
        s.site_points_checked - s.site_points_mismatched.min(s.site_points_checked),
        s.site_points_checked
    );
    println!(
        "  batches applied           {} ({} partials); duplicates dropped {}",
        s.batches_applied, s.partials_merged, s.duplicates_dropped
    );
    println!(
        "  uplink bytes per reading  {:.2} (raw JSON readings: {:.1}, {:.0}× more)",
        s.uplink_bytes_per_reading,
        s.raw_json_bytes_per_reading,
        s.raw_json_bytes_per_reading / s.uplink_bytes_per_reading.max(f64::MIN_POSITIVE)
    );
    println!("  time to complete          {:.1} s", s.seconds_to_complete);
    println!("  dashboard                 {}", s.dashboard);
}
