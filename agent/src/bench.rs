//! The `bench` subcommand: readings per second sustained through windowing
//! with durable group commits (`synchronous = FULL`), peak RSS, and RSS
//! sampled while it runs so flatness over a long run is visible.
//!
//! Paths (`--paths`, comma-separated; each runs `--seconds`):
//! - `bulk` — raw readings handed to the engine in-process, batched per
//!   series (one series lookup per run of readings, one SQLite transaction
//!   per group commit). Event time advances 1 ms per reading per series, so
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;
use tributary_core::{Quantum, SeriesKey};

use crate::config::Config;
use crate::engine::Cmd;
use crate::Agent;

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
    /// Readings per series per engine message (bulk path).
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,
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

/// RSS samples of one path.
struct RssLog {
    start: Instant,
    every: Duration,
    next: Instant,
    samples: Vec<(f64, u64)>,
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl RssLog {
    fn new(every_s: u64) -> Self {
        let now = Instant::now();
        let mut log = RssLog {
            start: now,
            every: Duration::from_secs(every_s),
            next: now,
            samples: Vec::new(),
        };
        log.sample();
        log
    }

    fn sample(&mut self) {
        if let Some(kib) = status_kib("VmRSS:") {
            let t = self.start.elapsed().as_secs_f64();
            self.samples.push((t, kib));
            if !self.every.is_zero() {
                println!("  [rss] t={t:>6.1} s  RSS {:.1} MiB", mib(kib));
            }
        }
        self.next = Instant::now() + self.every.max(Duration::from_millis(100));
    }

    fn poll(&mut self) {
        if !self.every.is_zero() && Instant::now() >= self.next {
            self.sample();
        }
    }

    fn report(&mut self) {
        self.sample();
        let s = &self.samples;
        if let (Some(first), Some(last)) = (s.first(), s.last()) {
            let mid = s[s.len() / 2];
            println!(
                "  RSS start/middle/end {:.1} / {:.1} / {:.1} MiB (t = {:.0} / {:.0} / {:.0} s)",
                mib(first.1),
                mib(mid.1),
                mib(last.1),
                first.0,
                mid.0,
                last.0
            );
        }
        if let Some(kib) = status_kib("VmHWM:") {
            println!("  peak RSS           {:.1} MiB", mib(kib));
        }
    }
}

/// Runs the benchmark and prints the figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for path in args.paths.clone() {
        let sub = dir.join(format!("{path:?}").to_lowercase());
        std::fs::create_dir_all(&sub)?;
        match path {
            BenchPath::Bulk => bulk(&args, &sub).await?,
            BenchPath::Frames => devices(&args, &sub, false).await?,
            BenchPath::Summaries => devices(&args, &sub, true).await?,
            BenchPath::Mqtt => mqtt_json(&args, &sub).await?,
        }
        let _ = std::fs::remove_dir_all(&sub);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn base_config(name: &str, dir: &std::path::Path, args: &BenchArgs, extra: &str) -> String {
    format!(
        "agent_id = \"{name}\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"\"\n[store]\ncommit_interval_ms = {}\n[window]\nwidth_ms = 60000\nallowed_lateness_ms = 1000\n{extra}",
        dir.display().to_string(),
        args.commit_ms
    )
}

async fn bulk(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::from_toml(&base_config("bench", dir, args, "")).context("bench config")?;
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
    println!(
        "bulk: raw readings in-process, {} series, durable group commits every {} ms (synchronous=FULL)",
        args.series, args.commit_ms
    );
    let mut rss = RssLog::new(args.rss_every);
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
        rss.poll();
    }
    agent.sync().await;
    let elapsed = start.elapsed().as_secs_f64();
    let m = agent.metrics().clone();
    let accepted = m.readings_accepted.load(Relaxed);
    println!("  readings sent      {sent}");
    println!("  readings committed {accepted}");
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s",
        accepted as f64 / elapsed
    );
    println!("  commits            {}", m.commits.load(Relaxed));
    println!("  partials emitted   {}", m.partials_emitted.load(Relaxed));
    rss.report();
    drop(engine);
    agent.shutdown().await?;
    Ok(())
}

/// The firmware's virtual devices (3 channels each) in-process.
async fn devices(args: &BenchArgs, dir: &std::path::Path, summaries: bool) -> anyhow::Result<()> {
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
    let accepted = m.readings_accepted.load(Relaxed);
    let frames = m.frames_received.load(Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    agent.sync().await;
    println!("  readings committed {accepted}");
    println!(
        "  frames received    {frames} ({} duplicates: firmware resends)",
        m.frames_duplicate.load(Relaxed)
    );
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s ({:.0} frames/s)",
        accepted as f64 / elapsed,
        frames as f64 / elapsed
    );
    println!("  commits            {}", m.commits.load(Relaxed));
    println!("  partials emitted   {}", m.partials_emitted.load(Relaxed));
    rss.report();
    agent.shutdown().await?;
    Ok(())
}

