//! End to end from an emulated Cortex-M: the firmware image (`firmware/qemu`,
//! thumbv7em on QEMU's mps2-an386) samples its SHT3x, sends Hello and
//! Summary frames over its UART to the agent's serial source (a pty), takes
//! the agent's TimeSync and Acks, and the collector stores the windows.
//! Every stored window is judged against the readings the image logged on
//! its second UART (the oracle: integer sums, counts, sorted values) — and
//! the board is reset mid-run (QEMU monitor `system_reset`): the new boot
//! (a new boot id, sequence numbers from 0 again) loses nothing it took,
//! nothing is doubled, and of the old boot only what was still in the
//! device's RAM at the reset (its open window, frames not yet acked) may be
//! missing — never anything it had seen acked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod qemu;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qemu::{Board, BootLog, Log};
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::Agent;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::all_windows;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::{Summary, Width};
use tributary_oracle::{Reading, Stats};
use tributary_sim::judge::judge;
use tributary_testkit::{Mosquitto, MosquittoOptions};

/// The agent's window: one device window (1 s) per agent window.
const WIDTH: i64 = 1000;
const METRICS: [&str; 2] = ["temperature", "humidity"];
/// Acked frames per boot before the test moves on (2 channels a window).
const ACKED_FRAMES: u32 = 10;

/// The readings of one boot, channel and window: (readings, required). A
/// group is required when its window was framed whole and every frame of it
/// acked; otherwise it may be missing (the device still held it).
type Groups = BTreeMap<(u8, i64), Vec<(Vec<Reading>, bool)>>;

fn groups(log: &Log) -> Groups {
    let mut out = Groups::new();
    for (boot, b) in &log.boots {
        let Some(offset) = b.offset else { continue };
        let mut by: BTreeMap<(u8, i64), Vec<Reading>> = BTreeMap::new();
        for &(tick, values) in &b.readings {
            let time_ms = tick as i64 + offset;
            for (ch, ticks) in values.into_iter().enumerate() {
                by.entry((ch as u8, time_ms.div_euclid(WIDTH) * WIDTH))
                    .or_default()
                    .push(Reading { time_ms, ticks });
            }
        }
        for (key, readings) in by {
            let required = framed_and_acked(b, key, offset, readings.len());
            assert!(*boot > 0);
            out.entry(key).or_default().push((readings, required));
        }
    }
    out
}

/// Whether the boot's frames for (channel, window) hold all `n` readings
/// and were all acked.
fn framed_and_acked(b: &BootLog, (ch, start): (u8, i64), offset: i64, n: usize) -> bool {
    let frames: Vec<_> = b
        .frames
        .iter()
        .filter(|f| f.channel == ch && f.start_tick as i64 + offset == start)
        .collect();
    let framed: u64 = frames.iter().map(|f| f.count).sum();
    framed == n as u64 && frames.iter().all(|f| f.seq < b.first_unacked)
}

async fn stored(store: &SqliteStore) -> BTreeMap<(u8, i64), Summary> {
    all_windows(store, Width::new(WIDTH).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|((key, start), w)| {
            let ch = METRICS.iter().position(|m| *m == key.metric()).unwrap();
            assert_eq!(key.device(), "qemu-mps2");
            ((ch as u8, start), w.summary)
        })
        .collect()
}

