//! The fault campaign (`tributary-soak`): agents and the collector run as
//! real processes (`tributary-agent`, `tributary-collector run`) around a
//! real mosquitto, and every round `kill -9`s every agent and the
//! collector at random moments, plus one more fault: a broker restart (without
//! persistence, with persistence, or with tiny per-client queues that drop
//! PUBACKed QoS 1 messages), an uplink outage against an agent with a small
//! outbox cap (it coarsens), a burst of hostile messages ([`hostile`]), or
//! a full disk under an agent (a tmpfs filled to the last byte). Then it
//! lets everything finish and judges every (series, window) against the
//! oracle at the width it was stored at ([`judge`]), printing readings in /
//! merged / coarsened / dropped (counted) / lost / doubled.
//!
//! Every loop is bounded: the rounds, each fault's duration, and the final
//! wait (it stops when every reading is in, or after no progress for
//! `--stall-s`).
//!
//! Which faults may drop readings: only an uplink outage, and only on
//! agent 1, whose outbox (6 kB, or the least the agent accepts for its
//! series) is too small for the coarsest level of a
//! longer outage; it counts what it drops and reports it upstream, and the
//! judge holds its series to those counts. Any other agent dropping fails
//! the run: their outboxes have room, and a full disk stops an agent
//! acknowledging its devices, which keep their data. Nothing may be lost
//! or doubled anywhere.

pub mod hostile;
pub mod judge;
pub mod procs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::store::config::SIMULATED_ROW_BYTES;

use procs::{binary, Broker, BrokerMode, Daemon, Tmpfs};

/// The agent with the small outbox: the only one that may drop.
const SMALL_OUTBOX: &str = "gw-1";

/// The agents' window (ms).
const WIDTH: i64 = 5_000;
/// The widths an agent coarsens to, then the collector's roll-up: every
/// width the results can be stored at, the roll-up last.
const WIDTHS: [i64; 5] = [5_000, 10_000, 30_000, 60_000, 300_000];

/// What the campaign runs.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tributary-soak",
    version,
    about = "Fault campaign with real processes: kill -9 of agents and collector, broker restarts, outages, hostile input, a full disk; judged by the oracle."
)]
pub struct SoakArgs {
    /// Rounds; each kills every agent and the collector once (18: every
    /// fault three times, every broker mode once).
    #[arg(long, default_value_t = 18)]
    pub rounds: u32,
    /// Agents (processes).
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Simulated devices per agent (3 channels each).
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Device windows (1 s of event time each) per device; 0 = enough for
    /// the rounds to run while the devices still produce.
    #[arg(long, default_value_t = 0)]
    pub windows: u64,
    /// Random seed of the fault schedule.
    #[arg(long, default_value_t = 0x50a4)]
    pub seed: u64,
    /// The final wait ends after this many seconds without progress.
    #[arg(long, default_value_t = 90)]
    pub stall_s: u64,
    /// Mount no tmpfs (no disk filling; for machines without root).
    #[arg(long)]
    pub no_disk: bool,
    /// Where state and logs go (default: a temporary directory, removed
    /// at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The faults injected, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Faults {
    /// `kill -9`s of agents (every agent is killed once a round).
    pub agent_kills: u32,
    /// `kill -9` of the collector.
    pub collector_kills: u32,
    /// Broker restarts into each mode.
    pub broker_plain: u32,
    /// Restarts with persistence.
    pub broker_persistent: u32,
    /// Restarts with tiny per-client queues.
    pub broker_tiny_queues: u32,
    /// Uplink outages (broker down for 1–3 s).
    pub outages: u32,
    /// Partials agent 1 (the small outbox) coarsened during the outages.
    pub partials_coarsened_in_outages: u64,
    /// Hostile messages the broker accepted.
    pub hostile_messages: u64,
    /// Times an agent's disk was filled.
    pub disk_fills: u32,
    /// Exits nobody caused (a crash): must be 0.
    pub unexpected_exits: u32,
}

/// The campaign's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The faults injected.
    pub faults: Faults,
    /// The verdict.
    pub figures: judge::Figures,
    /// Seconds the whole run took.
    pub seconds: f64,
}

impl Report {
    /// Whether the run passed.
    pub fn ok(&self) -> bool {
        self.figures.ok()
            && self.faults.unexpected_exits == 0
            && self
                .figures
                .dropped_by_agent
                .keys()
                .all(|a| a == SMALL_OUTBOX)
    }
}

