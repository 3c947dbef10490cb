//! Modbus devices end to end: an agent polls a `pymodbus` TCP device and a
//! `pymodbus` RTU device on a `socat` pty pair, and forwards through a real
//! mosquitto to the collector's ingest. The judge is the simulators' own
//! log of every value served, with its exact ticks computed in Python:
//! per series, the stored windows in time order hold consecutive runs of
//! the served values, window by window with the exact count and sum, and
//! each run was served inside its window (the poll time is the event
//! time). A device that cannot be reached and one answering with exception
//! responses or never at all are counted per device and reason and stall
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::Width;
use tributary_testkit::{free_port, ModbusSim, Mosquitto, MosquittoOptions, PtyPair, Served};

const WIDTH: i64 = 1000;
const TIMEOUT_MS: i64 = 1000;

// A Linux pty refuses parity (EINVAL): the RTU line runs 8N1, on both ends.

/// The points each simulated device serves, with the agent's register
/// config for the same points.
const POINTS: &[(&str, u16, &str, &str, &str, f64, f64, i8)] = &[
    // metric, address, type, byte order, word order, scale, offset, quantum
    ("temp", 0, "int16", "big", "big", 0.1, -40.0, -2),
    ("flow", 1, "uint32", "big", "little", 0.5, 0.0, -1),
    ("energy", 3, "int64", "little", "big", 1.0, 1000.0, 0),
    ("level", 7, "float32", "big", "big", 1.0, 0.0, -2),
    ("count", 9, "uint16", "big", "big", 1.0, 0.0, 0),
];