/// What is wrong with the stored windows: each must equal its required
/// groups plus some of its optional ones, exactly; a window with a required
/// group must be there; nothing else may be.
fn problems(got: &BTreeMap<(u8, i64), Summary>, want: &Groups) -> Vec<String> {
    let mut out = Vec::new();
    for (key, summary) in got {
        let Some(gs) = want.get(key) else {
            out.push(format!("{key:?}: a window no reading explains"));
            continue;
        };
        let optional: Vec<_> = gs.iter().filter(|g| !g.1).collect();
        let explained = (0u32..1 << optional.len()).any(|mask| {
            let mut readings: Vec<Reading> = gs
                .iter()
                .filter(|g| g.1)
                .flat_map(|g| g.0.clone())
                .collect();
            for (i, g) in optional.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    readings.extend(g.0.iter().copied());
                }
            }
            Stats::of(-3, &readings).is_some_and(|s| judge(summary, &s).is_empty())
        });
        if !explained {
            out.push(format!(
                "{key:?}: count {} matches no set of the readings",
                summary.count()
            ));
        }
    }
    for (key, gs) in want {
        if gs.iter().any(|g| g.1) && !got.contains_key(key) {
            out.push(format!("{key:?}: acked readings missing"));
        }
    }
    out
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_cortex_m_reset_mid_run_loses_and_doubles_nothing() {
    let image = qemu::build_image("thumbv7em-none-eabihf");
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&cdir.path().join("c.db"), &[3_600_000]).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(ingest::run(
        IngestConfig {
            port: broker.port(),
            client_id: "collector-qemu".into(),
            ..IngestConfig::default()
        },
        store.clone(),
        Arc::new(IngestCounters::default()),
        stop_rx,
    ));

    let mut board = Board::boot("mps2-an386", &image);
    let adir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::from_toml(&format!(
        "agent_id = \"gw-qemu\"\ndata_dir = {:?}\n[window]\nwidth_ms = {WIDTH}\n\
         allowed_lateness_ms = 1000\nidle_close_ms = 1500\n[store]\ncommit_interval_ms = 20\n\
         [uplink]\nport = {}\nconfirm_timeout_ms = 1500\nreconnect_min_ms = 50\n\
         reconnect_max_ms = 500\n[http]\nlisten = \"\"\n[[serial]]\npath = {:?}\n",
        adir.path().display().to_string(),
        broker.port(),
        board.pty().display().to_string(),
    ))
    .unwrap();
    let agent = Agent::start(cfg).await.unwrap();

    let acked = |boot: u32| {
        let log = board.log();
        log.boots.get(&boot).map_or(0, |b| b.first_unacked)
    };
    tokio::task::block_in_place(|| {
        wait_for("boot 1's frames acked", 60, || acked(1) >= ACKED_FRAMES);
        board.reset();
        wait_for("boot 2's frames acked", 60, || acked(2) >= ACKED_FRAMES);
    });
    board.stop();
    let log = board.log();
    assert!(
        log.bad_lines <= 2,
        "only a line cut by the reset and the last: {}",
        log.bad_lines
    );
    assert_eq!(
        log.boots.keys().copied().collect::<Vec<_>>(),
        [1, 2],
        "one reset, two boots"
    );
    for (boot, b) in &log.boots {
        eprintln!(
            "boot {boot}: offset {:?} (round trip {:?} ms), {} TimeSyncs refused for their round trip, {} readings, {} frames",
            b.offset,
            b.sync_rtt,
            b.refused_syncs,
            b.readings.len(),
            b.frames.len()
        );
    }
    let want = groups(&log);
    let required = want.values().flatten().filter(|g| g.1).count();
    let optional: BTreeSet<_> = want
        .iter()
        .filter(|(_, gs)| gs.iter().any(|g| !g.1))
        .map(|(k, _)| *k)
        .collect();
    assert!(
        required >= 2 * ACKED_FRAMES as usize - 2,
        "{required} windows acked"
    );
    // What a reset may lose is what the device held: per channel the open
    // window and the few frames in flight, at the reset and at the end.
    assert!(
        optional.len() <= 2 * 2 * 3,
        "too much unacked: {optional:?}"
    );

    // The agent publishes a window once it is closed: wait for them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = stored(&store).await;
        let p = problems(&got, &want);
        if p.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "{p:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let readings: u64 = got.values().map(|s| s.count()).sum();
    let logged: usize = log.boots.values().map(|b| 2 * b.readings.len()).sum();
    assert!(readings as usize <= logged && readings > 0);
    agent.shutdown().await.unwrap();
    stop_tx.send(true).unwrap();
    ingest.await.unwrap();
}