/// The config of agent `index`: its devices, small outbox on agent 1,
/// the local broker subscribed for device messages.
fn agent_toml(
    dir: &Path,
    index: usize,
    (port, http): (u16, u16),
    args: &SoakArgs,
    start_ms: i64,
) -> String {
    let windows = windows(args);
    let outbox = if index == 1 {
        format!("max_bytes = {}\n", small_outbox_bytes(args.devices))
    } else {
        String::new()
    };
    format!(
        "agent_id = \"gw-{index}\"\ndata_dir = {dir:?}\n\
         [tags]\ngateway = \"gw-{index}\"\n\
         [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 1000\nidle_close_ms = 1500\n\
         [store]\ncommit_interval_ms = 20\n\
         [uplink]\nport = {port}\nclient_id = \"soak-gw-{index}\"\nconfirm_timeout_ms = 1500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\nmax_in_flight = 8\n\
         [local_mqtt]\nenabled = true\nport = {port}\nclient_id = \"soak-gw-{index}-local\"\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n\
         [outbox]\nbatch_max_partials = 20\ncoarsen_widths_ms = [10000, 30000, 60000]\n{outbox}\
         [simulated]\ndevices = {}\nprefix = \"gw{index}-dev\"\nmode = \"summaries\"\nchannels = 3\ndevice_window_ms = 1000\nreadings_per_window = 5\nwindows = {windows}\nstart_ms = {start_ms}\nframe_rate = 30\nmax_unacked = 12\n",
        args.devices,
    )
}

/// Agent 1's outbox limit: 6 kB, or the least the agent accepts for its
/// simulated series if that is more (it refuses a limit whose unsent share,
/// three quarters, cannot hold one floor window of its known series).
fn small_outbox_bytes(devices: usize) -> u64 {
    let need = (devices as u64 * 3).saturating_mul(SIMULATED_ROW_BYTES);
    (need + need.div_ceil(3)).max(6_000)
}

/// Device windows per device: by default about 1.5 s of production per
/// round (30 frames/s of 3 channels: 10 device windows a second).
fn windows(args: &SoakArgs) -> u64 {
    if args.windows > 0 {
        args.windows
    } else {
        u64::from(args.rounds.max(4)) * 15
    }
}

fn collector_toml(dir: &Path, port: u16) -> String {
    format!(
        "data_dir = {:?}\nrollups_ms = [{}]\n[mqtt]\nport = {port}\nclient_id = \"soak-collector\"\nmax_group = 64\n[http]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("collector"),
        WIDTHS[WIDTHS.len() - 1],
    )
}

/// The running system.
struct System {
    broker: Broker,
    mode: BrokerMode,
    agents: Vec<Daemon>,
    collector: Daemon,
    db: PathBuf,
    faults: Faults,
    /// The agents' HTTP ports (`/metrics`).
    agent_http: Vec<u16>,
    /// The faults still to inject in this block of six rounds.
    schedule: Vec<u32>,
}

impl System {
    /// Counts daemons that exited by themselves and starts them again.
    fn check_exits(&mut self) -> anyhow::Result<()> {
        for d in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.collector))
        {
            if let Some(status) = d.exited() {
                eprintln!("soak: a daemon exited by itself ({status})");
                self.faults.unexpected_exits += 1;
                d.start()?;
            }
        }
        Ok(())
    }

    fn merged(&self) -> u64 {
        judge::stored(&self.db, &WIDTHS[WIDTHS.len() - 1..])
            .map(|(s, d)| judge::count_at(&s, WIDTHS[WIDTHS.len() - 1]) + d.values().sum::<u64>())
            .unwrap_or(0)
    }
}