fn spec(seed: u32) -> String {
    let points: Vec<String> = POINTS
        .iter()
        .map(|(m, a, t, b, w, s, o, q)| {
            format!(
                r#"{{"metric":"{m}","address":{a},"type":"{t}","byte_order":"{b}","word_order":"{w}","scale":{s:?},"offset":{o:?},"quantum":{q}}}"#
            )
        })
        .collect();
    format!(r#"{{"unit":1,"seed":{seed},"points":[{}]}}"#, points.join(","))
}

fn registers() -> String {
    POINTS
        .iter()
        .map(|(m, a, t, b, w, s, o, q)| {
            format!(
                "[[modbus.registers]]\nmetric = \"{m}\"\naddress = {a}\ntype = \"{t}\"\n\
                 byte_order = \"{b}\"\nword_order = \"{w}\"\nscale = {s:?}\noffset = {o:?}\nquantum = {q}\n"
            )
        })
        .collect()
}

/// (metric, device) → windows in time order: (start, count, sum of ticks).
type Stored = BTreeMap<(String, String), Vec<(i64, u64, i128)>>;

async fn stored(store: &SqliteStore) -> Stored {
    let mut out = Stored::new();
    for ((key, start), w) in all_windows(store, Width::new(WIDTH).unwrap())
        .await
        .unwrap()
    {
        out.entry((key.metric().to_string(), key.device().to_string()))
            .or_default()
            .push((start, w.summary.count(), w.summary.sum_ticks()));
    }
    out
}

/// Checks the stored windows of one series against what the simulator
/// served, in order; returns the values checked.
fn judge(metric: &str, windows: &[(i64, u64, i128)], served: &[Served]) -> usize {
    let served: Vec<&Served> = served.iter().filter(|s| s.metric == metric).collect();
    let mut next = 0usize;
    for &(start, count, sum) in windows {
        let n = usize::try_from(count).unwrap();
        let run = served
            .get(next..next + n)
            .unwrap_or_else(|| panic!("{metric}: window {start} holds more than was served"));
        let want: i128 = run.iter().map(|s| s.ticks).sum();
        assert_eq!(sum, want, "{metric}: window {start}: sum of ticks");
        for s in run {
            assert!(
                s.at_ms >= start && s.at_ms < start + WIDTH + TIMEOUT_MS,
                "{metric}: a value served at {} stored in window {start}",
                s.at_ms
            );
        }
        next += n;
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_and_rtu_readings_reach_the_collector_exactly() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&cdir.path().join("c.db"), &[3_600_000]).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(ingest::run(
        IngestConfig {
            port: broker.port(),
            client_id: "collector-modbus".into(),
            ..IngestConfig::default()
        },
        store.clone(),
        counters.clone(),
        stop_rx,
    ));

    let tcp_port = free_port();
    let tcp = ModbusSim::tcp(&spec(1), tcp_port).unwrap();
    let line = PtyPair::start().unwrap();
    let rtu = ModbusSim::rtu(&spec(2), &line.a).unwrap();
    // A device that accepts connections and never answers.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let regs = registers();
    let adir = tempfile::tempdir().unwrap();
    let toml = format!(
        "agent_id = \"gw-modbus\"\ndata_dir = {dir:?}\n\
         [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 0\n\
         [uplink]\nport = {mqtt}\n[http]\nlisten = \"\"\n\
         [[modbus]]\nname = \"plc-tcp\"\ntcp = \"127.0.0.1:{tcp_port}\"\ninterval_ms = 100\n\
         timeout_ms = {TIMEOUT_MS}\n{regs}\
         [[modbus]]\nname = \"plc-rtu\"\nserial = {rtu_path:?}\nbaud = 9600\nparity = \"none\"\ninterval_ms = 100\n\
         timeout_ms = {TIMEOUT_MS}\n{regs}\
         [[modbus]]\nname = \"plc-down\"\ntcp = \"127.0.0.1:{down}\"\ninterval_ms = 100\n\
         [[modbus.registers]]\nmetric = \"x\"\naddress = 0\n\
         [[modbus]]\nname = \"plc-bad\"\ntcp = \"127.0.0.1:{tcp_port}\"\ninterval_ms = 100\n\
         [[modbus.registers]]\nmetric = \"x\"\naddress = 500\n\
         [[modbus]]\nname = \"plc-mute\"\ntcp = \"127.0.0.1:{mute}\"\ninterval_ms = 100\n\
         timeout_ms = 200\n[[modbus.registers]]\nmetric = \"x\"\naddress = 0\n",
        dir = adir.path().display().to_string(),
        mqtt = broker.port(),
        rtu_path = line.b.display().to_string(),
        down = free_port(),
        mute = mute.local_addr().unwrap().port(),
    );
    let agent = Agent::start(AgentConfig::from_toml(&toml).unwrap())
        .await
        .unwrap();

    // Wait until every series has at least 20 readings in closed windows.
    let want = 20u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = stored(&store).await;
        let enough = ["plc-tcp", "plc-rtu"].iter().all(|d| {
            POINTS.iter().all(|p| {
                got.get(&(p.0.to_string(), d.to_string()))
                    .is_some_and(|w| w.iter().map(|x| x.1).sum::<u64>() >= want)
            })
        });
        if enough || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (device, sim) in [("plc-tcp", &tcp), ("plc-rtu", &rtu)] {
        let served = sim.served().unwrap();
        for p in POINTS {
            let windows = got
                .get(&(p.0.to_string(), device.to_string()))
                .unwrap_or_else(|| panic!("no windows of {device}/{}", p.0));
            let checked = judge(p.0, windows, &served);
            assert!(
                checked as u64 >= want,
                "{device}/{}: only {checked} values checked",
                p.0
            );
        }
    }
    assert!(
        !got.contains_key(&("x".to_string(), "plc-bad".to_string())),
        "an exception response stored nothing"
    );
    let m = agent.metrics();
    assert!(m.modbus_error("plc-down", "connect").get() > 0);
    assert!(m.modbus_error("plc-bad", "exception").get() > 0);
    assert!(m.modbus_error("plc-mute", "timeout").get() > 0);
    for d in ["plc-tcp", "plc-rtu"] {
        for r in ["connect", "timeout", "crc", "io", "protocol", "exception", "value"] {
            assert_eq!(m.modbus_error(d, r).get(), 0, "{d}: {r}");
        }
    }
    agent.shutdown().await.unwrap();
    stop_tx.send(true).unwrap();
    ingest.await.unwrap();
}