/// A mosquitto started for the bench, killed on drop.
struct Broker {
    child: Child,
    log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn dropped_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("messages are being dropped"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn start_broker(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<(Broker, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let limits = match args.broker {
        // As config/mosquitto.conf documents for a gateway's local broker.
        BrokerSettings::Documented => "max_inflight_messages 1000\nmax_queued_messages 100000\n",
        BrokerSettings::Default => "",
    };
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{limits}log_dest stderr\nlog_type warning\nlog_type error\nlog_type notice\n"),
    )?;
    let log = dir.join("mosquitto.log");
    let child = Command::new(&args.mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", args.mosquitto.display()))?;
    let broker = Broker { child, log };
    let until = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < until, "mosquitto did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((broker, port))
}

/// JSON batches published to a real broker, read by the agent's local MQTT
/// source with PUBACKs after commit.
async fn mqtt_json(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let (broker, port) = match args.mqtt_port {
        Some(p) => (None, p),
        None => {
            let (b, p) = start_broker(args, dir)?;
            (Some(b), p)
        }
    };
    let extra = format!(
        "[local_mqtt]\nenabled = true\nport = {port}\nclient_id = \"bench-agent-{}\"\n[limits]\nmax_payload_bytes = 1048576\n",
        std::process::id(),
    );
    let config = Config::from_toml(&base_config("bench-mqtt", dir, args, &extra))
        .context("bench config (mqtt)")?;
    let agent = Agent::start(config).await?;
    let m = agent.metrics().clone();
    // Let it connect and subscribe.
    let until = Instant::now() + Duration::from_secs(5);
    while m.local_subscribed.load(Relaxed) == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        m.local_subscribed.load(Relaxed) == 1,
        "the agent did not subscribe to the local broker within 5 s"
    );
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
    println!(
        "mqtt: JSON readings through mosquitto at 127.0.0.1:{port} ({}), {} readings per message, {devices} devices × 4 metrics, {}",
        match (args.mqtt_port, args.broker) {
            (Some(_), _) => "already running",
            (None, BrokerSettings::Documented) => "documented settings: max_inflight_messages 1000, max_queued_messages 100000",
            (None, BrokerSettings::Default) => "mosquitto defaults: max_inflight_messages 20, max_queued_messages 1000",
        },
        args.per_message,
        if args.mqtt_rate == 0 {
            "closed loop (≤ 200 messages outstanding)".to_string()
        } else {
            format!("open loop at {} readings/s", args.mqtt_rate)
        }
    );
    let base = 1_700_000_000_000i64;
    let mut rss = RssLog::new(args.rss_every);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let (mut sent, mut seq, mut t) = (0u64, 0u64, 0i64);
    let mut rng = fastrand::Rng::with_seed(11);
    let window = 200 * args.per_message as u64;
    'publish: while Instant::now() < deadline {
        for d in 0..devices {
            if args.mqtt_rate == 0 {
                while sent.saturating_sub(m.readings_accepted.load(Relaxed)) > window {
                    if Instant::now() >= deadline {
                        break 'publish;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                let due = start + Duration::from_secs_f64(sent as f64 / args.mqtt_rate as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() >= deadline {
                    break 'publish;
                }
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
            if Instant::now() >= rss.next {
                println!(
                    "  [mqtt] t={:>6.1} s  agent: {} messages awaiting PUBACK",
                    start.elapsed().as_secs_f64(),
                    m.local_unacked.load(Relaxed)
                );
            }
            rss.poll();
        }
        seq += 1;
        t += (args.per_message / 4) as i64;
    }
    let published_for = start.elapsed().as_secs_f64();
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
    agent.sync().await;
    let elapsed = last_progress.duration_since(start).as_secs_f64();
    let accepted = m.readings_accepted.load(Relaxed);
    println!("  readings published {sent} (in {published_for:.2} s)");
    println!(
        "  readings committed {accepted} ({:.2} % lost)",
        100.0 * sent.saturating_sub(accepted) as f64 / sent.max(1) as f64
    );
    if let Some(b) = &broker {
        println!(
            "  broker log lines \"messages are being dropped\": {}",
            b.dropped_lines()
        );
    }
    println!("  duplicates         {}", m.frames_duplicate.load(Relaxed));
    println!("  rejected           {}", m.counters().rejected);
    println!("  commits            {}", m.commits.load(Relaxed));
    println!("  elapsed            {elapsed:.2} s");
    println!(
        "  throughput         {:.0} readings/s",
        accepted as f64 / elapsed
    );
    rss.report();
    let _ = client.disconnect().await;
    poller.abort();
    agent.shutdown().await?;
    drop(broker);
    Ok(())
}