/// The value of counter `name` on the agent's `/metrics` at `port`.
fn agent_metric(port: u16, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Set when SIGINT or SIGTERM arrives: the run stops at the next check
/// and returns an error, so the daemons are killed, the tmpfs unmounted and
/// the temporary directory removed as on any other exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Watches for SIGINT and SIGTERM on a thread of its own.
fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("soak: interrupted; stopping and cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
}

/// An error once a signal asked the run to stop.
fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn ms(rng: &mut fastrand::Rng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

/// Starts every agent that is not running.
fn start_agents(sys: &mut System) -> anyhow::Result<()> {
    for a in &mut sys.agents {
        a.start()?;
    }
    Ok(())
}

/// One round: kill every agent and the collector, each at a random moment,
/// inject one more fault, start them again in a random order.
fn round(
    sys: &mut System,
    rng: &mut fastrand::Rng,
    disk: Option<&Tmpfs>,
    n: u32,
) -> anyhow::Result<()> {
    let mut order: Vec<usize> = (0..sys.agents.len()).collect();
    rng.shuffle(&mut order);
    let collector_at = rng.usize(..=order.len());
    for (i, &k) in order.iter().enumerate() {
        if i == collector_at {
            sys.collector.kill9();
        }
        std::thread::sleep(ms(rng, 100..600));
        sys.agents[k].kill9();
    }
    sys.collector.kill9();
    // Every six rounds inject each fault once, in a random order.
    if sys.schedule.is_empty() {
        sys.schedule = (0..6).collect();
        rng.shuffle(&mut sys.schedule);
    }
    match sys.schedule.pop().unwrap_or(5) {
        0 => {
            // The modes in turn.
            let modes = [
                BrokerMode::Plain,
                BrokerMode::Persistent,
                BrokerMode::TinyQueues,
            ];
            let f = &sys.faults;
            let mode = modes[(f.broker_plain + f.broker_persistent + f.broker_tiny_queues)
                as usize
                % modes.len()];
            match mode {
                BrokerMode::Plain => sys.faults.broker_plain += 1,
                BrokerMode::Persistent => sys.faults.broker_persistent += 1,
                BrokerMode::TinyQueues => sys.faults.broker_tiny_queues += 1,
            }
            sys.mode = mode;
            sys.broker.restart(mode)?;
        }
        1 => {
            // The agents run on with the uplink down; agent 1's small
            // outbox coarsens.
            start_agents(sys)?;
            sys.broker.kill();
            sys.faults.outages += 1;
            std::thread::sleep(ms(rng, 3000..8000));
            // Agent 1 started with the outage: its counter is the outage's.
            let coarsened = sys
                .agent_http
                .get(1)
                .and_then(|p| agent_metric(*p, "tributary_agent_partials_coarsened_total"));
            sys.faults.partials_coarsened_in_outages += coarsened.unwrap_or(0);
            sys.broker.restart(sys.mode)?;
        }
        2 => {
            let msgs =
                hostile::messages(tributary_runtime::now_ms(), sys.agents.len(), u64::from(n));
            sys.faults.hostile_messages +=
                hostile::publish(sys.broker.port(), &msgs, Duration::from_secs(5)) as u64;
        }
        3 => {
            if let Some(t) = disk {
                // Agent 0's data is on the tmpfs: it runs on a full disk.
                sys.agents[0].start()?;
                t.fill();
                sys.faults.disk_fills += 1;
                std::thread::sleep(ms(rng, 1000..2500));
                t.empty();
            }
        }
        _ => {}
    }
    rng.shuffle(&mut order);
    let collector_at = rng.usize(..=order.len());
    for (i, &k) in order.iter().enumerate() {
        if i == collector_at {
            sys.collector.start()?;
        }
        sys.agents[k].start()?;
        std::thread::sleep(ms(rng, 0..300));
    }
    sys.collector.start()?;
    sys.faults.agent_kills = sys.agents.iter().map(|a| a.kills).sum();
    sys.faults.collector_kills = sys.collector.kills;
    sys.check_exits()
}

/// Runs the campaign and returns its report.
pub fn run(args: &SoakArgs) -> anyhow::Result<Report> {
    let began = Instant::now();
    watch_signals();
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).context("creating the data directory")?;
    let agent_bin = binary("tributary-agent")?;
    let collector_bin = binary("tributary-collector")?;
    // Declared first, so it is unmounted last (after the daemons stop).
    let disk = if args.no_disk {
        None
    } else {
        Some(Tmpfs::mount(&dir.join("agent-0"), 48)?)
    };
    let port = tributary_testkit::free_port();
    let rollup = WIDTHS[WIDTHS.len() - 1];
    let start_ms = (tributary_runtime::now_ms() - 2 * 3_600_000).div_euclid(rollup) * rollup;
    let mut configs = Vec::new();
    let mut agents = Vec::new();
    let mut agent_http = Vec::new();
    for i in 0..args.agents {
        let http = tributary_testkit::free_port();
        agent_http.push(http);
        let text = agent_toml(
            &dir.join(format!("agent-{i}")),
            i,
            (port, http),
            args,
            start_ms,
        );
        configs.push(AgentConfig::from_toml(&text).with_context(|| format!("agent {i}'s config"))?);
        let path = dir.join(format!("agent-{i}.toml"));
        std::fs::write(&path, text).context("writing an agent's config")?;
        let path = path.to_string_lossy().into_owned();
        agents.push(Daemon::new(
            agent_bin.clone(),
            &["--config", &path],
            dir.join(format!("agent-{i}.log")),
        ));
    }
    let want = crate::truth::readings(&configs)?;
    let path = dir.join("collector.toml");
    std::fs::write(&path, collector_toml(&dir, port)).context("writing the collector's config")?;
    let path = path.to_string_lossy().into_owned();
    let collector = Daemon::new(
        collector_bin,
        &["run", "--config", &path],
        dir.join("collector.log"),
    );
    let mut sys = System {
        broker: Broker::start(&dir.join("broker"), port, BrokerMode::Plain)?,
        mode: BrokerMode::Plain,
        agents,
        collector,
        db: dir.join("collector").join("collector.db"),
        agent_http,
        faults: Faults::default(),
        schedule: Vec::new(),
    };
    sys.collector.start()?;
    for a in &mut sys.agents {
        a.start()?;
    }
    let expected = want.count();
    eprintln!(
        "soak: {} agents × {} devices, {expected} readings, {} rounds",
        args.agents, args.devices, args.rounds
    );
    let mut rng = fastrand::Rng::with_seed(args.seed);
    for n in 1..=args.rounds {
        check_interrupted()?;
        round(&mut sys, &mut rng, disk.as_ref(), n)?;
        if n % 5 == 0 || n == args.rounds {
            let f = &sys.faults;
            eprintln!(
                "soak: round {n}/{}: kills agent {} collector {}, broker restarts {}/{}/{} (plain/persistent/tiny), outages {}, hostile {}, disk fills {}; merged {}/{expected} ({:.0} s)",
                args.rounds, f.agent_kills, f.collector_kills, f.broker_plain, f.broker_persistent,
                f.broker_tiny_queues, f.outages, f.hostile_messages, f.disk_fills, sys.merged(),
                began.elapsed().as_secs_f64()
            );
        }
    }
    // Let everything finish: until every reading is in (or counted
    // dropped), or no progress for `stall_s`; then until the count has
    // held still for a few confirmation timeouts, so a late duplicate
    // would show.
    let mut last = (sys.merged(), Instant::now());
    loop {
        check_interrupted()?;
        sys.check_exits()?;
        std::thread::sleep(Duration::from_millis(500));
        let now = sys.merged();
        if now != last.0 {
            last = (now, Instant::now());
        }
        if (now >= expected && last.1.elapsed() > Duration::from_secs(5))
            || last.1.elapsed() > Duration::from_secs(args.stall_s)
        {
            break;
        }
    }
    let (stored, dropped) = judge::stored(&sys.db, &WIDTHS)?;
    let figures = judge::verdict(&want, &stored, &dropped, &WIDTHS, WIDTH)?;
    for a in &mut sys.agents {
        a.stop();
    }
    sys.collector.stop();
    Ok(Report {
        faults: sys.faults.clone(),
        figures,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// Prints `report` as text.
pub fn print(report: &Report) {
    let (f, x) = (&report.figures, &report.faults);
    println!(
        "faults: {} agent kills, {} collector kills (kill -9)",
        x.agent_kills, x.collector_kills
    );
    println!(
        "        broker restarts {} plain, {} persistent, {} tiny queues; {} outages ({} partials coarsened by the small outbox); {} disk fills; {} hostile messages; {} unexpected exits",
        x.broker_plain, x.broker_persistent, x.broker_tiny_queues, x.outages, x.partials_coarsened_in_outages, x.disk_fills, x.hostile_messages, x.unexpected_exits
    );
    println!("readings in        {}", f.readings_in);
    println!("merged             {}", f.merged);
    println!("  coarsened        {}", f.coarsened);
    println!(
        "dropped (counted)  {}  {:?}",
        f.dropped_counted, f.dropped_by_agent
    );
    println!("lost               {}  (must be 0)", f.lost);
    println!("doubled            {}  (must be 0)", f.doubled);
    println!(
        "windows judged     {} roll-up windows, {} stored rows at their own width; {} disagree",
        f.rollup_windows_checked, f.rows_checked, f.mismatched
    );
    for p in &f.problems {
        println!("  {p}");
    }
    println!(
        "{} in {:.0} s",
        if report.ok() { "PASS" } else { "FAIL" },
        report.seconds
    );
}

/// Refuses a run that cannot be judged.
pub fn check(args: &SoakArgs) -> anyhow::Result<()> {
    if args.agents < 2 {
        bail!("--agents must be at least 2 (agent 1 has the small outbox)");
    }
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    Ok(())
}
